"""The web UI's routes (Starlette's TestClient, no browser) over a store written by real framework
runs: a LangGraph agent with a fake chat model and two tools, a LlamaIndex RAG with mock models, a
DSPy ReAct with DummyLM, manual spans for errors, XSS payloads, a 10 MB input and a 10,000-span
trace. The browser side (JS tree, charts, live rows) is tests/test_ui_browser.py."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("DSPY_CACHEDIR", os.path.join(tempfile.gettempdir(), "spanmux-tests-dspy-cache"))
pytest.importorskip("starlette")
pytest.importorskip("langgraph")
pytest.importorskip("llama_index.core")
dspy = pytest.importorskip("dspy")

from conftest import REACT_ANSWERS, REACT_QUESTION, add, weather  # noqa: E402
from langchain.agents import create_agent  # noqa: E402
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import spanmux  # noqa: E402
from spanmux.integrations.langchain import CallbackHandler  # noqa: E402
from spanmux.store import LocalStore, TraceSummary  # noqa: E402
from spanmux.testing import reset  # noqa: E402
from spanmux.ui.app import create_app  # noqa: E402

BASE = "http://127.0.0.1"
ORIGIN = {"origin": BASE}
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"
BIG = 10 * 1024 * 1024


class FakeChat(FakeMessagesListChatModel):
    """Scripted answers; tool binding is ignored (the script already holds the tool calls)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> FakeChat:  # type: ignore[override]
        return self


def answer(text: str, **extra: Any) -> AIMessage:
    return AIMessage(text, usage_metadata={"input_tokens": 12, "output_tokens": 5, "total_tokens": 17},
                     response_metadata={"model_name": "gpt-4o-mini"}, **extra)


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def langgraph_turn(question: str) -> None:
    calls = [{"name": "multiply", "args": {"a": 4, "b": 5}, "id": "call_1", "type": "tool_call"}]
    agent = create_agent(FakeChat(responses=[answer("", tool_calls=calls), answer("4*5 is 20")]), tools=[multiply])
    agent.invoke({"messages": [("user", question)]}, config={"callbacks": [CallbackHandler()]})


def llamaindex_rag() -> None:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM

    from spanmux.integrations import llamaindex as li

    docs = [Document(text=t, id_=f"doc-{i}") for i, t in enumerate(["Paris is in France.", "Cats sleep a lot."])]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    li.instrument()
    try:
        index.as_query_engine(llm=MockLLM(max_tokens=8)).query("Where is Paris?")
    finally:
        li.uninstrument()


def dspy_react() -> None:
    from dspy.utils import DummyLM

    from spanmux.integrations.dspy import Callback

    class QA(dspy.Signature):
        """Answer the question."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    with dspy.context(lm=DummyLM(REACT_ANSWERS), callbacks=[Callback()]):
        dspy.ReAct(QA, tools=[add, weather])(question=REACT_QUESTION)


class Demo:
    """The store every read-only test uses, and the ids of its interesting traces."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, str] = {}

    def by_name(self, name: str) -> TraceSummary:
        with LocalStore(self.path) as db:
            (found,) = db.list_traces(name=name)
            return found


def build_demo(folder: Path) -> Demo:
    demo = Demo(folder / "spanmux.db")
    spanmux.configure({"backends": ["local"], "local": {"path": str(demo.path)}, "spool_dir": str(folder / "spool"),
                       "flush_interval": 0.05})
    try:
        with spanmux.trace_context(user_id="alice", session_id="chat-1", tags=["prod"], metadata={"variant": "A"}):
            langgraph_turn("What is 4*5?")
        with spanmux.trace_context(user_id="alice", session_id="chat-1", tags=["prod"], metadata={"variant": "A"}):
            langgraph_turn("And again, 4*5?")
        with spanmux.trace_context(user_id="bob", session_id="rag-1", tags=["rag"], metadata={"variant": "B"}):
            llamaindex_rag()
        with spanmux.trace_context(user_id="carol", metadata={"variant": "B"}):
            dspy_react()
        with spanmux.trace_context(name="failing", user_id="dave", tags=["flaky"]):
            try:
                with spanmux.span("failing", kind="agent"), spanmux.span("lookup", kind="tool"):
                    raise TimeoutError("search backend timed out")
            except TimeoutError:
                pass
        with spanmux.trace_context(name=f"xss {XSS_IMG}", user_id="eve", metadata={"note": XSS_SCRIPT}):
            with spanmux.span(f"span {XSS_SCRIPT}", kind="chain", input={"q": XSS_SCRIPT}) as xss:
                xss.set_output(XSS_IMG)
        with spanmux.trace_context(name="big input"), spanmux.span("reader", kind="tool", input="x" * BIG):
            pass
        with spanmux.trace_context(name="wide"), spanmux.span("root", kind="agent"):
            for _ in range(9_999):
                with spanmux.span("step", kind="span"):
                    pass
        assert spanmux.flush(timeout=60)
    finally:
        reset(timeout=5)
    for name in ("LangGraph", "failing", "big input", "wide"):
        demo.ids[name] = next(t.trace_id for t in LocalStore(demo.path).list_traces(limit=100) if t.name == name)
    return demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return build_demo(tmp_path_factory.mktemp("ui-demo"))


