"""The web UI's experiment pages (Starlette's TestClient) over a store written by real
``spanmux.evaluate`` runs: a task calling a fake LangChain chat model (traced, so items have tokens and
cost), two runs of one experiment where exactly the known items changed, an item whose input and error
are XSS payloads, and a store written before the experiment tables existed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html import escape, unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("starlette")
pytest.importorskip("langchain_core")

from conftest import store_without_experiment_tables  # tests/ is on sys.path (rootdir conftest)
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage
from starlette.testclient import TestClient

import spanmux
from spanmux.experiments import ExperimentResult
from spanmux.integrations.langchain import CallbackHandler
from spanmux.store import LocalStore
from spanmux.testing import reset
from spanmux.ui import views
from spanmux.ui.app import create_app

BASE = "http://127.0.0.1"
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"
DATA = [*({"input": {"question": f"{n}+0?"}, "expected": str(n), "id": f"q{n}"} for n in range(6)),
        {"input": {"question": XSS_SCRIPT}, "expected": XSS_IMG, "id": "xss"}]


def answer_task(wrong: set[str]) -> Any:
    """A task that asks a fake chat model (traced through LangChain's callback: tokens and cost) and
    answers the expected value, except for the items in ``wrong``; the XSS item always raises."""

    def task(item: dict[str, Any]) -> str:
        if item["id"] == "xss":
            raise ValueError(f"cannot answer {XSS_IMG}")
        text = "nope" if item["id"] in wrong else item["expected"]
        model = FakeMessagesListChatModel(responses=[AIMessage(
            text, usage_metadata={"input_tokens": 10, "output_tokens": 2, "total_tokens": 12},
            response_metadata={"model_name": "gpt-4o-mini"})])
        return str(model.invoke(item["input"]["question"], config={"callbacks": [CallbackHandler()]}).content)

    return task


def exact_match(output: str, expected: str) -> bool:
    return output.strip() == expected


def closeness(output: str, expected: str) -> float:
    return 1.0 if output.strip() == expected else 0.25


class Runs:
    def __init__(self, path: Path, a: ExperimentResult, b: ExperimentResult) -> None:
        self.path, self.a, self.b = path, a, b


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    folder = tmp_path_factory.mktemp("ui-experiments")
    path = folder / "spanmux.db"
    spanmux.configure({"backends": ["local"], "local": {"path": str(path)}, "spool_dir": str(folder / "spool"),
                       "flush_interval": 0.05})
    try:  # A gets q3 and q4 wrong, B gets q1 wrong: q3 and q4 better, q1 worse, the rest the same
        a = spanmux.evaluate(data=DATA, task=answer_task({"q3", "q4"}), scorers=[exact_match, closeness], name="tutor",
                             dataset="math-v1", metadata={"variant": "A"})
        b = spanmux.evaluate(data=DATA, task=answer_task({"q1"}), scorers=[exact_match, closeness], name="tutor",
                             dataset="math-v1", metadata={"variant": "B"})
        assert spanmux.flush(timeout=30)
    finally:
        reset(timeout=5)
    return Runs(path, a, b)


@pytest.fixture
def client(runs: Runs) -> Iterator[TestClient]:
    with TestClient(create_app(str(runs.path)), base_url=BASE) as c:
        yield c


def rows(html: str, testid: str, key: str) -> list[str]:
    return re.findall(rf'data-testid="{testid}" data-{key}="([^"]+)"', html)


def test_list_shows_runs_newest_first_with_their_figures(client: TestClient, runs: Runs) -> None:
    response = client.get("/experiments")
    assert response.status_code == 200, response.text
    html = response.text
    assert 'data-testid="nav-experiments" href="/experiments" aria-current="page"' in html
    assert rows(html, "experiment-row", "run-id") == [runs.b.run_id, runs.a.run_id]
    summary = runs.a.summary()
    assert (summary.items, summary.errors) == (7, 1)
    row_a = html[html.index(f'data-run-id="{runs.a.run_id}"'):]
    row_a = row_a[: row_a.index("</tr>")]
    assert f'href="/experiments/{runs.a.run_id}"' in row_a and "math-v1" in row_a and "variant=A" in row_a
    assert f"exact_match: {summary.scorers['exact_match'].mean:.3f}" in row_a
    assert f"closeness: {summary.scorers['closeness'].mean:.3f}" in row_a
    assert f'<td class="num">{summary.total_tokens}</td>' in row_a and summary.total_tokens == 6 * 12
    # the compare form: B is the newest run, A the one before (GET: the choice lands in the URL)
    assert 'action="/experiments/compare"' in html
    assert f'name="a" value="{runs.a.run_id}" aria-label="run A" checked' in html
    assert f'name="b" value="{runs.b.run_id}" aria-label="run B" checked' in html
    named = client.get("/experiments?name=nothing").text
    assert 'data-testid="no-experiments"' in named and not rows(named, "experiment-row", "run-id")


def test_run_page_shows_summary_and_items_with_trace_links(client: TestClient, runs: Runs) -> None:
    response = client.get(f"/experiments/{runs.a.run_id[:10]}")  # a prefix is enough, as in the CLI
    assert response.status_code == 200, response.text
    html = response.text
    assert 'data-testid="experiment-summary"' in html and runs.a.run_id in html
    assert rows(html, "item-row", "item-id") == [i.item_id for i in runs.a.items]
    for item in runs.a.items:
        row = html[html.index(f'data-item-id="{item.item_id}"'):]
        row = row[: row.index("</tr>")]
        assert f'href="/traces/{item.trace_id}"' in row
        if item.item_id == "q3":  # a wrong answer in run A
            assert '<td data-testid="item-output"><div class="cell-text">nope</div>' in row
            assert '<td data-testid="item-expected"><div class="cell-text">3</div>' in row
            assert "exact_match ▼ down" in row and "closeness 0.25" in row
            assert '{"question": "3+0?"}' in unescape(row) and "10 → 2" in row
        trace_page = client.get(f"/traces/{item.trace_id}")  # each item's trace page exists and links back
        assert trace_page.status_code == 200
        assert f'data-testid="experiment-run-link" href="/experiments/{runs.a.run_id}"' in trace_page.text
    by_name = client.get("/experiments/tutor").text  # a name is its newest run, which links to the one before
    assert runs.b.run_id in by_name
    assert f'href="/experiments/compare?a={runs.a.run_id}&amp;b={runs.b.run_id}"' in by_name


def test_xss_in_an_item_input_output_and_error_shows_as_text(client: TestClient, runs: Runs) -> None:
    pages = [client.get(f"/experiments/{runs.a.run_id}").text,
             client.get(f"/experiments/compare?a={runs.a.run_id}&b={runs.b.run_id}").text]
    for html in pages:
        assert XSS_SCRIPT not in html and XSS_IMG not in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html  # the error message, escaped
    run_page = pages[0]
    row = run_page[run_page.index('data-item-id="xss"'):]
    row = row[: row.index("</tr>")]
    assert row.startswith('data-item-id="xss" data-status="error"')
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in row and json.dumps({"question": XSS_SCRIPT}) in unescape(row)
    assert f"ValueError: cannot answer {escape(XSS_IMG, quote=False)}" in row
    # no script in any experiment page but the vendored files and the chart's JSON data (never executed)
    for html in pages:
        for tag in re.findall(r"<script[^>]*>", html):
            assert 'src="/static/' in tag or tag == '<script type="application/json" id="chart-data">'


def test_compare_page_shows_exactly_what_compare_experiments_computes(client: TestClient, runs: Runs) -> None:
    with LocalStore(runs.path) as db:
        comparison = db.compare_experiments(runs.a.run_id, runs.b.run_id)
    assert comparison.counts() == {"better": 2, "worse": 1, "same": 4, "mixed": 0}
    assert [round(d.delta or 0, 3) for d in comparison.scorers] == [0.167, 0.125]
    response = client.get(f"/experiments/compare?a={runs.a.run_id}&b={runs.b.run_id}")
    assert response.status_code == 200, response.text
    html = response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]
    for verdict, n in comparison.counts().items():
        assert re.search(rf'data-testid="count-{verdict}">{n} ', html), verdict
    assert rows(html, "delta-row", "scorer") == [d.name for d in comparison.scorers] == ["exact_match", "closeness"]
    for d in comparison.scorers:
        row = html[html.index(f'data-testid="delta-row" data-scorer="{d.name}"'):]
        row = row[: row.index("</tr>")]
        assert f"{d.mean_a:.3f}" in row and f"{d.mean_b:.3f}" in row and f"{d.delta:+.3f}" in row
        assert re.findall(r'<td class="num">(\d+)</td>', row) == [str(d.better), str(d.worse), str(d.same)]
    # changed items first (better, worse), then the same ones, each with both outputs and both traces
    verdicts = dict(zip(rows(html, "change-row", "item-id"), re.findall(r'data-verdict="(\w+)"', html), strict=True))
    assert verdicts == {c.item_id: c.verdict for c in comparison.items}
    assert rows(html, "change-row", "item-id")[:3] == ["q3", "q4", "q1"]
    change = next(c for c in comparison.items if c.item_id == "q3")
    row = html[html.index('data-testid="change-row" data-item-id="q3"'):]
    row = row[: row.index("</tr>")]
    assert '<td data-testid="item-output-a"><div class="cell-text">nope</div>' in row  # A's wrong answer
    assert '<td data-testid="item-output-b"><div class="cell-text">3</div>' in row  # beside B's right one
    assert f'href="/traces/{change.trace_a}"' in row and f'href="/traces/{change.trace_b}"' in row
    assert f'href="/compare/traces?a={change.trace_a}&amp;b={change.trace_b}"' in row
    assert client.get(f"/compare/traces?a={change.trace_a}&b={change.trace_b}").status_code == 200
    # the chart draws the comparison's own figures, from a JSON data island
    island = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html, re.S)
    assert island is not None and json.loads(island.group(1)) == views.experiment_chart(comparison)
    assert json.loads(island.group(1))["delta"] == [d.delta for d in comparison.scorers]
    assert 'data-testid="chart" data-chart="experiment-means"' in html
    assert 'data-testid="chart" data-chart="experiment-deltas"' in html
    # a name and a prefix resolve as in the CLI: "tutor" is the newest run (B)
    again = client.get(f"/experiments/compare?a={runs.a.run_id[:8]}&b=tutor").text
    assert rows(again, "change-row", "item-id") == rows(html, "change-row", "item-id")


def test_compare_without_two_runs_offers_the_choice_and_unknown_runs_are_404(client: TestClient,
                                                                              runs: Runs) -> None:
    choose = client.get(f"/experiments/compare?a={runs.a.run_id}")
    assert choose.status_code == 200 and 'data-testid="experiment-compare-form"' in choose.text
    assert f'<option value="{runs.a.run_id}" selected>' in choose.text and 'data-testid="change-row"' not in choose.text
    for url in ("/experiments/0000deadbeef", f"/experiments/compare?a={runs.a.run_id}&b=no-such-run"):
        missing = client.get(url)
        assert missing.status_code == 404 and 'data-testid="not-found"' in missing.text, url
    assert "no-such-run" in client.get(f"/experiments/compare?a={runs.a.run_id}&b=no-such-run").text


def test_labels_items_in_one_run_only_and_an_old_run_in_the_choices(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A label scorer that changes is "mixed", items of one run only are named, and a run older than the
    select's newest 200 is still the selected one."""
    path = tmp_path / "spanmux.db"
    spanmux.configure({"backends": ["local"], "local": {"path": str(path)}, "spool_dir": str(tmp_path / "spool")})

    def mood(output: str) -> str:
        return "happy" if output.endswith("!") else "calm"

    a = spanmux.evaluate(data=[{"input": "x", "id": "i1"}, {"input": "y", "id": "i2"}], task=lambda input: input,
                         scorers=[mood], name="moods")
    b = spanmux.evaluate(data=[{"input": "x", "id": "i1"}, {"input": "z", "id": "i3"}],
                         task=lambda input: input + "!", scorers=[mood], name="moods")
    assert spanmux.flush(timeout=30)
    with LocalStore(path) as db:
        comparison = db.compare_experiments(a.run_id, b.run_id)
    assert (comparison.only_a, comparison.only_b, comparison.counts()["mixed"]) == (["i2"], ["i3"], 1)
    monkeypatch.setattr(LocalStore, "list_experiments", lambda self, *args, **kw: [])  # none among the newest
    with TestClient(create_app(str(path)), base_url=BASE) as c:
        html = c.get(f"/experiments/compare?a={a.run_id}&b={b.run_id}").text
    assert rows(html, "change-row", "item-id") == ["i1"] and 'data-verdict="mixed"' in html
    assert "only in A: i2" in html and "only in B: i3" in html
    assert re.search(r'data-testid="delta-row" data-scorer="mood">.*?<td[^>]*data-testid="delta">-</td>', html, re.S)
    assert f'<option value="{a.run_id}" selected>' in html and f'<option value="{b.run_id}" selected>' in html


def test_big_runs_page_their_items(client: TestClient, runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("spanmux.ui.app.EXPERIMENT_ITEMS", 3)
    first = client.get(f"/experiments/{runs.a.run_id}").text
    assert rows(first, "item-row", "item-id") == ["q0", "q1", "q2"] and "Items 1–3 of 7" in first
    link = re.search(r'data-testid="next-page" href="([^"]+)"', first)
    assert link is not None and link.group(1) == f"/experiments/{runs.a.run_id}?offset=3"
    last = client.get(f"/experiments/{runs.a.run_id}?offset=6").text
    assert rows(last, "item-row", "item-id") == ["xss"] and 'data-testid="next-page"' not in last
    assert rows(client.get(f"/experiments/{runs.a.run_id}?offset=x").text, "item-row", "item-id")[0] == "q0"
    compare = client.get(f"/experiments/compare?a={runs.a.run_id}&b={runs.b.run_id}").text
    assert len(rows(compare, "change-row", "item-id")) == 3 + 3  # three changed, the first three of four same
    assert 'data-testid="items-bounded"' not in compare and "… and 1 more." in compare
    monkeypatch.setattr("spanmux.ui.app.EXPERIMENT_ITEMS", 1)
    bounded = client.get(f"/experiments/compare?a={runs.a.run_id}&b={runs.b.run_id}").text
    assert rows(bounded, "change-row", "item-id") == ["q3", "q0"]
    assert "The first 1 of 3 changed items" in bounded and "--json</code> has them all" in bounded


def test_store_without_experiment_tables_says_no_experiments_yet(tmp_path: Path) -> None:
    path = store_without_experiment_tables(tmp_path / "old.db")
    with TestClient(create_app(str(path)), base_url=BASE) as c:
        for url in ("/experiments", "/experiments/compare", "/experiments/compare?a=&b="):
            page = c.get(url)
            assert page.status_code == 200 and 'data-testid="no-experiments"' in page.text, url
            assert "spanmux.evaluate" in page.text and 'data-testid="store-error"' not in page.text
        assert c.get("/experiments/anything").status_code == 404
        assert c.get("/experiments/compare?a=x&b=y").status_code == 404


def test_missing_store_is_a_page_not_a_traceback(tmp_path: Path) -> None:
    with TestClient(create_app(str(tmp_path / "absent.db")), base_url=BASE) as c:
        for url in ("/experiments", "/experiments/abc", "/experiments/compare?a=x&b=y"):
            page = c.get(url)
            assert page.status_code == 200 and 'data-testid="store-error"' in page.text, url


@pytest.mark.slow
@pytest.mark.parametrize("viewport", [(1280, 800), (390, 844)], ids=["desktop", "phone"])
def test_browser_chooses_two_runs_and_draws_the_delta_charts(runs: Runs, viewport: tuple[int, int]) -> None:
    """In Chromium: the list's form puts the two runs in the URL, the compare page draws both charts
    from its data island under the strict CSP, no payload runs, and the page fits the viewport."""
    pytest.importorskip("playwright")
    from browser import UiServer, browser_page, chromium_path, launch_chromium
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Chromium not found (/usr/bin/chromium or $SPANMUX_CHROMIUM): install it with "
                    "`apt-get install chromium` as .ci/run does; never `playwright install`")
    errors: list[str] = []
    with sync_playwright() as playwright, UiServer(create_app(str(runs.path))) as server:
        browser = launch_chromium(playwright, chromium)
        try:
            with browser_page(browser, *viewport) as (page, _guard, dialogs):
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(f"{server.url}/experiments")
                page.click("[data-testid=compare-runs]")
                page.wait_for_url(re.compile(r"/experiments/compare\?"))
                assert parse_qs(urlsplit(page.url).query) == {"a": [runs.a.run_id], "b": [runs.b.run_id]}
                for kind in ("experiment-means", "experiment-deltas"):
                    expect(page.locator(f"canvas[data-chart={kind}]")).to_have_attribute("data-drawn", "1")
                expect(page.locator("[data-testid=changed-items] [data-testid=change-row]")).to_have_count(3)
                assert page.evaluate("document.documentElement.scrollWidth") <= viewport[0]
                page.click("[data-testid=change-row][data-item-id=q3] [data-testid=trace-b-link]")
                page.wait_for_url(re.compile(r"/traces/[0-9a-f]+$"))
                page.go_back()
                expect(page.locator("[data-testid=count-better]")).to_have_text("2 better")
                page.goto(f"{server.url}/experiments/{runs.a.run_id}")
                xss_input = page.locator("[data-testid=item-row][data-item-id=xss] [data-testid=item-input]")
                expect(xss_input).to_contain_text(XSS_SCRIPT)
                assert page.evaluate("document.documentElement.scrollWidth") <= viewport[0]
                assert dialogs == []
        finally:
            browser.close()
    assert errors == []


def test_benchmark_script_reports_every_page() -> None:
    """benchmarks/ui_experiments.py in a tiny form: every page answers and is reported (no timing asserted)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "ui_experiments.py"
    done = subprocess.run([sys.executable, str(script), "--runs", "2", "--items", "3", "--requests", "1", "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["runs"], result["items_per_run"]) == (2, 3)
    for page in ("list_first_visit", "list", "run", "compare"):
        assert result[page]["median_ms"] > 0 and result[page]["kb"] >= 1
