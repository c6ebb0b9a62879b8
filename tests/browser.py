"""Real-browser kit for the web UI tests, the screenshots and benchmarks/ui.py.

- ``chromium_path``/``launch_chromium``: Debian's Chromium driven by Playwright's sync API (never
  ``playwright install``: that downloads a browser build, impossible offline).
- ``UiServer``: the UI's ASGI app on a real uvicorn server, on a free loopback port, in a thread.
- ``OfflineGuard``: a browser context route that lets only loopback requests through and records
  every other one, so a test proves the pages need no network.
- ``build_ui_store``: a store made by real framework runs (a LangGraph agent with a fake chat model
  calling tools, a LlamaIndex RAG with mock LLM and embedding, a DSPy ReAct with a DummyLM), with
  users, multi-turn sessions, tags, A/B metadata, an error trace, XSS payloads and a 10,000-span
  trace. ``python tests/browser.py build PATH`` runs it in a fresh interpreter (what the fixtures
  do: the frameworks' process-wide settings stay out of the test process) and prints its facts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from servers import free_port  # tests/ is on sys.path (this folder when run as a script)

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"
BIG_TRACE_SPANS = 10_000
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "DO_NOT_TRACK": "1"}


def chromium_path() -> str | None:
    """Debian's Chromium (``$SPANMUX_CHROMIUM`` first), or None when this machine has none."""
    for candidate in (os.environ.get("SPANMUX_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def launch_chromium(playwright: Any, executable: str) -> Any:
    """A headless Chromium with the flags that keep it offline and quiet."""
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)


class UiServer:
    """``with UiServer(app) as server: server.url``: uvicorn on 127.0.0.1, a free port, a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="auto"))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
        self.thread = threading.Thread(target=self.server.run, name="spanmux-ui-test-server", daemon=True)

    def start(self, timeout: float = 30.0) -> UiServer:
        self.thread.start()
        started = threading.Event()

        def watch() -> None:
            while not self.server.started and self.thread.is_alive():
                started.wait(0.01)
            started.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started.wait(timeout)
        if not self.server.started:
            raise RuntimeError(f"the UI server did not start on {self.url}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> UiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class UiProcess:
    """``with UiProcess(store) as server: server.url``: ``spanmux ui`` in its own process, as a user
    runs it (for measurements: a server thread would share the GIL with the Playwright driver)."""

    def __init__(self, store: str | Path, config: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "spanmux.cli", "ui", "--store", str(store), "--port", str(self.port)]
        if config is not None:
            self.command += ["-c", config]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> UiProcess:
        import time
        import urllib.request

        env = {**os.environ, **OFFLINE_ENV}
        self.process = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"spanmux ui exited: {self.process.stderr.read().decode()[-2000:]}"
                                   if self.process.stderr else "spanmux ui exited")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)  # polling a starting subprocess
        self.stop()
        raise RuntimeError(f"spanmux ui did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> UiProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.hostname in ("127.0.0.1", "localhost", "::1")


class OfflineGuard:
    """Routes every request of a browser context: loopback goes on, anything else is aborted and
    remembered (``attempted``), so a test can fail when a page tried to reach the network."""

    def __init__(self) -> None:
        self.attempted: list[str] = []

    def install(self, context: Any) -> None:
        context.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        url = route.request.url
        if _is_loopback(url):
            route.continue_()
        else:
            self.attempted.append(url)
            route.abort()


@contextlib.contextmanager
def browser_page(
    browser: Any, width: int = 1280, height: int = 800, *, offline_guard: bool = True
) -> Iterator[tuple[Any, OfflineGuard, list[str]]]:
    """A fresh context and page at a viewport, with the offline guard and a record of the dialogs
    that opened (an XSS payload that ran would open one); fails if the page left loopback.
    ``offline_guard=False`` for timings: routing sends every request through this process (about
    100-200 ms each on a busy machine)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    guard = OfflineGuard()
    if offline_guard:
        guard.install(context)
    dialogs: list[str] = []
    page = context.new_page()

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        yield page, guard, dialogs
    finally:
        context.close()
    assert guard.attempted == [], f"the page tried to reach the network: {guard.attempted}"


# ---- the store: real framework runs -----------------------------------------------------------------

@dataclasses.dataclass
class StoreFacts:
    """What ``build_ui_store`` wrote, for the tests to find it again."""

    path: str
    weather_session: str = "sess-weather"
    weather_turns: list[str] = dataclasses.field(default_factory=list)
    variant_a: list[str] = dataclasses.field(default_factory=list)
    variant_b: list[str] = dataclasses.field(default_factory=list)
    rag: str = ""
    dspy: str = ""
    error: str = ""
    xss: str = ""
    big: str = ""
    big_spans: int = 0


def _langchain_runs(spanmux: Any, facts: StoreFacts) -> None:
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.tools import tool

    def reply(text: str = "", inputs: int = 48, **fields: Any) -> AIMessage:
        usage = {"input_tokens": inputs, "output_tokens": 12, "total_tokens": inputs + 12,
                 "input_token_details": {"cache_read": 16}}
        return AIMessage(text, usage_metadata=usage, response_metadata={"model_name": "gpt-4o-mini"}, **fields)

    class ScriptedChat(FakeMessagesListChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChat:
            return self

    @tool
    def get_weather(city: str) -> str:
        """Current weather of a city, in Celsius."""
        return f"{city}: 18 C, light rain"

    @tool
    def book_table(restaurant: str) -> str:
        """Book a table (always fails here)."""
        raise ConnectionError(f"booking service unreachable for {restaurant}")

    def call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
        return {"name": name, "args": args, "id": call_id, "type": "tool_call"}

    cities = ["Bergen", "Oslo", "Tromso"]
    for turn, city in enumerate(cities):
        variant = "A" if turn % 2 == 0 else "B"
        model = ScriptedChat(responses=[
            reply(tool_calls=[call("get_weather", f"call_{turn}", city=city)]),
            reply(f"{city} has light rain at 18 C.", inputs=90 + 40 * (variant == "B")),
        ])
        agent = create_agent(model, tools=[get_weather], system_prompt="You are a weather assistant.")
        with spanmux.trace_context(user_id="alice", session_id=facts.weather_session, tags=["weather", "prod"],
                                   metadata={"variant": variant, "prompt_version": f"v{1 + turn % 2}"}):
            with spanmux.span("weather-turn", kind="agent", input={"question": f"Weather in {city}?"}) as root:
                result = agent.invoke({"messages": [("user", f"Weather in {city}?")]})
                root.set_output(result["messages"][-1].content)
        facts.weather_turns.append(root.trace_id)
        (facts.variant_a if variant == "A" else facts.variant_b).append(root.trace_id)

    # an error: the booking tool fails and the agent gives up
    model = ScriptedChat(responses=[reply(tool_calls=[call("book_table", "call_b", restaurant="Lysverket")])])
    agent = create_agent(model, tools=[book_table])
    with spanmux.trace_context(user_id="dave", session_id="sess-booking", tags=["booking"],
                               metadata={"variant": "B"}):
        try:
            with spanmux.span("booking-agent", kind="agent", input={"question": "Book Lysverket"}) as root:
                agent.invoke({"messages": [("user", "Book a table at Lysverket")]})
        except ConnectionError:
            pass
    facts.error = root.trace_id
    facts.variant_b.append(root.trace_id)

    # XSS payloads in the trace name, user, tag, metadata, inputs, outputs and chat messages
    prompt = ChatPromptTemplate.from_messages([("system", f"Be careful {XSS_IMG}"), ("human", "{question}")])
    chain = prompt | ScriptedChat(responses=[reply(f"echo {XSS_SCRIPT} {XSS_IMG}")]) | StrOutputParser()
    with spanmux.trace_context(name=XSS_IMG, user_id=XSS_SCRIPT, session_id="sess-xss", tags=[XSS_IMG],
                               metadata={"note": XSS_SCRIPT}):
        with spanmux.span(XSS_SCRIPT, kind="chain", input={"question": XSS_SCRIPT}) as root:
            root.set_output(chain.invoke({"question": f"{XSS_SCRIPT} {XSS_IMG}"}))
    facts.xss = root.trace_id


def _llamaindex_run(spanmux: Any, facts: StoreFacts) -> None:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.base.llms.types import LLMMetadata
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM

    from spanmux.integrations.llamaindex import instrument

    class NamedMockLLM(MockLLM):
        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(num_output=self.max_tokens or -1, model_name="gpt-4o-mini")

    instrument()
    documents = [
        Document(text="Bergen is the rainiest city in Norway, about 230 days of rain a year.", id_="bergen",
                 metadata={"source": "guide.md"}),
        Document(text="Oslo is the capital of Norway.", id_="oslo", metadata={"source": "guide.md"}),
        Document(text="Tromso is known for the northern lights.", id_="tromso", metadata={"source": "faq.md"}),
    ]
    with spanmux.trace_context(user_id="bob", session_id="sess-rag", tags=["rag"], metadata={"variant": "A"}):
        with spanmux.span("norway-guide", kind="chain", input={"question": "Which city is the rainiest?"}) as root:
            index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
            engine = index.as_query_engine(llm=NamedMockLLM(max_tokens=12), similarity_top_k=2)
            root.set_output(str(engine.query("Which city in Norway is the rainiest?")))
    facts.rag = root.trace_id
    facts.variant_a.append(root.trace_id)


def _dspy_run(spanmux: Any, facts: StoreFacts) -> None:
    import dspy
    from dspy.clients.engines.dummy_engine import AsyncDummyEngine, DummyEngine
    from dspy.lm15 import Usage
    from dspy.utils import DummyLM

    from spanmux.integrations.dspy import Callback

    class ReportingEngine(DummyEngine):
        def _complete_messages(self, messages: list[dict[str, Any]]) -> Any:
            response = super()._complete_messages(messages)
            prompt = sum(len(str(m.get("content", ""))) for m in messages) // 4
            completion = max(1, len(response.message.text or "") // 4)
            usage = Usage(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)
            return dataclasses.replace(response, model="gpt-4o-mini", usage=usage)

    class ReportingLM(DummyLM):
        def __init__(self, answers: list[dict[str, Any]]) -> None:
            super().__init__(answers)
            self.model = "openai/gpt-4o-mini"
            self._engine_spec = ReportingEngine(self)
            self._async_engine_spec = AsyncDummyEngine(self._engine_spec)

    def get_weather(city: str) -> str:
        """Current weather of a city, in Celsius."""
        return f"{city}: 18 C, light rain"

    class WeatherQA(dspy.Signature):
        """Answer weather questions with the tools."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    lm = ReportingLM([
        {"next_thought": "Look it up.", "next_tool_name": "get_weather", "next_tool_args": {"city": "Bergen"}},
        {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "Known.", "answer": "Bergen: light rain, 18 C."},
    ])
    dspy.configure(lm=lm, callbacks=[Callback()])
    agent = dspy.ReAct(WeatherQA, tools=[get_weather])
    with spanmux.trace_context(user_id="carol", session_id="sess-dspy", tags=["dspy"], metadata={"variant": "B"}):
        with spanmux.span("dspy-weather", kind="agent", input={"question": "Weather in Bergen?"}) as root:
            root.set_output(agent(question="Weather in Bergen?").answer)
    facts.dspy = root.trace_id
    facts.variant_b.append(root.trace_id)


def big_trace(spanmux: Any, spans: int, name: str = "big-batch-job") -> str:
    """One trace of ``spans`` spans through the manual API: a root, steps of 99 children each
    (an llm call with usage, then tools), so the tree is wide and two levels deep."""
    made = 1
    with spanmux.trace_context(user_id="batch", tags=["big"]), spanmux.span(name, kind="agent") as root:
        step = 0
        while made < spans:
            with spanmux.span(f"step-{step}", kind="chain", input={"step": step}):
                made += 1
                for child in range(min(99, spans - made)):
                    if child == 0:
                        with spanmux.span("plan", kind="llm", model="gpt-4o-mini",
                                          input=[{"role": "user", "content": f"plan step {step}"}]) as llm:
                            llm.set_usage(input_tokens=20, output_tokens=5)
                            llm.set_output({"role": "assistant", "content": "ok"})
                    else:
                        with spanmux.span(f"tool-{child}", kind="tool", input={"n": child}) as t:
                            t.set_output(child)
                    made += 1
            step += 1
    return root.trace_id


def build_ui_store(
    path: str | Path, *, big_spans: int = BIG_TRACE_SPANS, extra: dict[str, Any] | None = None
) -> StoreFacts:
    """Run the frameworks into a fresh store at ``path`` (``extra``: more of the configuration, e.g.
    an mlflow section and backends list). Call in a fresh process: it configures spanmux and the
    frameworks process-wide."""
    import spanmux

    store = Path(path)
    store.parent.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"backends": ["local"], "local": {"path": str(store)}, "flush_interval": 0.05,
                              "spool_dir": str(store.parent / "spool")}
    config.update(extra or {})
    spanmux.configure(config)
    facts = StoreFacts(path=str(store))
    spanmux.instrument("langchain")
    _langchain_runs(spanmux, facts)
    _llamaindex_run(spanmux, facts)
    _dspy_run(spanmux, facts)
    spanmux.score(facts.weather_turns[0], "helpful", True, comment="good answer")
    spanmux.score(facts.weather_turns[1], "correctness", 0.5, comment="missed Fahrenheit")
    spanmux.score(facts.rag, "correctness", 0.9)
    if big_spans:
        facts.big = big_trace(spanmux, big_spans)
        facts.big_spans = big_spans
    if not spanmux.flush(timeout=120):
        raise RuntimeError("spanmux.flush timed out while building the UI store")
    spanmux.shutdown()
    return facts


def build_in_subprocess(path: Path, *, big_spans: int = BIG_TRACE_SPANS, extra: dict[str, Any] | None = None,
                        timeout: float = 600) -> StoreFacts:
    """``build_ui_store`` in a fresh interpreter; its facts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **OFFLINE_ENV, "DSPY_CACHEDIR": str(path.parent / "dspy-cache")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, str(Path(__file__).resolve()), "build", str(path), "--big-spans", str(big_spans),
               "--extra", json.dumps(extra or {})]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(path.parent), timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building the UI store failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return StoreFacts(**json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="run the frameworks into a new store and print its facts as JSON")
    build.add_argument("path")
    build.add_argument("--big-spans", type=int, default=BIG_TRACE_SPANS)
    build.add_argument("--extra", default="{}", help="JSON: more configuration keys")
    args = parser.parse_args()
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    facts = build_ui_store(args.path, big_spans=args.big_spans, extra=json.loads(args.extra))
    sys.stdout.write(json.dumps(dataclasses.asdict(facts)) + "\n")


if __name__ == "__main__":
    main()