@pytest.fixture
def client(demo: Demo) -> Iterator[TestClient]:
    with TestClient(create_app(str(demo.path)), base_url=BASE) as c:
        yield c


def row_ids(html: str) -> list[str]:
    return re.findall(r'data-testid="trace-row" data-trace-id="([0-9a-f]+)"', html)


def names_listed(client: TestClient, query: str = "") -> set[str]:
    response = client.get(f"/traces?limit=500{query}")
    assert response.status_code == 200, response.text
    with_names = re.findall(r'data-testid="trace-link" href="/traces/[0-9a-f]+">([^<]*)</a>', response.text)
    return {unescape(name) for name in with_names}


# ---- the list and its filters ------------------------------------------------------------------------


def test_list_shows_every_framework_run_newest_first(client: TestClient, demo: Demo) -> None:
    response = client.get("/traces")
    assert response.status_code == 200
    html = response.text
    with LocalStore(demo.path) as db:
        expected = [t.trace_id for t in db.list_traces(limit=50)]
    assert row_ids(html) == expected[:50]
    names = names_listed(client)
    assert {"LangGraph", "RetrieverQueryEngine.query", "ReAct(QA)", "failing", "big input", "wide"} <= names
    lg = demo.ids["LangGraph"]
    assert lg in html and "alice" in html and "chat-1" in html and "prod" in html
    assert 'data-testid="live-status"' in html  # first page: live rows
    users = html.split('<datalist id="suggest-user">')[1].split("</datalist>")[0]
    assert 'value="alice"' in users.split("<option")[1] and 'value="eve"' in users  # most traces first
    assert 'list="suggest-model"' in html and '<option value="gpt-4o-mini">' in html


@pytest.mark.parametrize(("query", "expected"), [
    ("&user=alice", {"LangGraph"}),
    ("&user=bob", {"RetrieverQueryEngine.query"}),
    ("&session=chat-1", {"LangGraph"}),
    ("&errors=1", {"failing"}),
    ("&tag=flaky", {"failing"}),
    ("&tag=prod&user=alice", {"LangGraph"}),
    ("&meta=variant%3DB", {"RetrieverQueryEngine.query", "ReAct(QA)"}),
    ("&meta=variant%3DB&user=carol", {"ReAct(QA)"}),
    ("&name=failing", {"failing"}),
    ("&model=gpt-4o-mini", {"LangGraph"}),
    ("&q=Where+is+Paris", {"RetrieverQueryEngine.query"}),
    ("&q=sunny+in+paris", {"ReAct(QA)"}),
    ("&q=search+backend+timed+out", {"failing"}),
    ("&q=nothing-like-this-anywhere", set()),
])
def test_filters_combine(client: TestClient, query: str, expected: set[str]) -> None:
    assert names_listed(client, query) == expected


def test_duration_cost_and_time_filters(client: TestClient, demo: Demo) -> None:
    with LocalStore(demo.path) as db:
        traces = db.list_traces(limit=100)
    slowest = max(traces, key=lambda t: t.duration_ms)
    assert names_listed(client, f"&min_ms={slowest.duration_ms - 0.001}") == {slowest.name}
    priced = [t for t in traces if t.cost_total]
    assert priced and names_listed(client, "&min_cost=0.0000001") == {t.name for t in priced}
    oldest = min(traces, key=lambda t: t.start_ns)
    assert names_listed(client, f"&until={oldest.start_ns / 1e9 + 0.0000005}") == {oldest.name}
    assert names_listed(client, "&since=2000-01-01T00:00") == {t.name for t in traces}
    assert names_listed(client, "&range=24h") == {t.name for t in traces}
    assert names_listed(client, "&until=2000-01-01T00:00") == set()


def test_bad_filter_values_are_named_not_a_traceback(client: TestClient) -> None:
    response = client.get("/traces?min_ms=fast&since=yesterday&meta=novalue&range=1y&cursor=zz")
    assert response.status_code == 200
    problems = response.text.split('data-testid="filter-problems"')[1]
    for word in ("min duration", "since", "meta", "range", "cursor"):
        assert word in problems


