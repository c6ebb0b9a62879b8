"""The web UI in a real browser: Debian's Chromium driven by Playwright against a real uvicorn server
on loopback, over a store made by real LangGraph, LlamaIndex and DSPy runs (tests/browser.py).

Every page runs with the network cut off (a context route aborts any non-loopback request and the
test fails if one was tried) and with a dialog listener (an XSS payload that ran would open one).
Timings are not asserted here: benchmarks/ui.py measures them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("playwright")

from browser import (  # tests/ is on sys.path (rootdir conftest)
    XSS_IMG,
    XSS_SCRIPT,
    OfflineGuard,
    StoreFacts,
    UiServer,
    browser_page,
    build_in_subprocess,
    chromium_path,
    launch_chromium,
)
from playwright.sync_api import Page, expect, sync_playwright

import spanmux
from spanmux.store import LocalStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
expect.set_options(timeout=20_000)  # two shared cores: generous waits, never a timed assertion

CHROMIUM = chromium_path()
if CHROMIUM is None:
    pytest.skip("Chromium not found (/usr/bin/chromium or $SPANMUX_CHROMIUM): install it with "
                "`apt-get install chromium` as .ci/run does; never `playwright install`", allow_module_level=True)


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module (module scope: Playwright's sync loop is gone before other
    modules' asyncio tests run)."""
    assert CHROMIUM is not None
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright, CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> StoreFacts:
    """The shared store (built once in a fresh interpreter; tests that write get their own)."""
    return build_in_subprocess(tmp_path_factory.mktemp("ui-store") / "spanmux.db")


def make_app(store: str, config: str | None = None, poll_seconds: float = 2.0) -> Any:
    from spanmux.ui.app import create_app

    return create_app(store, config, poll_seconds=poll_seconds)


@pytest.fixture(scope="module")
def server(facts: StoreFacts) -> Iterator[str]:
    with UiServer(make_app(facts.path)) as running:
        yield running.url


class Tab:
    """A page at a viewport, with what it tried to reach and the dialogs it opened."""

    def __init__(self, page: Page, guard: OfflineGuard, dialogs: list[str], base: str) -> None:
        self.page, self.guard, self.dialogs, self.base = page, guard, dialogs, base

    def open(self, path: str) -> Page:
        self.page.goto(self.base + path)
        return self.page


@pytest.fixture
def tab(browser: Any, server: str) -> Iterator[Tab]:
    with browser_page(browser) as (page, guard, dialogs):
        yield Tab(page, guard, dialogs, server)
        assert dialogs == [], f"a dialog opened: {dialogs}"


def row_ids(page: Page) -> list[str]:
    return page.locator("tr[data-testid=trace-row]").evaluate_all("rows => rows.map(r => r.dataset.traceId)")


def wait_rows(page: Page, expected: set[str]) -> None:
    """Wait until the list shows exactly these traces."""
    rows = page.locator("tr[data-testid=trace-row]")
    expect(rows).to_have_count(len(expected))
    assert set(row_ids(page)) == expected


DRAWN_PIXELS = """(canvas) => {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let drawn = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) drawn++;
    return drawn;
}"""


def wait_chart_drawn(page: Page) -> int:
    """Wait until the first chart canvas has drawn pixels (Chart.js animates); their number."""
    canvas = page.locator("canvas[data-testid=chart]").first
    expect(canvas).to_be_visible()
    handle = canvas.element_handle()
    page.wait_for_function(f"(c) => ({DRAWN_PIXELS})(c) > 200", arg=handle)
    return int(page.evaluate(DRAWN_PIXELS, handle))


EXECUTABLE_ALERTS = """() => [...document.scripts].filter(s =>
    ['', 'text/javascript', 'module'].includes(s.type) && s.textContent.includes('alert')).length"""


def no_horizontal_overflow(page: Page) -> None:
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1] + 1, (f"{page.url} scrolls sideways: scrollWidth {width[0]} > innerWidth "
                                      f"{width[1]}")


# ---- the trace list ---------------------------------------------------------------------------------

