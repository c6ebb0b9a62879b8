"""The web UI over the built-in store: a Starlette app (``create_app``) and ``serve`` (uvicorn).

Every page reads through ``spanmux.store.LocalStore`` (read-only, one connection per request, so it
works beside a live writer and sees what was just written); no SQL here. Pages are Jinja2 templates
with autoescape on; the trace tree is sent as compact JSON rows and drawn by ``static/trace.js``
(only the visible rows), so a 10,000-span trace opens fast. Scores are the only state change: a
same-origin check plus a per-process token protect them (``security.allowed``), and a strict
Content-Security-Policy forbids inline script, so even an escaping mistake cannot run code.
"""

from __future__ import annotations

import logging
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
import msgspec
from markupsafe import escape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from spanmux.attributes import EXPERIMENT_RUN_ID
from spanmux.comparison import GROUPINGS, NONE_GROUP, aggregate, check_grouping
from spanmux.errors import ConfigurationError
from spanmux.store import LocalStore, StoreReadError, StoreSchemaError, TraceFilter
from spanmux.ui import render, views
from spanmux.ui.feedback import FeedbackWriter
from spanmux.ui.query import Query, link, parse_cursor, parse_filters
from spanmux.ui.security import LOOPBACK_HOSTS, LoopbackHosts, SecurityHeaders, allowed

log = logging.getLogger("spanmux.ui")

HERE = Path(__file__).parent
PAGE_SIZE = 50
COMPARE_TRACES = 5_000
"""The compare page groups the newest this many matching traces (and says so when there are more):
about 0.3 s of reading; ``spanmux stats`` reads them all."""
SUGGESTIONS_SECONDS = 30.0
SEARCH_BUDGET = 15_000
"""Spans a full-text search reads per page before it stops and offers to search further back: 50,000
spans took ~600 ms on the 1M-span benchmark store when nothing recent matched; 15,000 keeps one page
under the 200 ms a filtered list is allowed."""
EXPERIMENT_ITEMS = 500
"""Items an experiment run's page (and each list of the compare page) shows at once: a page stays small
for a run of many thousand items; the run page pages on with ``offset``."""


class StoreProblem(Exception):
    """The store cannot be read: shown as a page, never as a traceback."""