def test_keyset_paging_walks_every_trace_once(client: TestClient, demo: Demo) -> None:
    seen: list[str] = []
    url = "/traces?limit=3"
    while url:
        html = client.get(url).text
        seen += row_ids(html)
        found = re.search(r'data-testid="next-page" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else ""
        assert "cursor=" in url or not url
    with LocalStore(demo.path) as db:
        assert seen == [t.trace_id for t in db.list_traces(limit=100)]


def test_search_budget_is_said_and_the_next_page_continues(demo: Demo) -> None:
    with LocalStore(demo.path) as db:
        page = db.search_traces("4*5 is 20", limit=50, budget_spans=1)
        assert page.budget_hit and page.next is not None and page.scanned == 1
        found = list(page.traces)
        while page.budget_hit:
            page = db.search_traces("4*5 is 20", limit=50, after=page.next, budget_spans=1)
            found += page.traces
    assert sorted(t.name or "" for t in found) == ["LangGraph", "LangGraph"]


def test_new_traces_come_with_the_filters_of_the_page(client: TestClient, demo: Demo) -> None:
    with LocalStore(demo.path) as db:
        newest = db.newest_seq()
    assert client.get(f"/traces/new?after_seq={newest}").text.strip() == ""
    response = client.get(f"/traces/new?after_seq={newest - 3}&user=alice")
    assert response.headers["x-spanmux-seq"] == str(newest)
    assert row_ids(response.text) == []  # the newest three are not alice's
    every = client.get("/traces/new?after_seq=0&user=alice")
    assert len(row_ids(every.text)) == 2 and 'class="new"' in every.text


# ---- one trace ----------------------------------------------------------------------------------------


def test_trace_page_header_and_tree_rows(client: TestClient, demo: Demo) -> None:
    trace_id = demo.ids["LangGraph"]
    html = client.get(f"/traces/{trace_id}").text
    header = html.split('data-testid="trace-header"')[1].split("</section>")[0]
    for text in ("alice", "chat-1", "prod", "variant=A", "gpt-4o-mini", "24 in", "10 out"):
        assert text in header
    tree = client.get(f"/traces/{trace_id}/tree.json").json()
    rows = tree["rows"]
    assert tree["columns"][:3] == ["span_id", "parent_index", "depth"]
    assert rows[0][1] == -1 and rows[0][2] == 0 and rows[0][3] == "LangGraph" and rows[0][4] == "agent"
    for row in rows[1:]:
        parent = rows[row[1]]
        assert row[1] < rows.index(row) and row[2] == parent[2] + 1  # parents before children
    kinds = [r[4] for r in rows]
    assert kinds.count("llm") == 2 and kinds.count("tool") == 1
    assert [r[10] for r in rows if r[4] == "llm"] == [17, 17]
    assert client.get(f"/traces/{trace_id[:10]}").status_code == 200  # a prefix is enough
    assert 'data-testid="not-found"' in client.get("/traces/ffffffffffff").text
    assert client.get("/traces/ffffffffffff").status_code == 404


def span_of(demo: Demo, trace_id: str, kind: str, last: bool = False) -> str:
    with LocalStore(demo.path) as db:
        spans = [s for s in db.get_trace(trace_id) if s.kind == kind]
    return spans[-1 if last else 0].span_id


def test_llm_span_shows_messages_per_role_tool_calls_tokens_and_cost(client: TestClient, demo: Demo) -> None:
    trace_id = demo.ids["LangGraph"]
    html = client.get(f"/traces/{trace_id}/spans/{span_of(demo, trace_id, 'llm', last=True)}").text
    roles = re.findall(r'data-testid="message" data-role="(\w+)"', html)
    assert roles == ["user", "assistant", "tool", "assistant"]  # input: user, tool call, result; output
    assert 'data-testid="tool-call"' in html and "multiply" in html
    tokens = html.split('data-testid="tokens">')[1].split("</dd>")[0]
    assert "in 12" in tokens and "out 5" in tokens and "total 17" in tokens
    assert "price-table" in html.split('data-testid="cost">')[1].split("</dd>")[0]
    assert "gpt-4o-mini" in html.split('data-testid="model">')[1]
    selected = client.get(f"/traces/{trace_id}?span={span_of(demo, trace_id, 'llm')}").text
    assert 'data-testid="message" data-role="user"' in selected
    assert f'id="feedback-span" value="{span_of(demo, trace_id, "llm")}"' in selected  # scores go to that span
    unknown = client.get(f"/traces/{trace_id}?span=0000000000000000").text
    assert 'id="feedback-span" value=""' in unknown and "LangGraph" in unknown  # the root, scores on the trace


def test_retriever_documents_and_dspy_estimated_tokens(client: TestClient, demo: Demo) -> None:
    rag = demo.by_name("RetrieverQueryEngine.query").trace_id
    html = client.get(f"/traces/{rag}/spans/{span_of(demo, rag, 'retriever')}").text
    assert html.count('data-testid="document"') == 2 and "Paris is in France." in html and "score" in html
    react = demo.by_name("ReAct(QA)").trace_id
    html = client.get(f"/traces/{react}/spans/{span_of(demo, react, 'llm')}").text
    assert 'data-testid="tokens-estimated"' in html  # DummyLM reports no usage: estimated, and said so


def test_error_span_shows_type_message_and_traceback(client: TestClient, demo: Demo) -> None:
    trace_id = demo.ids["failing"]
    html = client.get(f"/traces/{trace_id}/spans/{span_of(demo, trace_id, 'tool')}").text
    error = html.split('data-testid="error"')[1]
    assert "TimeoutError" in error and "search backend timed out" in error and "Traceback" in error
    rows = client.get(f"/traces/{trace_id}/tree.json").json()["rows"]
    assert [r[5] for r in rows] == ["error", "error"]


def test_big_input_shows_its_first_part_and_more_on_demand(client: TestClient, demo: Demo) -> None:
    trace_id = demo.ids["big input"]
    span_id = span_of(demo, trace_id, "tool")
    html = client.get(f"/traces/{trace_id}/spans/{span_id}").text
    assert len(html) < 100_000 and 'data-testid="show-more"' in html
    more = re.search(r'data-testid="show-more" href="([^"]+)"', html)
    assert more is not None
    part = client.get(more.group(1).replace("&amp;", "&"))
    assert part.status_code == 200 and 'data-testid="more-part"' in part.text and "x" * 1000 in part.text
    assert 'data-testid="show-more"' in part.text or "truncated" in part.text


def test_ten_thousand_span_trace_is_one_compact_tree(client: TestClient, demo: Demo) -> None:
    trace_id = demo.ids["wide"]
    html = client.get(f"/traces/{trace_id}").text
    assert len(html) < 50_000  # the page carries no span rows: trace.js draws the visible ones
    rows = client.get(f"/traces/{trace_id}/tree.json").json()["rows"]
    assert len(rows) == 10_000 and rows[0][8] == 9_999 and {r[1] for r in rows[1:]} == {0}


# ---- safety -------------------------------------------------------------------------------------------


def test_xss_payloads_render_as_text_everywhere(client: TestClient, demo: Demo) -> None:
    xss = next(t for t in LocalStore(demo.path).list_traces(limit=100) if t.user_id == "eve")
    span_id = span_of(demo, xss.trace_id, "chain")
    pages = [client.get(url).text for url in (
        "/traces", "/traces?user=eve", f"/traces/{xss.trace_id}", f"/traces/{xss.trace_id}/spans/{span_id}",
        "/compare?by=metadata.note", "/compare?by=name", f"/compare/traces?a={xss.trace_id}",
        "/traces/new?after_seq=0",
    )]
    for html in pages:
        assert XSS_SCRIPT not in html and XSS_IMG not in html
        assert "<script>" not in html.replace('<script src="/static/', "").replace(
            '<script type="application/json" id="chart-data">', "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[3] and "&lt;img src=x onerror=alert(1)&gt;" in pages[0]
    assert '\\u003cscript\\u003e' in pages[4]  # chart data: JSON-escaped inside its data block


def test_every_page_has_a_strict_csp_and_no_outside_resource(client: TestClient, demo: Demo) -> None:
    for url in ("/traces", f"/traces/{demo.ids['LangGraph']}", "/sessions", "/compare", "/over-time"):
        response = client.get(url)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r'(src|href)="(https?:)?//', response.text)
        assert "<style" not in response.text and " style=" not in response.text
        handler = r'<[a-z]+(\s+[a-z-]+(=("[^"]*"|[^\s>"]+))?)*\s+on[a-z]+='  # an inline event handler in a tag
        assert not re.search(handler, response.text)
    for asset in ("htmx.min.js", "htmx.LICENSE", "chart.umd.min.js", "chart.js.LICENSE.md", "app.js", "trace.js"):
        assert client.get(f"/static/{asset}").status_code == 200


def test_other_host_names_are_refused(demo: Demo) -> None:
    with TestClient(create_app(str(demo.path)), base_url="http://attacker.example") as c:
        assert c.get("/traces").status_code == 400  # DNS rebinding: another name pointing at 127.0.0.1
    with TestClient(create_app(str(demo.path)), base_url="http://[::1]:7100") as c:
        assert c.get("/traces").status_code == 200  # IPv6 loopback, with its port
    with TestClient(create_app(str(demo.path)), base_url="http://localhost:7100") as c:
        assert c.get("/traces").status_code == 200


def post_score(client: TestClient, trace_id: str, headers: dict[str, str] | None = None, **form: str) -> Any:
    return client.post(f"/traces/{trace_id}/scores", data=form, headers=headers)


def test_scores_need_same_origin_and_the_token(client: TestClient, demo: Demo) -> None:
    trace_id = demo.ids["failing"]
    token = client.app.state.token  # type: ignore[attr-defined]
    refused = [
        post_score(client, trace_id, kind="up"),  # no origin, no token
        post_score(client, trace_id, {"x-spanmux-token": token}, kind="up"),  # no Origin/Referer
        post_score(client, trace_id, {"origin": "http://evil.example", "x-spanmux-token": token}, kind="up"),
        post_score(client, trace_id, {"referer": "http://evil.example/x", "x-spanmux-token": token}, kind="up"),
        post_score(client, trace_id, ORIGIN, kind="up"),  # same origin, no token
        post_score(client, trace_id, {**ORIGIN, "x-spanmux-token": "0" * 32}, kind="up"),
    ]
    assert [r.status_code for r in refused] == [403] * 6
    with LocalStore(demo.path) as db:
        assert db.get_scores(trace_id) == []
    assert token in client.get(f"/traces/{trace_id}").text  # the page carries it (meta tag)


# ---- feedback ------------------------------------------------------------------------------------------


@pytest.fixture
def own_store(tmp_path: Path) -> Demo:
    """A store of its own (feedback writes to it)."""
    folder = tmp_path / "own"
    demo = Demo(folder / "spanmux.db")
    spanmux.configure({"backends": ["local"], "local": {"path": str(demo.path)}, "spool_dir": str(folder / "spool")})
    langgraph_turn("What is 4*5?")
    assert spanmux.flush(timeout=30)
    reset(timeout=5)
    demo.ids["LangGraph"] = LocalStore(demo.path).list_traces()[0].trace_id
    return demo


def test_thumbs_down_with_comment_reaches_the_store_and_shows_at_once(own_store: Demo) -> None:
    trace_id = own_store.ids["LangGraph"]
    with TestClient(create_app(str(own_store.path)), base_url=BASE) as client:
        headers = {**ORIGIN, "x-spanmux-token": client.app.state.token}  # type: ignore[attr-defined]
        response = post_score(client, trace_id, headers, kind="down", comment="wrong tool <b>used</b>")
        assert response.status_code == 200
        assert response.text.startswith('<div id="scores"') and 'data-score-name="user_feedback"' in response.text
        assert "wrong tool &lt;b&gt;used&lt;/b&gt;" in response.text
        llm = span_of(own_store, trace_id, "llm")
        assert post_score(client, trace_id, headers, kind="value", name="accuracy", value="0.75",
                          span_id=llm).status_code == 200
        assert post_score(client, trace_id, headers, kind="value", name="tone", value="rude").status_code == 200
        missing = post_score(client, trace_id, headers, kind="value", name="empty", value="")
        assert 'data-testid="score-problem"' in missing.text
        for odd in ("nan", "inf"):
            assert 'data-testid="score-problem"' in post_score(client, trace_id, headers, kind="value",
                                                               name="empty", value=odd).text
        token_in_form = post_score(client, trace_id, ORIGIN, kind="up", token=client.app.state.token)  # type: ignore[attr-defined]
        assert token_in_form.status_code == 200  # a plain form post carries the token as a field
    with LocalStore(own_store.path) as db:
        scores = {s.name: s for s in db.get_scores(trace_id)}
    down = [s for s in LocalStore(own_store.path).get_scores(trace_id) if s.name == "user_feedback"]
    assert [(s.value, s.data_type, s.source) for s in down] == [(False, "boolean", "human"), (True, "boolean", "human")]
    assert down[0].comment == "wrong tool <b>used</b>"
    assert scores["accuracy"].value == 0.75 and scores["accuracy"].span_id == llm
    assert scores["tone"].value == "rude" and scores["tone"].data_type == "categorical"
    assert "empty" not in scores


@pytest.mark.slow
def test_feedback_with_a_config_reaches_mlflow_too(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracing.client import TracingClient

    store = tmp_path / "spanmux.db"
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"observability": {
        "backends": ["local", "mlflow"], "local": {"path": str(store)}, "spool_dir": str(tmp_path / "spool"),
        "mlflow": {"tracking_uri": mlflow_server, "experiment_name": f"ui-{os.getpid()}-{tmp_path.name}"},
    }}))
    spanmux.configure(str(config))
    langgraph_turn("What is 4*5?")
    assert spanmux.flush(timeout=60)
    reset(timeout=5)
    trace_id = LocalStore(store).list_traces()[0].trace_id
    with TestClient(create_app(str(store), str(config)), base_url=BASE) as client:
        headers = {**ORIGIN, "x-spanmux-token": client.app.state.token}  # type: ignore[attr-defined]
        response = post_score(client, trace_id, headers, kind="down", comment="made up a number")
        assert response.status_code == 200 and "Score saved" in response.text
    (mine,) = LocalStore(store).get_scores(trace_id)
    assert mine.value is False and mine.comment == "made up a number"
    assessments = TracingClient(mlflow_server).get_trace(f"tr-{trace_id}").info.assessments
    feedback = {a.name: a for a in assessments}
    assert feedback["user_feedback"].value is False
    assert feedback["user_feedback"].rationale == "made up a number"
    assert feedback["user_feedback"].source.source_type == "HUMAN"