def test_list_filters_by_user_and_errors_and_back_forward_restores_them(tab: Tab, facts: StoreFacts) -> None:
    page = tab.open("/traces")
    every = set(facts.weather_turns + [facts.rag, facts.dspy, facts.error, facts.xss, facts.big])
    wait_rows(page, every)
    expect(page.locator(f"tr[data-trace-id='{facts.error}']")).to_have_attribute("data-status", "error")

    form = page.locator("form[data-testid=filters]")
    form.locator("input[name=user]").fill("alice")
    form.locator("[data-testid=apply-filters]").click()
    expect(page).to_have_url(re.compile(r"[?&]user=alice"))
    wait_rows(page, set(facts.weather_turns))
    for cell in page.locator("[data-testid=trace-user]").all_inner_texts():
        assert cell.strip() == "alice"

    form = page.locator("form[data-testid=filters]")
    form.locator("input[name=user]").fill("")
    form.locator("input[name=errors]").check()
    form.locator("[data-testid=apply-filters]").click()
    expect(page).to_have_url(re.compile(r"[?&]errors=1"))
    wait_rows(page, {facts.error})

    page.go_back()  # the user filter again, in the list and in the form
    expect(page).to_have_url(re.compile(r"[?&]user=alice"))
    wait_rows(page, set(facts.weather_turns))
    expect(page.locator("form[data-testid=filters] input[name=user]")).to_have_value("alice")
    expect(page.locator("form[data-testid=filters] input[name=errors]")).not_to_be_checked()
    page.go_forward()
    wait_rows(page, {facts.error})
    expect(page.locator("form[data-testid=filters] input[name=errors]")).to_be_checked()
    page.go_back()
    page.go_back()
    wait_rows(page, every)


def test_search_finds_text_inside_span_inputs(tab: Tab, facts: StoreFacts) -> None:
    page = tab.open("/traces")
    form = page.locator("form[data-testid=filters]")
    form.locator("input[name=q]").fill("Lysverket")  # only in the failed booking agent's messages
    form.locator("[data-testid=apply-filters]").click()
    expect(page).to_have_url(re.compile(r"[?&]q=Lysverket"))
    wait_rows(page, {facts.error})
    page.locator("input[name=q]").fill("northern lights")  # a LlamaIndex document, seen by its retriever
    page.locator("[data-testid=apply-filters]").click()
    wait_rows(page, {facts.rag})
    tab.open("/traces?q=no-such-text-anywhere")
    expect(page.locator("[data-testid=no-traces]")).to_be_visible()


def test_combined_filters_tag_metadata_and_name(tab: Tab, facts: StoreFacts) -> None:
    page = tab.open("/traces?tag=weather&meta=variant=A")
    wait_rows(page, {t for t in facts.weather_turns if t in facts.variant_a})
    page = tab.open("/traces?meta=variant=B&name=weather-turn")
    wait_rows(page, {t for t in facts.weather_turns if t in facts.variant_b})
    page.locator("[data-testid=clear-filters]").click()
    expect(page.locator("tr[data-testid=trace-row]")).to_have_count(8)


def test_new_trace_arrives_live_without_losing_filters(browser: Any, tmp_path: Path) -> None:
    store = tmp_path / "live" / "spanmux.db"
    spanmux.configure({"backends": ["local"], "local": {"path": str(store)}, "flush_interval": 0.05,
                       "spool_dir": str(tmp_path / "spool")})

    def trace(name: str, tags: list[str]) -> str:
        with spanmux.trace_context(tags=tags), spanmux.span(name, kind="agent", input={"q": name}) as root:
            pass
        assert spanmux.flush(30)
        return root.trace_id

    first = trace("before-open", ["live"])
    with UiServer(make_app(str(store), poll_seconds=0.3)) as server, \
            browser_page(browser) as (page, _guard, dialogs):
        page.goto(f"{server.url}/traces?tag=live")
        wait_rows(page, {first})
        expect(page.locator("[data-testid=live-status]")).to_contain_text("live")
        page.locator("input[name=q]").fill("typed, not applied")  # what the user is typing survives
        other = trace("not-tagged", ["other"])
        arrived = trace("after-open", ["live"])
        new_row = page.locator(f"tr[data-testid=trace-row][data-trace-id='{arrived}']")
        expect(new_row).to_be_visible()
        expect(new_row).to_have_class(re.compile(r"\bnew\b"))
        assert row_ids(page)[0] == arrived  # at the top
        assert other not in row_ids(page)  # the filter still applies to live rows
        expect(page).to_have_url(re.compile(r"[?&]tag=live"))
        expect(page.locator("input[name=q]")).to_have_value("typed, not applied")
        assert dialogs == []


