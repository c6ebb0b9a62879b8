"""A do-little Langfuse sink on 127.0.0.1, run in its own process so its parsing does not share the
measured process's GIL. It accepts every request (OTLP traces, ingestion, health) and answers 200.

    python benchmarks/sink.py   # prints the port, serves until stdin closes
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body go in two segments: a ~40 ms delayed-ACK stall per request
    received = 0

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        _Handler.received += 1
        body = b'{"successes": [], "errors": []}' if "ingestion" in self.path else b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # the parent closes stdin (or dies) to stop us
    server.shutdown()


if __name__ == "__main__":
    main()