# ---- sessions, compare, over time ---------------------------------------------------------------------


def test_sessions_list_and_a_session_as_a_conversation(client: TestClient, demo: Demo) -> None:
    html = client.get("/sessions").text
    assert re.findall(r'data-testid="session-row" data-session-id="([^"]+)"', html) == ["rag-1", "chat-1"]
    assert client.get("/sessions?user=bob").text.count('data-testid="session-row"') == 1
    chat = client.get("/sessions/chat-1").text
    turns = chat.split('data-testid="turn"')[1:]
    assert len(turns) == 2
    assert "What is 4*5?" in turns[0] and "And again, 4*5?" in turns[1]
    assert all("4*5 is 20" in turn.split('data-testid="turn-output">')[1].split("</div>")[0] for turn in turns)
    assert 'data-testid="turn-link" href="/traces/' in turns[0] and "34 tokens" in turns[0]
    totals = chat.split('data-testid="session-totals"')[1].split("</dl>")[0]
    assert "68" in totals and "alice" in totals
    assert client.get("/sessions/nope").status_code == 404
    first, second = re.findall(r'data-testid="turn" data-trace-id="([0-9a-f]+)"', chat)
    header = client.get(f"/traces/{first}").text
    assert "turn 1 of 2" in header and f'data-testid="turn-next" href="/traces/{second}"' in header
    assert 'data-testid="turn-previous"' not in header
    assert f'data-testid="turn-previous" href="/traces/{first}"' in client.get(f"/traces/{second}").text