# ---- a trace ----------------------------------------------------------------------------------------

def open_trace(tab: Tab, trace_id: str) -> Page:
    page = tab.open(f"/traces/{trace_id}")
    expect(page.locator("[data-testid=trace-header]")).to_be_visible()
    expect(page.locator("[data-testid=tree-node]").first).to_be_visible()
    expect(page.locator("[data-testid=bar]").first).to_be_visible()
    return page


def test_trace_tree_waterfall_collapse_and_llm_messages_with_tokens(tab: Tab, facts: StoreFacts) -> None:
    page = open_trace(tab, facts.weather_turns[0])
    expect(page.locator("[data-testid=time-axis]")).to_be_visible()
    header = page.locator("[data-testid=trace-header]")
    for text in ("alice", "sess-weather", "weather", "variant"):
        expect(header).to_contain_text(text)
    expect(header.locator("[data-testid=score][data-score-name=helpful]")).to_be_visible()
    nodes = page.locator("[data-testid=tree-node]")
    expect(page.locator("[data-testid=bar]")).to_have_count(nodes.count())
    every = nodes.count()
    assert every == 8  # weather-turn > LangGraph > model > llm, tools > get_weather, model > llm

    # collapse the LangGraph node: its whole subtree goes, then comes back
    graph = page.locator("[data-testid=tree-node][data-depth='1']").first
    graph.locator("[data-testid=toggle]").click()
    expect(graph).to_have_attribute("data-collapsed", "1")
    expect(nodes).to_have_count(2)
    expect(page.locator("[data-testid=bar]")).to_have_count(2)
    graph.locator("[data-testid=toggle]").click()
    expect(nodes).to_have_count(every)

    # the first LLM call: system and user messages, the assistant's tool call, tokens and cost
    llm = page.locator("[data-testid=tree-node][data-kind=llm]").first
    span_id = llm.get_attribute("data-span-id")
    llm.click()
    expect(page).to_have_url(re.compile(rf"[?&]span={span_id}"))
    detail = page.locator("[data-testid=span-detail]")
    expect(detail.locator("[data-testid=message][data-role=system]")).to_contain_text("weather assistant")
    expect(detail.locator("[data-testid=message][data-role=user]")).to_contain_text("Weather in Bergen?")
    expect(detail.locator("[data-testid=tool-call]").first).to_contain_text("get_weather")
    expect(detail.locator("[data-testid=tool-call]").first).to_contain_text("Bergen")
    tokens = detail.locator("[data-testid=tokens]")
    expect(tokens).to_contain_text("48")  # input
    expect(tokens).to_contain_text("12")  # output
    expect(tokens).to_contain_text("16")  # cached input
    expect(detail.locator("[data-testid=model]")).to_contain_text("gpt-4o-mini")
    expect(detail.locator("[data-testid=cost]")).to_contain_text("$")

    # the second call sees the tool's result as a tool message; reload keeps the selection
    second = page.locator("[data-testid=tree-node][data-kind=llm]").nth(1)
    second.click()
    expect(detail.locator("[data-testid=message][data-role=tool]")).to_contain_text("18 C, light rain")
    expect(detail.locator("[data-testid=message][data-role=assistant]").last).to_be_visible()
    page.go_back()
    expect(page).to_have_url(re.compile(rf"[?&]span={span_id}"))
    expect(detail.locator("[data-testid=message][data-role=user]")).to_contain_text("Weather in Bergen?")


