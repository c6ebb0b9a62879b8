"""What keeps the UI's pages to their owner: the Host check (DNS rebinding), the same-origin plus
token check of the one state change (scores), and the headers of every response (a strict
Content-Security-Policy, so even an escaping mistake cannot run script)."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1"]


class SecurityHeaders:
    """Adds the CSP and friends to every response (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class LoopbackHosts:
    """Answers only requests whose Host names one of ``hosts`` (``*``: any), port ignored; IPv6
    literals understood (``[::1]:7100``), unlike Starlette's TrustedHostMiddleware. A page on another
    name that resolves to 127.0.0.1 (DNS rebinding) gets a 400, not the traces."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app = app
        self.hosts = {h.strip("[]").lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.hosts:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            try:
                name = urlsplit(f"//{host}").hostname or ""
            except ValueError:
                name = ""
            if name not in self.hosts:
                await PlainTextResponse("Invalid host header", 400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def allowed(request: Request, token: str, body: bytes) -> bool:
    """A state-changing request must come from our own pages: its Origin (or Referer) is this
    server, and it carries the per-process token (a header from htmx, or a form field)."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin in (None, "null"):
        origin = request.headers.get("referer")
    if not origin:
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.netloc != host:
        return False
    sent = request.headers.get("x-spanmux-token")
    if sent is None:
        sent = next(iter(parse_qs(body.decode("utf-8", "replace")).get("token", [])), None)
    return sent is not None and secrets.compare_digest(sent, token)