def chart_data(html: str) -> dict[str, Any]:
    block = html.split('<script type="application/json" id="chart-data">')[1].split("</script>")[0]
    data: dict[str, Any] = json.loads(block)
    return data


def test_compare_groups_with_chart_data(client: TestClient) -> None:
    html = client.get("/compare?by=variant").text
    groups = re.findall(r'data-testid="compare-row" data-group="([^"]+)"', html)
    assert groups == ["A", "B", "(none)"]
    data = chart_data(html)
    assert data["labels"] == groups and len(data["p95_ms"]) == 3 and data["input_tokens"][0] == 24
    assert html.count('data-testid="chart"') >= 4
    by_user = client.get("/compare?by=user&tag=prod").text
    assert re.findall(r'data-testid="compare-row" data-group="([^"]+)"', by_user) == ["alice"]
    assert '<option value="metadata.note" >metadata.note</option>' in html  # keys seen are offered
    by_note = client.get("/compare?by=metadata.note").text
    assert '<option value="metadata.note" selected>' in by_note
    bad = client.get("/compare?by=colour").text
    assert "cannot group by" in bad and 'data-testid="compare-row"' in bad


def test_compare_scores_are_charted(own_store: Demo) -> None:
    trace_id = own_store.ids["LangGraph"]
    with TestClient(create_app(str(own_store.path)), base_url=BASE) as client:
        headers = {**ORIGIN, "x-spanmux-token": client.app.state.token}  # type: ignore[attr-defined]
        post_score(client, trace_id, headers, kind="value", name="accuracy", value="0.5")
        data = chart_data(client.get("/compare?by=user").text)
    assert data["scores"] == {"accuracy": [0.5]}