def test_error_and_retriever_documents_are_shown(tab: Tab, facts: StoreFacts) -> None:
    page = open_trace(tab, facts.error)
    failed = page.locator("[data-testid=tree-node][data-status=error][data-kind=tool]").first
    expect(page.locator(f"[data-testid=bar][data-span-id='{failed.get_attribute('data-span-id')}']")).to_have_class(
        re.compile(r"\berror\b"))
    failed.click()
    error = page.locator("[data-testid=span-detail] [data-testid=error]")
    expect(error).to_contain_text("ConnectionError")
    expect(error).to_contain_text("booking service unreachable for Lysverket")

    page = open_trace(tab, facts.rag)
    page.locator("[data-testid=tree-node][data-kind=retriever]").first.click()
    documents = page.locator("[data-testid=span-detail] [data-testid=document]")
    expect(documents).to_have_count(2)  # similarity_top_k=2; MockEmbedding makes which two arbitrary
    for document in documents.all():
        expect(document).to_contain_text(re.compile(r"(Bergen is the rainiest|Oslo is the capital|Tromso is known)"))
        expect(document).to_contain_text("score")
        expect(document).to_contain_text(re.compile(r"guide\.md|faq\.md"))


def test_ten_thousand_span_trace_opens_renders_the_visible_part_and_selects(tab: Tab, facts: StoreFacts) -> None:
    page = open_trace(tab, facts.big)
    in_dom = page.locator("[data-testid=tree-node]").count()
    assert 0 < in_dom < 2000, f"{in_dom} tree rows in the DOM for {facts.big_spans} spans: not virtualised"
    node = page.locator("[data-testid=tree-node][data-kind=llm]").first
    span_id = node.get_attribute("data-span-id")
    node.click()
    expect(page.locator("[data-testid=span-detail] [data-testid=span-name]")).to_contain_text("plan")
    expect(page).to_have_url(re.compile(rf"[?&]span={span_id}"))
    # scrolling the tree's viewport to the end draws the last span, which was not in the DOM before
    rows = page.evaluate(f"() => fetch('/traces/{facts.big}/tree.json').then(r => r.json()).then(t => t.rows)")
    assert len(rows) == facts.big_spans
    last = page.locator(f"[data-testid=tree-node][data-span-id='{rows[-1][0]}']")
    assert last.count() == 0
    page.locator("#viewport").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    expect(last).to_be_visible()
    assert page.locator("[data-testid=tree-node]").count() < 2000


def test_big_input_shows_its_first_part_and_more_on_demand_and_truncation_is_marked(
    browser: Any, tmp_path: Path
) -> None:
    store = tmp_path / "big" / "spanmux.db"
    spanmux.configure({"backends": ["local"], "local": {"path": str(store)}, "flush_interval": 0.05,
                       "spool_dir": str(tmp_path / "spool"), "max_content_bytes": 2_000_000})
    text = "".join(f"line {n:07d}\n" for n in range(40_000))  # 520,000 characters, the last line known
    with spanmux.span("big-input", kind="chain", input=text) as big:
        big.set_output("done")
    with spanmux.span("cut-input", kind="chain", input="y" * 3_000_000) as cut:  # over the bound: truncated
        pass
    assert spanmux.flush(60)
    with UiServer(make_app(str(store))) as server, browser_page(browser) as (page, _guard, dialogs):
        page.goto(f"{server.url}/traces/{big.trace_id}?span={big.span_id}")
        value = page.locator("[data-testid=span-detail] [data-testid=input]")
        expect(value).to_contain_text("line 0000000")
        assert "line 0039999" not in value.inner_text()  # only the first part was sent
        for _ in range(10):  # 20,000 characters first, then parts on demand until nothing is left
            more = value.locator("a[data-testid=show-more]")
            if more.count() == 0:
                break
            parts = value.locator("[data-testid=more-part]").count()
            more.first.click()
            # wait for this click's part: the previous part's visibility let the next loop see (and click)
            # the link this swap was about to remove, then wait 30 s for a link the last part has not
            expect(value.locator("[data-testid=more-part]")).to_have_count(parts + 1)
        expect(value).to_contain_text("line 0039999")
        assert value.locator("a[data-testid=show-more]").count() == 0

        page.goto(f"{server.url}/traces/{cut.trace_id}?span={cut.span_id}")
        expect(page.locator("[data-testid=span-detail] [data-testid=truncated]").first).to_be_visible()
        assert dialogs == []


# ---- feedback through every configured backend --------------------------------------------------------