class UI:
    """The routes' shared state: the store path, templates, the CSRF token, the feedback writer."""

    def __init__(self, store_path: str, config: str | None, poll_seconds: float) -> None:
        self.store_path = store_path
        self.config = config
        self.poll_seconds = poll_seconds
        self.token = secrets.token_hex(16)
        self.feedback = FeedbackWriter(store_path, config)
        self._lock = threading.Lock()
        self._suggested: tuple[float, dict[str, list[str]]] | None = None
        self.run_summaries: dict[tuple[str, int, str], Any] = {}
        """``summarize(run)`` of the runs listed, by (run id, end, status): a stored run does not change, and
        the list would otherwise decode every item of 50 runs at each visit (~0.5 s at 1,000 items a run)."""
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      trim_blocks=True, lstrip_blocks=True)
        self.env.globals.update(
            fmt_time=render.fmt_time, fmt_ms=render.fmt_ms, fmt_cost=render.fmt_cost,
            fmt_score=render.fmt_score, link=link, call_arguments=render.call_arguments,
            call_name=render.call_name, to_json=render.to_json, brief=render.brief, token=self.token,
            poll_seconds=poll_seconds, store_path=store_path, groupings=GROUPINGS,
            experiment_run_key=EXPERIMENT_RUN_ID,
        )

    @contextmanager
    def store(self) -> Iterator[LocalStore]:
        try:
            db = LocalStore(self.store_path)
        except FileNotFoundError:
            raise StoreProblem(f"There is no spanmux store at {self.store_path} yet. Run a program traced by "
                               "spanmux (its local backend writes this file), or pass --store PATH.") from None
        except (StoreSchemaError, StoreReadError) as exc:
            raise StoreProblem(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise StoreProblem(f"cannot read the spanmux store at {self.store_path}: {exc}") from None
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            raise StoreProblem(f"cannot read the spanmux store at {self.store_path}: {exc}") from None
        finally:
            db.close()

    def page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        if "form" in context and "suggestions" not in context:  # a page with the filter form
            context["suggestions"] = self.suggestions()
        return HTMLResponse(self.env.get_template(template).render(**context), status_code=status)

    def suggestions(self) -> dict[str, list[str]]:
        """What the filter fields suggest (names, users, sessions, tags, models of the newest traces),
        read at most every ``SUGGESTIONS_SECONDS``; nothing when the store cannot be read."""
        now = time.monotonic()
        with self._lock:
            if self._suggested is not None and now - self._suggested[0] < SUGGESTIONS_SECONDS:
                return self._suggested[1]
        try:
            with self.store() as db:
                found = db.recent_values(traces=1_000)
        except StoreProblem:
            return {}
        with self._lock:
            self._suggested = (now, found)
        return found


def create_app(store_path: str, config: str | None = None, *, poll_seconds: float = 2.0,
               allowed_hosts: list[str] | None = None) -> Starlette:
    """The UI app over the store at ``store_path``. ``config``: scores go through that
    configuration's backends. ``allowed_hosts``: the Host headers served (default loopback names;
    a DNS-rebinding page on another name is refused)."""
    ui = UI(store_path, config, poll_seconds)

    def guarded(handler: Callable[..., Response]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                return await run_in_threadpool(handler, request)
            except StoreProblem as exc:
                if request.headers.get("hx-request"):
                    return HTMLResponse(f'<p class="problem" data-testid="store-error">{escape(str(exc))}</p>')
                return ui.page("error.html", message=str(exc), nav="")
        return endpoint

    def not_found(what: str) -> HTMLResponse:
        return ui.page("not_found.html", 404, what=what, nav="")

    # ---- traces
    def traces(request: Request) -> Response:
        query = Query(request.query_params)
        filters = parse_filters(query)
        problems = list(filters.problems)
        cursor = parse_cursor(query, problems)
        limit = _limit(query)
        budget_hit = False
        with ui.store() as db:
            newest = db.newest_seq()  # before the page: a trace landing meanwhile then arrives as a live row
            if filters.text:
                found = db.search_traces(filters.text, filters.where, limit=limit, after=cursor,
                                         budget_spans=SEARCH_BUDGET)
                rows, next_cursor, budget_hit = found.traces, found.next, found.budget_hit
            else:
                page = db.page_traces(filters.where, limit=limit, after=cursor)
                rows, next_cursor = page.traces, page.next
            scores = db.scores_of([t.trace_id for t in rows])
        return ui.page(
            "traces.html", nav="traces", rows=rows, scores={k: views.summary_scores(v) for k, v in scores.items()},
            form=filters.form, problems=problems, cursor=cursor, budget_hit=budget_hit,
            next_link=link("/traces", filters.form, cursor=next_cursor, limit=query.text("limit"))
            if next_cursor else None,
            live_url=link("/traces/new", filters.form) if cursor is None and not filters.text else None,
            newest=newest,
        )

    def traces_new(request: Request) -> Response:
        query = Query(request.query_params)
        filters = parse_filters(query)
        try:
            after = int(query.text("after_seq") or "0")
        except ValueError:
            return PlainTextResponse("after_seq: not a number", 400)
        with ui.store() as db:
            rows, newest = db.traces_after_seq(filters.where, after)
            scores = db.scores_of([t.trace_id for t in rows])
        response = ui.page("trace_rows.html", rows=rows, scores={k: views.summary_scores(v) for k, v in scores.items()},
                           new=True)
        response.headers["X-Spanmux-Seq"] = str(newest)
        return response

    # ---- one trace
    def trace(request: Request) -> Response:
        with ui.store() as db:
            trace_id = views.resolve(db, request.path_params["trace_id"])
            summary = db.get_trace_summary(trace_id) if trace_id else None
            if trace_id is None or summary is None:
                return not_found("trace")
            wanted = Query(request.query_params).text("span")
            span = db.get_span(trace_id, wanted) if wanted else None
            if span is None and summary.root_span_id:
                span = db.get_span(trace_id, summary.root_span_id)
            scores = db.get_scores(trace_id)
            turn = views.turn_of(db, summary)
        selected = wanted if span is not None and span.span_id == wanted else None
        return ui.page("trace.html", nav="traces", t=summary, scores=scores, selected=selected, turn=turn,
                       detail=views.span_view(span) if span else None)

    def tree_json(request: Request) -> Response:
        with ui.store() as db:
            trace_id = views.resolve(db, request.path_params["trace_id"])
            summary = db.get_trace_summary(trace_id) if trace_id else None
            if trace_id is None or summary is None:
                return JSONResponse({"error": "no such trace"}, 404)
            rows = db.span_rows(trace_id)
        return Response(msgspec.json.encode(views.tree_rows(summary, rows)), media_type="application/json")

    def span_detail(request: Request) -> Response:
        trace_id, span_id = request.path_params["trace_id"], request.path_params["span_id"]
        with ui.store() as db:
            span = db.get_span(trace_id, span_id)
        if span is None:
            return HTMLResponse('<p data-testid="not-found">no such span</p>', 404)
        return ui.page("span_detail.html", **views.span_view(span), t_id=trace_id)

    def span_field(request: Request) -> Response:
        trace_id, span_id, field = (request.path_params[k] for k in ("trace_id", "span_id", "field"))
        if field not in ("input", "output"):
            return PlainTextResponse("field: input or output", 400)
        try:
            offset = max(0, int(Query(request.query_params).text("offset") or "0"))
        except ValueError:
            return PlainTextResponse("offset: not a number", 400)
        with ui.store() as db:
            span = db.get_span(trace_id, span_id)
        if span is None:
            return HTMLResponse('<p data-testid="not-found">no such span</p>', 404)
        text, more_at, total = render.part(getattr(span, field), offset)
        return ui.page("more.html", text=text, more_at=more_at, total=total, field=field, t_id=trace_id,
                       s_id=span_id)

    # ---- feedback
    async def post_score(request: Request) -> Response:
        if not allowed(request, ui.token, await request.body()):
            return PlainTextResponse("refused: cross-site request or missing token", 403)
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        return await run_in_threadpool(score_sync, request.path_params["trace_id"], form)

    def score_sync(trace_id: str, form: dict[str, str]) -> Response:
        kind = form.get("kind", "value")
        name = (form.get("name") or "user_feedback").strip()[:200]
        comment = (form.get("comment") or "").strip()[:5000] or None
        span_id = (form.get("span_id") or "").strip() or None
        value: float | bool | str
        problem = None
        if kind in ("up", "down"):
            value, data_type = kind == "up", "boolean"
        else:
            raw = (form.get("value") or "").strip()[:200]
            try:
                value, data_type = float(raw), "numeric"
            except ValueError:
                value, data_type = raw, "categorical"
            if not raw:
                problem = "give a number or a label (or use the thumbs)"
            elif isinstance(value, float) and not math.isfinite(value):
                problem = f"{raw!r} is not a usable number"
        try:
            with ui.store() as db:
                if db.get_trace_summary(trace_id) is None:
                    return not_found("trace")
                if span_id is not None and db.get_span(trace_id, span_id) is None:
                    problem = f"no span {span_id} in this trace"
            delivered = False
            if problem is None:
                delivered = ui.feedback.send(trace_id, name, value, comment=comment, span_id=span_id,
                                             data_type=data_type)  # type: ignore[arg-type]
            with ui.store() as db:
                scores = db.get_scores(trace_id)
        except ConfigurationError as exc:
            problem, delivered, scores = f"the configuration cannot be used: {exc}", False, []
        except StoreProblem as exc:
            return HTMLResponse(f'<p class="problem" data-testid="store-error">{escape(str(exc))}</p>')
        return ui.page("scores.html", scores=scores, problem=problem, sent=problem is None, delivered=delivered)

    # ---- sessions
    def sessions(request: Request) -> Response:
        query = Query(request.query_params)
        filters = parse_filters(query)
        problems = list(filters.problems)
        before: int | None = None
        if (token := query.text("cursor")) is not None:
            try:
                before = int(token)
            except ValueError:
                problems.append("cursor: not a page position; showing the first page")
        limit = _limit(query)
        with ui.store() as db:
            rows = db.list_sessions(filters.where, limit=limit + 1, before_ns=before)
        more = len(rows) > limit
        rows = rows[:limit]
        return ui.page("sessions.html", nav="sessions", rows=rows, form=filters.form, problems=problems,
                       next_link=link("/sessions", filters.form, cursor=rows[-1].last_start_ns) if more else None)

    def session(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        with ui.store() as db:
            summaries = list(db.iter_traces(TraceFilter(session_id=session_id)))[:500]
            if not summaries:
                return not_found("session")
            scores = db.scores_of([t.trace_id for t in summaries])
            turns = []
            for summary in summaries:
                root = db.get_span(summary.trace_id, summary.root_span_id) if summary.root_span_id else None
                turns.append({
                    "t": summary, "scores": scores.get(summary.trace_id, []),
                    "input": render.turn_text(root.input, answer=False) if root else "",
                    "output": render.turn_text(root.output, answer=True) if root else "",
                    "error": root.error if root else None,
                })
        costs = [t.cost_total for t in summaries if t.cost_total is not None]
        totals = {
            "turns": len(summaries), "duration_ms": sum(t.duration_ms for t in summaries),
            "tokens": sum(t.total_tokens for t in summaries), "cost": sum(costs) if costs else None,
            "errors": sum(1 for t in summaries if t.error_count),
            "users": sorted({t.user_id for t in summaries if t.user_id}),
            "start_ns": summaries[0].start_ns, "end_ns": max(t.end_ns for t in summaries),
        }
        return ui.page("session.html", nav="sessions", session_id=session_id, turns=turns, totals=totals)

    # ---- compare
    def compare_page(request: Request) -> Response:
        query = Query(request.query_params)
        filters = parse_filters(query)
        problems = list(filters.problems)
        by = query.text("by") or "variant"
        try:
            check_grouping(by)
        except ValueError as exc:
            problems.append(str(exc))
            by = "variant"
        with ui.store() as db:  # the newest COMPARE_TRACES only: a chart must not read a million rows
            matching = db.count_traces(filters.where)
            summaries = db.list_traces(COMPARE_TRACES, where=filters.where)
            scores = db.scores_of([t.trace_id for t in summaries])
        every_score = [s for group in scores.values() for s in group]
        groups = aggregate(summaries, every_score, by)
        if query.text("by") is None and [g.group for g in groups] == [NONE_GROUP]:  # no variants: by model
            by = "model"
            groups = aggregate(summaries, every_score, by)
        keys = sorted({f"metadata.{k}" for t in summaries for k in t.metadata if k != "variant"} | (
            {by} if by.startswith("metadata.") else set()))[:50]  # the keys seen, offered as groupings
        return ui.page("compare.html", nav="compare", groups=groups, by=by, form=filters.form, problems=problems,
                       chart=views.compare_chart(groups), matching=matching, read=len(summaries), metadata_keys=keys)

    def compare_traces(request: Request) -> Response:
        query = Query(request.query_params)
        sides: list[dict[str, Any]] = []
        with ui.store() as db:
            for key in ("a", "b"):
                wanted = query.text(key)
                if wanted is None:
                    sides.append({"key": key, "wanted": "", "t": None})
                    continue
                trace_id = views.resolve(db, wanted)
                summary = db.get_trace_summary(trace_id) if trace_id else None
                if summary is None or trace_id is None:
                    sides.append({"key": key, "wanted": wanted, "t": None, "missing": True})
                    continue
                spans = db.get_trace(trace_id)
                depth = views.depths(spans)
                root = next((s for s in spans if s.span_id == summary.root_span_id), spans[0] if spans else None)
                sides.append({"key": key, "wanted": wanted, "t": summary, "spans": spans[:500], "depth": depth,
                              "more": max(0, len(spans) - 500), "scores": db.get_scores(trace_id),
                              "input": render.turn_text(root.input, answer=False) if root else "",
                              "output": render.show(root.output) if root else None})
        return ui.page("compare_traces.html", nav="compare", sides=sides)

    # ---- over time
    def over_time(request: Request) -> Response:
        query = Query(request.query_params)
        filters = parse_filters(query)
        problems = list(filters.problems)
        bucket = query.text("bucket") or "hour"
        if bucket not in BUCKETS:
            problems.append("bucket: hour or day")
            bucket = "hour"
        where, window = filters.where, None
        with ui.store() as db:
            if not any(query.text(k) for k in ("range", "since", "until")):  # default: the newest part only
                newest = db.newest_start_ns()
                if newest is not None:
                    window = OVER_TIME_WINDOWS[bucket]
                    where = msgspec.structs.replace(where, since_ns=newest - window[0])
            buckets = views.with_empty_buckets(db.time_buckets(BUCKETS[bucket], where), BUCKETS[bucket])
        chart = {
            "labels": [render.fmt_time(b.start_ns)[: 13 if bucket == "hour" else 10] for b in buckets],
            "traces": [b.traces for b in buckets], "errors": [b.errors for b in buckets],
            "input_tokens": [b.input_tokens for b in buckets], "output_tokens": [b.output_tokens for b in buckets],
            "cost": [b.cost_total or 0 for b in buckets],
        }
        return ui.page("over_time.html", nav="over-time", buckets=buckets, bucket=bucket, form=filters.form,
                       problems=problems, chart=chart, window_label=OVER_TIME_WINDOWS[bucket][1],
                       windowed=window is not None)

    # ---- experiments (spanmux.evaluate): the figures are spanmux.experiments' own (summarize, compare_runs)
    def experiments(request: Request) -> Response:
        from spanmux.experiments import summarize

        query = Query(request.query_params)
        rows = []
        with ui.store() as db:
            for run in db.list_experiments(_limit(query), name=query.text("name")):
                key = (run.run_id, run.end_ns, run.status)
                summary = ui.run_summaries.get(key)
                if summary is None and (whole := db.get_experiment(run.run_id)) is not None:
                    summary = summarize(whole)
                    if len(ui.run_summaries) >= 5_000:
                        ui.run_summaries.clear()
                    ui.run_summaries[key] = summary
                if summary is not None:
                    rows.append({"run": run, "summary": summary})
        ids = [row["run"].run_id for row in rows]
        chosen_b = query.text("b") if query.text("b") in ids else (ids[0] if ids else None)
        chosen_a = query.text("a") if query.text("a") in ids else next((i for i in ids if i != chosen_b), None)
        return ui.page("experiments.html", nav="experiments", rows=rows, name=query.text("name") or "",
                       chosen_a=chosen_a, chosen_b=chosen_b)

    def experiment(request: Request) -> Response:
        from spanmux.experiments import summarize

        with ui.store() as db:
            run = db.get_experiment(request.path_params["run"])
            if run is None:
                return not_found("experiment run")
            same_name = [r.run_id for r in db.list_experiments(500, name=run.name)]
        at = same_name.index(run.run_id) if run.run_id in same_name else -1
        previous = same_name[at + 1] if 0 <= at < len(same_name) - 1 else None  # newest first: the run before
        try:
            offset = max(0, int(Query(request.query_params).text("offset") or "0"))
        except ValueError:
            offset = 0
        end = offset + EXPERIMENT_ITEMS
        return ui.page("experiment.html", nav="experiments", run=run, summary=summarize(run), previous=previous,
                       items=run.items[offset:end], offset=offset, next_offset=end if end < len(run.items) else None,
                       items_page=EXPERIMENT_ITEMS)

    def experiments_compare(request: Request) -> Response:
        from spanmux.experiments import compare_runs, summarize

        query = Query(request.query_params)
        wanted = {key: query.text(key) for key in ("a", "b")}
        with ui.store() as db:
            choices = db.list_experiments(200)
            found = {key: db.get_experiment(value) if value else None for key, value in wanted.items()}
        missing = [wanted[k] for k in ("a", "b") if wanted[k] and found[k] is None]
        if missing:
            return not_found(f"experiment run {missing[0]!r}")
        run_a, run_b = found["a"], found["b"]
        selected = {key: run.run_id if run else None for key, run in found.items()}
        listed = {r.run_id for r in choices}
        choices += [r for r in (run_a, run_b) if r is not None and r.run_id not in listed]  # older than the 200
        if run_a is None or run_b is None:  # the two runs are still to be chosen
            return ui.page("experiments_compare.html", nav="experiments", choices=choices, selected=selected,
                           comparison=None)
        comparison = compare_runs(run_a, run_b)  # what LocalStore.compare_experiments returns for these two
        return ui.page("experiments_compare.html", nav="experiments", choices=choices, selected=selected,
                       comparison=comparison, counts=comparison.counts(), run_a=run_a, run_b=run_b,
                       summary_a=summarize(run_a), summary_b=summarize(run_b),
                       items_a={i.item_id: i for i in run_a.items}, items_b={i.item_id: i for i in run_b.items},
                       chart=views.experiment_chart(comparison), most=EXPERIMENT_ITEMS)

    async def index(request: Request) -> Response:
        return RedirectResponse("/traces", 307)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # none: a browser's automatic request is not an error

    routes = [
        Route("/", index), Route("/healthz", healthz), Route("/favicon.ico", favicon),
        Route("/traces", guarded(traces)), Route("/traces/new", guarded(traces_new)),
        Route("/traces/{trace_id}", guarded(trace)), Route("/traces/{trace_id}/tree.json", guarded(tree_json)),
        Route("/traces/{trace_id}/spans/{span_id}", guarded(span_detail)),
        Route("/traces/{trace_id}/spans/{span_id}/field/{field}", guarded(span_field)),
        Route("/traces/{trace_id}/scores", post_score, methods=["POST"]),
        Route("/sessions", guarded(sessions)), Route("/sessions/{session_id:path}", guarded(session)),
        Route("/compare", guarded(compare_page)), Route("/compare/traces", guarded(compare_traces)),
        Route("/over-time", guarded(over_time)),
        Route("/experiments", guarded(experiments)), Route("/experiments/compare", guarded(experiments_compare)),
        Route("/experiments/{run}", guarded(experiment)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    hosts = allowed_hosts if allowed_hosts is not None else LOOPBACK_HOSTS
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders),
                                               Middleware(LoopbackHosts, hosts=hosts)])
    app.state.token = ui.token
    app.state.ui = ui
    return app


BUCKETS = {"hour": 3600 * 10**9, "day": 86_400 * 10**9}
OVER_TIME_WINDOWS = {"hour": (24 * 3600 * 10**9, "the 24 hours up to the newest trace"),
                     "day": (90 * 86_400 * 10**9, "the 90 days up to the newest trace")}
"""What over time shows when no time range is given: the newest part of the store, so a big store is not
grouped whole at every visit (``range=all`` asks for everything)."""


def _limit(query: Query) -> int:
    try:
        return min(max(int(query.text("limit") or PAGE_SIZE), 1), 500)
    except ValueError:
        return PAGE_SIZE


def serve(store_path: str, config: str | None = None, *, host: str = "127.0.0.1", port: int = 7100,
          open_browser: bool = False, poll_seconds: float = 2.0,
          on_ready: Callable[[str], None] | None = None, warn: bool = True) -> None:
    """Run the UI with uvicorn until interrupted. ``port=0`` takes a free port; ``on_ready`` gets
    the URL once the socket is bound (the CLI prints it); ``warn=False`` when the caller already
    warned about a non-loopback host."""
    import socket

    import uvicorn

    loopback = host in ("127.0.0.1", "localhost", "::1")
    hosts = None if loopback else ["*"]
    if not loopback and warn:
        log.warning("serving on %s: anyone who can reach this address can read your traces, which contain "
                    "prompts and outputs", host)
    app = create_app(store_path, config, poll_seconds=poll_seconds, allowed_hosts=hosts)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP (else every response waits
    # ~40 ms for Nagle and the client's delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # from now on a browser's connection waits in the backlog until uvicorn serves it
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/traces"
    if on_ready is not None:
        on_ready(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