def test_compare_reads_the_newest_traces_only_and_says_so(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from spanmux.ui import app as ui_app

    monkeypatch.setattr(ui_app, "COMPARE_TRACES", 3)
    html = client.get("/compare?by=name").text
    note = html.split('data-testid="compare-bounded"')[1].split("</p>")[0]
    assert "newest 3 of 8" in note
    counts = re.findall(r'data-group="[^"]+">\s*<td><b>[^<]*</b></td><td class="num">(\d+)', html)
    assert sum(int(n) for n in counts) == 3


def test_sessions_page_on_without_repeating_one(client: TestClient) -> None:
    first = client.get("/sessions?limit=1").text
    assert re.findall(r'data-session-id="([^"]+)"', first) == ["rag-1"]
    more = re.search(r'data-testid="next-page" href="([^"]+)"', first)
    assert more is not None
    second = client.get(more.group(1).replace("&amp;", "&")).text
    assert re.findall(r'data-session-id="([^"]+)"', second) == ["chat-1"]
    assert 'data-testid="next-page"' not in second


def test_two_traces_side_by_side(client: TestClient, demo: Demo) -> None:
    a, b = demo.ids["LangGraph"], demo.by_name("ReAct(QA)").trace_id
    html = client.get(f"/compare/traces?a={a[:12]}&b={b}").text
    side_a = html.split('data-testid="compare-a"')[1].split('data-testid="compare-b"')[0]
    side_b = html.split('data-testid="compare-b"')[1]
    assert side_a.count('data-testid="side-node"') == 7 and "4*5 is 20" in side_a
    assert "ReAct(QA)" in side_b and "sunny in Paris" in side_b
    assert 'data-testid="not-found"' in client.get("/compare/traces?a=ffffffffffff").text


def test_over_time_per_hour_and_day(client: TestClient, demo: Demo) -> None:
    with LocalStore(demo.path) as db:
        total = len(db.list_traces(limit=100))
    for bucket in ("hour", "day"):
        html = client.get(f"/over-time?bucket={bucket}").text
        data = chart_data(html)
        assert sum(data["traces"]) == total and sum(data["errors"]) == 1
        assert html.count('data-testid="chart"') == 3
    assert sum(chart_data(client.get("/over-time?user=alice").text)["traces"]) == 2
    assert 'data-testid="over-time-window"' in html and "the 90 days up to the newest trace" in html
    everything = client.get("/over-time?range=all").text
    assert 'data-testid="over-time-window"' not in everything and sum(chart_data(everything)["traces"]) == total
    assert '<option value="all" selected>all time</option>' in everything
    assert "bucket: hour or day" in client.get("/over-time?bucket=week").text


# ---- stores that cannot be read ------------------------------------------------------------------------


PAGES = ("/traces", "/traces/abc", "/sessions", "/sessions/x", "/compare", "/compare/traces?a=ab", "/over-time")


def test_missing_store_is_a_clear_page(tmp_path: Path) -> None:
    with TestClient(create_app(str(tmp_path / "none.db")), base_url=BASE) as client:
        for url in PAGES:
            response = client.get(url)
            assert response.status_code == 200 and 'data-testid="store-error"' in response.text
            assert "no spanmux store" in response.text.lower() and "Traceback" not in response.text


def test_other_schema_version_and_not_a_database_are_clear_pages(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    for path, words in ((old, "schema version 1"), (junk, "not a SQLite database")):
        with TestClient(create_app(str(path)), base_url=BASE) as client:
            for url in PAGES:
                html = client.get(url).text
                assert 'data-testid="store-error"' in html and words in html


# ---- the command ---------------------------------------------------------------------------------------


def test_cli_ui_names_the_extra_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from spanmux.cli import app

    monkeypatch.setitem(sys.modules, "spanmux.ui.app", None)
    result = CliRunner().invoke(app, ["ui", "--store", "x.db"])
    assert result.exit_code == 1 and 'pip install "spanmux[ui]"' in result.output


def test_cli_ui_serves_and_prints_its_url(demo: Demo) -> None:
    process = subprocess.Popen([sys.executable, "-m", "spanmux.cli", "ui", "--store", str(demo.path), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/traces", line)
        assert url is not None, line + (process.stderr.read() if process.stderr else "")
        import httpx

        # the socket listens before the URL is printed: the connection waits in its backlog until uvicorn serves
        response = httpx.get(url.group(0).replace("/traces", "/healthz"), timeout=30)
        assert response.text == "ok"
        assert "LangGraph" in httpx.get(url.group(0), timeout=5).text
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_cli_ui_warns_off_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from typer.testing import CliRunner

    from spanmux import cli
    from spanmux.ui import app as ui_app

    seen: dict[str, Any] = {}
    monkeypatch.setattr(ui_app, "serve", lambda path, config, **options: seen.update(path=path, **options))
    result = CliRunner().invoke(cli.app, ["ui", "--store", "x.db", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "traces contain prompts" in result.output and seen["host"] == "0.0.0.0" and seen["port"] == 0
    seen["on_ready"]("http://0.0.0.0:1234/traces")
    ready = capsys.readouterr()
    assert "http://0.0.0.0:1234/traces" in ready.out and "no store at x.db yet" in ready.err
    (tmp_path / "spanmux.yaml").write_text("observability:\n  dashboard:\n    port: 7321\n")
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(cli.app, ["ui"]).exit_code == 0 and seen["port"] == 7321


# ---- what a page shows of a value ----------------------------------------------------------------------


def test_messages_of_every_shape_the_integrations_record() -> None:
    from spanmux.ui.render import call_arguments, messages_of, turn_text

    openai = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
              {"role": "assistant", "content": None,
               "tool_calls": [{"id": "c1", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
              {"role": "tool", "content": "2", "tool_call_id": "c1"}]
    shown = messages_of(openai)
    assert shown is not None and [m.role for m in shown] == ["system", "user", "assistant", "tool"]
    assert shown[1].content == "Hi\nthere" and call_arguments(shown[2].tool_calls[0]) == '{"a": 1}'
    assert [m.role for m in messages_of({"messages": [("human", "q"), ("ai", "a")]}) or []] == ["user", "assistant"]
    assert messages_of({"role": "ai", "content": "Paris"}) is not None
    for not_chat in ("text", {"question": "q"}, [1, 2], [{"role": "nobody", "content": "x"}], None, []):
        assert messages_of(not_chat) is None
    assert turn_text({"question": "Capital?"}, answer=False) == "Capital?"
    assert turn_text({"reasoning": "r", "answer": "Paris"}, answer=True) == "Paris"
    assert turn_text({"messages": [("user", "q1"), ("ai", "a1"), ("user", "q2")]}, answer=False) == "q2"
    assert turn_text("x" * 5000, answer=True).endswith("…")


def test_json_keeps_an_embedding_on_one_line() -> None:
    from spanmux.ui.render import to_json

    assert to_json({"embedding": [0.5, -1e-3, 2], "mixed": [1, "a"]}) == (
        '{\n  "embedding": [0.5, -0.001, 2],\n  "mixed": [\n    1,\n    "a"\n  ]\n}')
    assert to_json("plain text") == "plain text"


def test_filters_read_from_the_url_and_written_back() -> None:
    from spanmux.ui.query import Query, link, parse_filters

    parsed = parse_filters(Query({"user": "  alice ", "meta": ["variant=B", "env = prod"], "errors": "1",
                                  "since": "2026-01-02T03:04", "min_cost": "0.5", "name": ""}), now=0)
    where = parsed.where
    assert where.user_id == "alice" and where.metadata == {"variant": "B", "env": "prod"} and where.errors_only
    assert where.since_ns == 1767323040 * 10**9 and where.min_cost == 0.5 and where.name is None
    assert parsed.problems == []
    assert link("/traces", parsed.form, cursor="1.2") == (
        "/traces?since=2026-01-02T03%3A04&errors=1&user=alice&min_cost=0.5&meta=variant%3DB&meta=env+%3D+prod"
        "&cursor=1.2")


def test_quiet_hours_are_empty_buckets_not_skipped() -> None:
    from spanmux.store import TimeBucket
    from spanmux.ui.views import with_empty_buckets

    hour = 3600 * 10**9
    two = [TimeBucket(start_ns=s, traces=1, errors=0, input_tokens=1, output_tokens=1, total_tokens=2, cost_total=0.1)
           for s in (0, 3 * hour)]
    filled = with_empty_buckets(two, hour)
    assert [b.start_ns for b in filled] == [0, hour, 2 * hour, 3 * hour] and [b.traces for b in filled] == [1, 0, 0, 1]
    assert with_empty_buckets(two, hour, most=2) == two


def test_the_demo_ab_example_fills_sessions_and_compare(tmp_path: Path) -> None:
    """`make demo` runs examples/ab_sessions.py: its store has the UI's three-turn sessions and A/B groups."""
    example = Path(__file__).resolve().parent.parent / "examples" / "ab_sessions.py"
    done = subprocess.run([sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    with TestClient(create_app(str(tmp_path / ".spanmux" / "spanmux.db")), base_url=BASE) as client:
        session = client.get("/sessions/weather-A").text
        assert session.count('data-testid="turn"') == 3 and "Do I need an umbrella?" in session
        html = client.get("/compare?by=variant").text
        assert re.findall(r'data-testid="compare-row" data-group="([^"]+)"', html) == ["A", "B"]
        data = chart_data(html)
    assert data["scores"]["user_feedback"] == [pytest.approx(2 / 3), 1.0]
    assert data["output_tokens"][0] < data["output_tokens"][1]