def test_thumbs_down_with_comment_reaches_store_and_mlflow(browser: Any, mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracing.client import TracingClient

    experiment = f"ui-feedback-{os.getpid()}-{tmp_path.name}"
    mlflow_section = {"tracking_uri": mlflow_server, "experiment_name": experiment}
    built = build_in_subprocess(tmp_path / "store" / "spanmux.db", big_spans=0,
                                extra={"backends": ["local", "mlflow"], "mlflow": mlflow_section})
    trace_id = built.weather_turns[2]
    config = tmp_path / "ui.yaml"  # YAML is a superset of JSON
    config.write_text(json.dumps({"observability": {
        "backends": ["local", "mlflow"], "local": {"path": built.path}, "mlflow": mlflow_section,
        "spool_dir": str(tmp_path / "ui-spool"), "flush_interval": 0.05}}))
    with UiServer(make_app(built.path, str(config))) as server, browser_page(browser) as (page, _guard, dialogs):
        page.goto(f"{server.url}/traces/{trace_id}")
        form = page.locator("form[data-testid=feedback]")
        expect(form).to_be_visible()
        form.locator("textarea[name=comment]").fill("wrong city")
        form.locator("[data-testid=thumb-down]").click()
        submit = form.locator("[data-testid=submit-score]")
        if submit.is_visible() and submit.is_enabled():
            submit.click()
        shown = page.locator("[data-testid=scores] [data-testid=score][data-score-name=user_feedback]")
        expect(shown).to_be_visible()  # the scores block was replaced in place: no reload
        expect(page.locator("[data-testid=scores]")).to_contain_text("wrong city")

        # with a span selected, the score goes to that span
        llm = page.locator("[data-testid=tree-node][data-kind=llm]").first
        llm_id = llm.get_attribute("data-span-id")
        llm.click()
        expect(form.locator("input[name=span_id]")).to_have_value(llm_id or "")
        form.locator("textarea[name=comment]").fill("good tool use")
        form.locator("[data-testid=thumb-up]").click()
        expect(page.locator("[data-testid=scores]")).to_contain_text("good tool use")
        assert dialogs == []

    with LocalStore(built.path) as store:
        scores = {s.comment: s for s in store.get_scores(trace_id) if s.name == "user_feedback"}
    assert set(scores) == {"wrong city", "good tool use"}
    down, up = scores["wrong city"], scores["good tool use"]
    assert down.value is False and down.span_id is None and down.source == "human"
    assert up.value is True and up.span_id == llm_id
    trace = TracingClient(mlflow_server).get_trace(f"tr-{trace_id}")
    feedback = {a.rationale: a for a in trace.info.assessments if a.name == "user_feedback"}
    assert feedback["wrong city"].value is False and feedback["wrong city"].source.source_type == "HUMAN"
    assert feedback["good tool use"].value is True and feedback["good tool use"].span_id == llm_id


# ---- sessions, compare, over time ------------------------------------------------------------------------

def test_session_reads_as_a_conversation(tab: Tab, facts: StoreFacts) -> None:
    page = tab.open("/sessions")
    row = page.locator(f"tr[data-testid=session-row][data-session-id='{facts.weather_session}']")
    expect(row).to_be_visible()
    row.locator("[data-testid=session-link]").click()
    expect(page).to_have_url(re.compile(rf"/sessions/{facts.weather_session}"))
    expect(page.locator("[data-testid=session-totals]")).to_be_visible()
    turns = page.locator("[data-testid=turn]")
    expect(turns).to_have_count(3)
    for turn, city in zip(turns.all(), ["Bergen", "Oslo", "Tromso"], strict=True):
        expect(turn.locator("[data-testid=turn-input]")).to_contain_text(f"Weather in {city}?")
        expect(turn.locator("[data-testid=turn-output]")).to_contain_text(f"{city} has light rain")
    turns.nth(1).locator("[data-testid=turn-link]").click()
    expect(page).to_have_url(re.compile(rf"/traces/{facts.weather_turns[1]}"))
    expect(page.locator("[data-testid=tree-node]").first).to_be_visible()


def test_compare_draws_charts_per_variant_and_two_traces_side_by_side(tab: Tab, facts: StoreFacts) -> None:
    page = tab.open("/compare?by=variant")
    expect(page.locator("[data-testid=compare-row][data-group=A]")).to_be_visible()
    expect(page.locator("[data-testid=compare-row][data-group=B]")).to_be_visible()
    assert wait_chart_drawn(page) > 200
    page.locator("form[data-testid=compare-form] select[name=by]").select_option("model")
    submit = page.locator("form[data-testid=compare-form] [type=submit]")
    if submit.count():
        submit.first.click()
    expect(page).to_have_url(re.compile(r"[?&]by=model"))
    expect(page.locator("[data-testid=compare-row][data-group='gpt-4o-mini']")).to_be_visible()

    a, b = facts.weather_turns[0], facts.weather_turns[1]
    page = tab.open(f"/compare/traces?a={a}&b={b}")
    expect(page.locator("[data-testid=compare-a] [data-testid=side-output]")).to_contain_text("Bergen has light rain")
    expect(page.locator("[data-testid=compare-b] [data-testid=side-output]")).to_contain_text("Oslo has light rain")
    expect(page.locator("[data-testid=compare-a] [data-testid=side-node]")).to_have_count(8)


def test_over_time_draws_a_chart(tab: Tab) -> None:
    page = tab.open("/over-time?bucket=hour")
    expect(page.locator("[data-testid=overtime-table]")).to_be_visible()
    assert wait_chart_drawn(page) > 200


# ---- safety: XSS, offline ---------------------------------------------------------------------------------

def test_xss_payloads_render_as_text_everywhere(tab: Tab, facts: StoreFacts) -> None:
    page = tab.open("/traces")
    row = page.locator(f"tr[data-trace-id='{facts.xss}']")
    expect(row.locator("[data-testid=trace-name]")).to_have_text(XSS_IMG)
    expect(row.locator("[data-testid=trace-user]")).to_have_text(XSS_SCRIPT)
    page = open_trace(tab, facts.xss)
    expect(page.locator("[data-testid=trace-header]")).to_contain_text(XSS_IMG)
    for node in page.locator("[data-testid=tree-node]").all():
        node.click()
        expect(page.locator("[data-testid=span-detail]")).to_be_visible()
    page.locator("[data-testid=tree-node][data-kind=llm]").first.click()
    detail = page.locator("[data-testid=span-detail]")
    expect(detail.locator("[data-testid=message][data-role=user]")).to_contain_text(f"{XSS_SCRIPT} {XSS_IMG}")
    expect(detail.locator("[data-testid=message][data-role=system]")).to_contain_text(XSS_IMG)
    for path in ("/sessions", "/sessions/sess-xss", "/compare?by=tag", "/compare?by=user", "/traces?q=alert"):
        page = tab.open(path)
        expect(page.locator("main[data-testid=main]")).to_be_visible()
        assert page.locator("img[src=x]").count() == 0, path
        assert page.evaluate(EXECUTABLE_ALERTS) == 0, path
    assert tab.dialogs == []


def test_offline_guard_catches_a_request_that_leaves_loopback(tab: Tab) -> None:
    """The guard the other tests rely on: a request that leaves loopback is caught and aborted."""
    from playwright.sync_api import Error as PlaywrightError

    tab.open("/traces")
    with pytest.raises(PlaywrightError):
        tab.page.goto("http://example.invalid/x")
    assert tab.guard.attempted == ["http://example.invalid/x"]
    tab.guard.attempted.clear()  # expected here: the fixture's check would fail on it


# ---- layout -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_layout_holds_on_desktop_and_phone(browser: Any, server: str, facts: StoreFacts, viewport: str) -> None:
    width, height = VIEWPORTS[viewport]
    pages = {
        "/traces": ["form[data-testid=filters]", "table[data-testid=trace-table]", "a[data-testid=nav-traces]"],
        f"/traces/{facts.weather_turns[0]}": ["[data-testid=trace-header]", "[data-testid=span-tree]",
                                              "[data-testid=waterfall]", "[data-testid=bar]"],
        f"/sessions/{facts.weather_session}": ["[data-testid=session-totals]", "[data-testid=turn]"],
        "/compare?by=variant": ["[data-testid=compare-table]", "canvas[data-testid=chart]"],
        "/over-time?bucket=hour": ["canvas[data-testid=chart]"],
    }
    with browser_page(browser, width, height) as (page, _guard, dialogs):
        for path, visible in pages.items():
            page.goto(server + path)
            for selector in visible:
                expect(page.locator(selector).first).to_be_visible()
            no_horizontal_overflow(page)
        assert dialogs == []


# ---- the server as `spanmux ui` runs it ---------------------------------------------------------------------

def test_served_socket_says_tcp_so_responses_are_not_held_by_nagle(
    monkeypatch: pytest.MonkeyPatch, facts: StoreFacts
) -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; a socket made with proto 0
    made every response of `spanmux ui` wait ~40 ms (Nagle and the client's delayed ACK; found by
    benchmarks/ui.py: /healthz 44 ms from `spanmux ui`, 3 ms from uvicorn's own socket)."""
    import socket

    import uvicorn

    from spanmux.ui.app import serve

    handed: list[socket.socket] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: handed.extend(sockets or []))
    serve(facts.path, port=0, warn=False)
    (sock,) = handed
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


# ---- screenshots from the demo store ------------------------------------------------------------------------

def demo_examples() -> list[Path]:
    """The example scripts `make demo` runs, read from its recipe in the Makefile (one list to keep)."""
    recipe = re.search(r"^demo:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe is not None, "no demo target in the Makefile"
    names = re.findall(r"examples/[\w-]+\.py", recipe.group(1))
    return [ROOT / name for name in dict.fromkeys(names)]


def demo_store(folder: Path) -> Path:
    """What `make demo` writes: its examples run in ``folder`` (they write ./.spanmux/spanmux.db)."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "DO_NOT_TRACK": "1", "DSPY_CACHEDIR": str(folder / "dspy-cache")}
    env.pop("SPANMUX_CONFIG", None)
    examples = demo_examples()
    assert ROOT / "examples" / "quickstart.py" in examples
    for script in examples:
        if script.exists():
            done = subprocess.run([sys.executable, str(script)], cwd=folder, env=env, capture_output=True,
                                  text=True, timeout=300, check=False)
            assert done.returncode == 0, f"{script.name} failed:\n{done.stderr[-3000:]}"
    return folder / ".spanmux" / "spanmux.db"


def test_screenshots_of_the_demo_store(browser: Any, tmp_path: Path) -> None:
    """Takes docs/screenshots/{traces,trace,session,compare}.png from the demo's store at 1280x800;
    they are written into the repository only with SPANMUX_SCREENSHOTS=1 (CI leaves the tree clean)."""
    store = demo_store(tmp_path)
    with LocalStore(store) as db:
        traces = db.list_traces(limit=100)
    assert traces, f"the demo wrote no trace: {sorted(str(p) for p in tmp_path.rglob('*.db'))}"
    richest = max(traces, key=lambda t: (t.session_id == "quickstart", t.llm_calls))  # the LangGraph agent
    sessions = [t.session_id for t in traces if t.session_id]
    session = max(sessions, key=sessions.count)  # the longest conversation
    by = "variant" if any("variant" in t.metadata for t in traces) else "name"
    shots = {
        "traces": ("/traces", "tr[data-testid=trace-row]"),
        "trace": (f"/traces/{richest.trace_id}", "[data-testid=bar]"),
        "session": (f"/sessions/{session}", "[data-testid=turn]"),
        "compare": (f"/compare?by={by}", "canvas[data-testid=chart]"),
    }
    out = tmp_path / "shots"
    out.mkdir()
    relative = os.path.relpath(store)  # the page shows the store's path as `make demo` users see it
    with UiServer(make_app(relative)) as server, browser_page(browser, 1280, 800) as (page, _guard, dialogs):
        for name, (path, ready) in shots.items():
            page.goto(server.url + path)
            expect(page.locator(ready).first).to_be_visible()
            if name == "trace":  # show a model call's messages beside the waterfall
                page.locator("[data-testid=tree-node][data-kind=llm]").first.click()
                expect(page.locator("[data-testid=span-detail] [data-testid=message]").first).to_be_visible()
            if name == "compare":
                wait_chart_drawn(page)
                page.wait_for_timeout(800)  # let Chart.js finish its entry animation: a picture, not a check
            page.screenshot(path=str(out / f"{name}.png"))
        assert dialogs == []
    for name in shots:
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1280, 800)
    if os.environ.get("SPANMUX_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for name in shots:
            shutil.copyfile(out / f"{name}.png", SCREENSHOTS / f"{name}.png")
