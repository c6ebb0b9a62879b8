"""The ``spanmux`` command: read the built-in store, check configuration files.

Every listing prints a rich table, or JSON with ``--json`` (for scripts and tests).
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, get_args

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from spanmux.errors import ConfigurationError
from spanmux.model import Status
from spanmux.store import DEFAULT_PATH, LocalStore, TraceFilter, default_store_path

app = typer.Typer(help="spanmux: traces of your LLM agents, in the observability tool you already use.",
                  no_args_is_help=True, add_completion=False)


def _width() -> int | None:
    """Full width in a terminal; a wide fixed width when piped, so ids and names never fold."""
    return None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))


class _LazyConsole:
    """Consoles bound at print time: the CLI runner and pipes swap sys.stdout after import."""

    def __init__(self, stderr: bool = False) -> None:
        self.stderr = stderr

    def print(self, *objects: Any, soft_wrap: bool | None = None) -> None:
        Console(stderr=self.stderr, width=_width(), highlight=False).print(*objects, soft_wrap=soft_wrap)


console = _LazyConsole()
err_console = _LazyConsole(stderr=True)


def _error(message: object, colour: str = "red") -> None:
    """A message on stderr, printed as written: rich markup would eat ``[mlflow]`` in
    ``pip install "spanmux[mlflow]"`` (or any bracket in a name or an error)."""
    err_console.print(f"[{colour}]{escape(str(message))}[/{colour}]", soft_wrap=True)  # a long path stays on its line


def _version(value: bool) -> None:
    if value:
        from spanmux import __version__

        sys.stdout.write(f"spanmux {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """spanmux: traces of your LLM agents, in the observability tool you already use."""

StoreOption = Annotated[
    str | None, typer.Option("--store", "-s", help="Store file (default: from ./spanmux.yaml or .spanmux/spanmux.db)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextmanager
def _open_store(store: str | None) -> Iterator[LocalStore]:
    """The store opened read-only, or a one-line error (never a traceback) where it cannot be read."""
    path = store or default_store_path()
    try:
        db = LocalStore(path)
    except FileNotFoundError:
        _error(f"no spanmux store at {path} (run a traced program first, or pass --store)")
        raise typer.Exit(1) from None
    except sqlite3.Error as exc:  # StoreReadError, StoreSchemaError: their message names the file
        _error(exc)
        raise typer.Exit(1) from None
    try:
        with db:
            yield db
    except sqlite3.Error as exc:
        _error(f"cannot read the spanmux store at {path}: {exc}")
        raise typer.Exit(1) from None


STATUSES: tuple[str, ...] = get_args(Status)
_STATUS_SYNONYMS = {"failed": "error", "fail": "error", "failure": "error", "failing": "error", "err": "error",
                    "errors": "error", "exception": "error", "crashed": "error", "success": "ok",
                    "succeeded": "ok", "successful": "ok", "passed": "ok", "pass": "ok", "okay": "ok",
                    "good": "ok"}


def did_you_mean(value: str, choices: list[str] | tuple[str, ...], synonyms: dict[str, str] | None = None) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    guess = (synonyms or {}).get(value.lower())
    if guess is None:
        close = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.6)
        guess = close[0] if close else None
    return f" (did you mean {guess!r}?)" if guess else ""


def _check_status(status: str | None) -> str | None:
    """A trace status filter must be one of the statuses the store writes: a typo would list nothing."""
    if status is None or status in STATUSES:
        return status
    raise typer.BadParameter(f"unknown status {status!r}; valid statuses: {', '.join(STATUSES)}"
                             + did_you_mean(status, STATUSES, _STATUS_SYNONYMS), param_hint="--status")


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False) + "\n")


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.2f}s" if ms >= 1000 else f"{ms:.1f}ms"


def _fmt_cost(cost: float | None) -> str:
    return "-" if cost is None else f"${cost:.6f}"


def _parse_since(since: str | None) -> int | None:
    """'15m', '2h', '7d' or an ISO date -> epoch nanoseconds."""
    if not since:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if since[-1] in units and since[:-1].replace(".", "", 1).isdigit():
        return int((time.time() - float(since[:-1]) * units[since[-1]]) * 1e9)
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(since).timestamp() * 1e9)
    except ValueError:
        raise typer.BadParameter(f"--since {since!r}: use 15m, 2h, 7d or an ISO date") from None


def _metadata_filters(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--metadata {item!r}: use KEY=VALUE")
        out[key] = value
    return out


def _trace_filter(since: str | None, status: str | None, user: str | None, session: str | None, tag: str | None,
                  metadata: list[str] | None, name: str | None = None, model: str | None = None) -> TraceFilter:
    """The store filter of the options ``traces`` and ``stats`` share, each checked."""
    status = _check_status(status)
    return TraceFilter(since_ns=_parse_since(since), status=status, user_id=user, session_id=session, tag=tag,
                       metadata=_metadata_filters(metadata), name=name, model=model)


@app.command()
def traces(
    store: StoreOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many traces.")] = 20,
    since: Annotated[str | None, typer.Option(help="Only traces newer than 15m, 2h, 7d or an ISO date.")] = None,
    status: Annotated[str | None, typer.Option(help="ok or error")] = None,
    user: Annotated[str | None, typer.Option(help="user id")] = None,
    session: Annotated[str | None, typer.Option(help="session id")] = None,
    tag: Annotated[str | None, typer.Option(help="a trace tag")] = None,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the newest traces with duration, tokens and cost."""
    where = _trace_filter(since, status, user, session, tag, metadata)
    with _open_store(store) as db:
        rows = db.list_traces(limit=limit, where=where)
    if as_json:
        _print_json([{**msgspec.to_builtins(r), "duration_ms": r.duration_ms} for r in rows])
        return
    title = "newest trace" if len(rows) == 1 else f"{len(rows)} newest traces"
    table = Table(title=title, title_justify="left")
    for column in ("trace", "started", "name", "status", "spans", "duration", "tokens", "cost", "models", "user"):
        table.add_column(column, overflow="fold")
    for r in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.start_ns / 1e9))
        status_text = "[green]ok[/green]" if r.status == "ok" else f"[red]{escape(r.status)}[/red]"
        table.add_row(r.trace_id[:12], started, escape(r.name or "-"), status_text, str(r.span_count),
                      _fmt_ms(r.duration_ms), str(r.total_tokens), _fmt_cost(r.cost_total),
                      escape(", ".join(r.models) or "-"), escape(r.user_id or "-"))
    console.print(table)


def _span_label(span: Any) -> str:
    parts = [f"[bold]{escape(span.name)}[/bold]", f"[cyan]{escape(span.kind)}[/cyan]", _fmt_ms(span.duration_ms)]
    if span.model is not None and span.model.name:
        parts.append(f"[magenta]{escape(span.model.name)}[/magenta]")
    if span.usage is not None:
        estimate = "~" if span.usage.estimated else ""
        parts.append(f"{estimate}{span.usage.input_tokens}→{span.usage.output_tokens} tok")
    if span.cost is not None:
        parts.append(_fmt_cost(span.cost.total))
    if span.status == "error":
        message = span.error.message if span.error else ""
        parts.append(f"[red]error: {escape(span.error.type if span.error else '')} {escape(message[:120])}[/red]")
    return "  ".join(parts)


@app.command()
def show(
    trace_id: Annotated[str, typer.Argument(help="A trace id (a unique prefix is enough).")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one trace as a tree: kind, duration, model, tokens, cost, errors, scores.

    Also prints the trace's user, session, tags and metadata. An id prefix that several traces share
    lists them."""
    with _open_store(store) as db:
        matches = db.find_trace_ids(trace_id, limit=_MAX_MATCHES + 1)
        if len(matches) > 1:
            summaries = [db.get_trace_summary(m) for m in matches[:_MAX_MATCHES]]
            _ambiguous(trace_id, matches, summaries)
        full_id = matches[0] if matches else trace_id.lower().removeprefix("tr-")
        spans = db.get_trace(full_id)
        summary = db.get_trace_summary(full_id)
        scores = db.get_scores(full_id)
    if not spans:
        _error(f"no trace {trace_id!r} in the store")
        raise typer.Exit(1)
    if as_json:
        _print_json({"trace": summary, "spans": spans, "scores": scores})
        return
    title = f"trace {full_id}"
    if summary is not None:
        title += (f"  {_fmt_ms(summary.duration_ms)}  {summary.total_tokens} tokens  "
                  f"{_fmt_cost(summary.cost_total)}")
    tree = Tree(title)
    nodes: dict[str, Any] = {}
    for span in spans:
        parent = nodes.get(span.parent_id, tree) if span.parent_id else tree
        nodes[span.span_id] = parent.add(_span_label(span))
    console.print(tree)
    if summary is not None:
        for line in _trace_fields(summary):
            console.print(line)
    for sc in scores:
        console.print(f"  score [bold]{escape(sc.name)}[/bold] = {escape(repr(sc.value))} ({escape(sc.source)})"
                      f" {escape(sc.comment or '')}")


_MAX_MATCHES = 20


def _ambiguous(prefix: str, matches: list[str], summaries: list[Any]) -> None:
    """An id prefix shared by several traces: list them (instead of "no trace") and exit 1."""
    more = "+" if len(matches) > _MAX_MATCHES else ""
    _error(f"trace id prefix {prefix!r} is ambiguous: {min(len(matches), _MAX_MATCHES)}{more} traces match;"
           " give more characters", colour="yellow")
    for full_id, summary in zip(matches, summaries, strict=False):
        if summary is None:
            err_console.print(f"  {full_id}")
            continue
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary.start_ns / 1e9))
        err_console.print(f"  {full_id}  {started}  {escape(summary.name or '-')}  {escape(summary.status)}")
    if more:
        err_console.print("  ...")
    raise typer.Exit(1)


def _trace_fields(summary: Any) -> list[str]:
    """The trace's user, session, tags and metadata, one line each (only those set)."""
    lines = []
    for label, value in (("user", summary.user_id), ("session", summary.session_id),
                         ("tags", ", ".join(summary.tags)),
                         ("metadata", json.dumps(summary.metadata, ensure_ascii=False, default=repr)
                          if summary.metadata else "")):
        if value:
            lines.append(f"  {label}: {escape(str(value))}")
    return lines


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="A YAML file with an observability block.")]) -> None:
    """Run the checks configure() runs (building the backends, connecting to none) and say what
    they could not check."""
    from rich.markup import escape

    from spanmux.registry import check_config

    try:
        checked = check_config(file, log_findings=False)
    except ConfigurationError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    checked.close()
    loaded, settings = checked.loaded, checked.loaded.settings
    for problem in loaded.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(str(problem))}")
    if loaded.ignored_keys:
        console.print(f"note: SuperOptiX keys spanmux accepts but does not act on: {', '.join(loaded.ignored_keys)}")
    console.print(f"[green]ok[/green] {file}: backends={', '.join(settings.backends)} enabled={settings.enabled}")
    for item in checked.unchecked:
        console.print(f"not checked: {escape(item)}")


@app.command()
def schema(
    write: Annotated[bool, typer.Option("--write", help="Rewrite the committed schema file.")] = False,
) -> None:
    """Print the JSON Schema of the observability block (for editors)."""
    from spanmux.config_schemas import json_schema
    from spanmux.config_schemas.observability import SCHEMA_FILE

    text = json_schema()
    if write:
        SCHEMA_FILE.write_text(text, encoding="utf-8")
        err_console.print(f"wrote {SCHEMA_FILE}")
        return
    sys.stdout.write(text)


def _fmt_score(stats: Any) -> str:
    if stats.mean is not None:
        return f"{stats.mean:.3f} (n={stats.traces})"
    if stats.counts:
        top = max(stats.counts.items(), key=lambda item: item[1])
        share = top[1] / sum(stats.counts.values())
        return f"{top[0]} {share:.0%} (n={stats.traces})"
    return "-"


@app.command()
def stats(
    by: Annotated[str, typer.Option(
        "--by", help="model | variant | prompt | tag | user | session | name | metadata.KEY")] = "model",
    store: StoreOption = None,
    since: Annotated[str | None, typer.Option(help="Only traces newer than 15m, 2h, 7d or an ISO date.")] = None,
    name: Annotated[str | None, typer.Option(help="Only traces with this name.")] = None,
    status: Annotated[str | None, typer.Option(help="ok or error")] = None,
    user: Annotated[str | None, typer.Option(help="user id")] = None,
    session: Annotated[str | None, typer.Option(help="session id")] = None,
    tag: Annotated[str | None, typer.Option(help="a trace tag")] = None,
    model: Annotated[str | None, typer.Option(help="Only traces that called this model.")] = None,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable")] = None,
    as_json: JsonOption = False,
) -> None:
    """Compare groups of traces (A/B): count, error rate, p50/p95 latency, tokens, cost, scores."""
    from spanmux.comparison import check_grouping, compare

    try:
        check_grouping(by)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--by") from None
    where = _trace_filter(since, status, user, session, tag, metadata, name=name, model=model)
    with _open_store(store) as db:
        groups = compare(db, by, where)
    if as_json:
        _print_json({"by": by, "groups": groups})
        return
    score_names = sorted({score for g in groups for score in g.scores})
    total = sum(g.traces for g in groups)
    table = Table(title=f"{total} trace{'' if total == 1 else 's'} by {by}", title_justify="left")
    for column in ("group", "traces", "errors", "p50", "p95", "llm calls", "tokens (mean)", "cost total",
                   "cost mean (priced)", *score_names):
        table.add_column(escape(column), overflow="fold")
    for g in groups:
        table.add_row(
            escape(g.group), str(g.traces), f"{g.errors} ({g.error_rate:.0%})", _fmt_ms(g.p50_ms), _fmt_ms(g.p95_ms),
            f"{g.mean_llm_calls:.1f}", f"{g.mean_total_tokens:.1f}", _fmt_cost(g.total_cost), _fmt_mean_cost(g),
            *(escape(_fmt_score(g.scores[n])) if n in g.scores else "-" for n in score_names),
        )
    console.print(table)
    if any(g.priced_traces < g.traces for g in groups):
        console.print("cost mean divides by the priced traces only; traces whose models have no price"
                      " (no provider cost, no pricing: entry, not in the price table) are left out of it")


def _fmt_mean_cost(group: Any) -> str:
    """The mean over priced traces, saying over how many when some traces have no price."""
    text = _fmt_cost(group.mean_cost)
    if group.priced_traces < group.traces:
        text += f" ({group.priced_traces} of {group.traces} priced)"
    return text


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML with the observability block (default: ./spanmux.yaml)")
]


def _load(config: Path | None) -> Any:
    """The validated configuration, or a clean exit with the problems listed."""
    from spanmux.config import load_config
    from spanmux.registry import known_backends

    try:
        return load_config(config, known_backends())
    except ConfigurationError as exc:
        _error(exc)
        raise typer.Exit(1) from None


UI_DEFAULT_PORT = 7100


@app.command()
def ui(
    store: StoreOption = None,
    config: ConfigOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback shares your traces.")]
    = "127.0.0.1",
    port: Annotated[int | None, typer.Option("--port", "-p", min=0, max=65535,
                                             help="Port (0: a free one; default: dashboard.port, else 7100).")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a browser.")] = False,
) -> None:
    """Browse the built-in store in a web page: traces, waterfall, sessions, A/B charts, feedback.

    With -c CONFIG, scores entered in the page go to every backend of that configuration."""
    try:
        from spanmux.ui.app import serve
    except ImportError as exc:
        _error(f"the web UI needs its extra ({exc.name} is missing): pip install \"spanmux[ui]\"")
        raise typer.Exit(1) from None
    settings = None  # -c, else $SPANMUX_CONFIG or ./spanmux.yaml (dashboard.port); none: skip pydantic (start-up)
    if config is not None or os.environ.get("SPANMUX_CONFIG") or Path("spanmux.yaml").exists():
        settings = _load(config).settings
    path = store or (str(settings.local.path) if settings is not None else DEFAULT_PATH)
    if port is None:
        port = (settings.ui_port if settings is not None else None) or UI_DEFAULT_PORT
    if host not in ("127.0.0.1", "localhost", "::1"):
        _error(f"--host {host}: the UI will be reachable from other machines, and traces contain prompts and "
               "outputs; anyone who can reach it can read them.", colour="yellow")

    def ready(url: str) -> None:
        sys.stdout.write(f"spanmux UI on {url} (store {path}); Ctrl+C to stop\n")
        sys.stdout.flush()
        if not Path(path).exists():
            _error(f"no store at {path} yet: the pages say so until a traced program writes it (or pass --store)",
                   colour="yellow")

    try:
        serve(path, str(config) if config else None, host=host, port=port, open_browser=open_browser, on_ready=ready,
              warn=False)  # warned above
    except OSError as exc:
        _error(f"cannot serve on {host}:{port}: {exc.strerror or exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@app.command()
def replay(
    to: Annotated[str, typer.Option("--to", help="Backend to send to, as named (and configured) in the YAML.")],
    since: Annotated[str | None, typer.Option(help="Only traces newer than 15m, 2h, 7d or an ISO date.")] = None,
    config: ConfigOption = None,
    store: StoreOption = None,
    from_spool: Annotated[str | None, typer.Option(
        "--from-spool", metavar="NAME",
        help="Send what waits in the spool folder NAME (spool_dir/NAME, e.g. a backend no longer configured)"
             " instead of the store; each batch file is deleted once the target took it.")] = None,
    spool_dir: Annotated[str | None, typer.Option(
        "--spool-dir", help="Spool folder (default: spool_dir of the configuration).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Records per export call.")] = 500,
) -> None:
    """Send the built-in store's history (or a spool, with --from-spool) to a backend.

    Switching backend keeps history. Idempotent: backends upsert by span and score id, so replaying
    twice duplicates nothing."""
    from spanmux import replay as replaying

    loaded = _load(config)
    try:
        replaying.check_target(to)
        if from_spool is not None and (since is not None or store is not None):
            raise typer.BadParameter("--from-spool sends whole spooled batches: it takes no --since or --store",
                                     param_hint="--from-spool")
        if from_spool is not None:
            result = replaying.replay_spool(loaded, to, from_spool, spool_dir=spool_dir)
        else:
            path = store or (str(loaded.settings.local.path) if config else default_store_path())
            result = replaying.replay_store(loaded, to, path, since_ns=_parse_since(since), batch_size=batch_size)
    except replaying.ReplayRefused as exc:
        hint = did_you_mean(exc.value, exc.choices) if exc.choices else ""
        raise typer.BadParameter(f"{exc}{hint}", param_hint=f"--{exc.argument.replace('_', '-')}") from None
    except (replaying.ReplayError, ConfigurationError) as exc:  # ReplayStopped says how far it got
        _error(exc)
        if isinstance(exc, replaying.ReplayStopped) and exc.sent.close_error:
            _error(exc.sent.close_error, colour="yellow")
        raise typer.Exit(1) from None
    if result.close_error:
        _error(result.close_error, colour="yellow")
    if result.spool_left is None:
        runs = f" and {result.experiments} experiment runs" if result.experiments else ""
        console.print(f"[green]sent[/green] {result.spans} spans and {result.scores} scores{runs} from"
                      f" {escape(result.source)} to {to}")
        return
    left, tail = result.spool_left, ""
    if left["batches"] or left["claimed"] or left["corrupt"]:
        tail = (f"; still there: {left['batches']} batches, {left['claimed']} being sent by another process,"
                f" {left['corrupt']} unreadable")
    console.print(f"[green]sent[/green] {result.spans} spans and {result.scores} scores ({result.batches} batches)"
                  f" from spool {escape(result.source)} to {to}{escape(tail)}")


@app.command()
def doctor(
    file: Annotated[Path | None, typer.Argument(
        help="A YAML file with an observability block (default: $SPANMUX_CONFIG, else ./spanmux.yaml).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each backend.")] = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Check each backend's reachability and keys, and what waits in every spool folder.

    Configures each backend (sending nothing), lists every folder under spool_dir (configured or
    not) with the command that delivers it. Exits 1 when a backend is unreachable, refuses the keys
    or is misconfigured."""
    from spanmux.doctor import diagnose

    loaded = _load(file)
    found = diagnose(loaded, timeout)
    if as_json:
        _print_json(found)
    else:
        _print_doctor(found)
    if not found.ok:
        raise typer.Exit(1)


def _print_doctor(found: Any) -> None:
    table = Table(title=escape(f"{found.source}: spool in {found.spool_dir}"), title_justify="left")
    for column in ("backend", "status", "detail", "spooled batches", "spans", "scores", "experiments", "bytes"):
        table.add_column(column, overflow="fold")
    for check in found.backends:
        colour = "green" if check.ok else "red"
        spool = check.spool
        table.add_row(escape(check.backend), f"[{colour}]{escape(check.status)}[/{colour}]", escape(check.detail),
                      str(spool["batches"] + spool["claimed"]), str(spool["spans"]), str(spool["scores"]),
                      str(spool["experiments"]), str(spool["bytes"]))
    console.print(table)
    if found.spools:
        listed = Table(title=escape(f"spool folders in {found.spool_dir}"), title_justify="left")
        for column in ("folder", "configured", "batches", "spans", "scores", "experiments", "bytes", "unreadable"):
            listed.add_column(column, overflow="fold")
        for folder in found.spools:
            listed.add_row(escape(folder.name), "yes" if folder.configured else "no",
                           str(folder.batches + folder.claimed), str(folder.spans), str(folder.scores),
                           str(folder.experiments), str(folder.bytes), str(folder.corrupt))
        console.print(listed)
        for folder in found.spools:  # on their own lines, so a command can be copied as it is
            if folder.needs_attention:
                colour = "yellow" if folder.stranded else "default"
                console.print(f"[{colour}]{escape(folder.deliver)}[/{colour}]", soft_wrap=True)
    if not found.enabled:
        console.print("[yellow]tracing is disabled in this file (enabled: false)[/yellow]")


def print_recent(store: str, since_ns: int | None = None, limit: int = 10) -> None:
    """Print the traces table and each trace's tree, oldest first: what the examples end with
    (the same output as ``spanmux traces`` followed by ``spanmux show ID``)."""
    with LocalStore(store) as db:
        recent = db.list_traces(limit=limit, since_ns=since_ns)
    app(["traces", "--store", store, "--limit", str(max(1, len(recent)))], standalone_mode=False)
    for trace in reversed(recent):
        app(["show", trace.trace_id, "--store", store], standalone_mode=False)


def command_path() -> str:
    """How to run ``spanmux`` from the current folder, for programs that tell their user: plain
    ``spanmux`` when that is the one on PATH, else the script installed beside this interpreter
    (``.venv/bin/spanmux`` for an unactivated venv), else ``python -m spanmux.cli``."""
    script = Path(sys.executable).parent / ("spanmux.exe" if os.name == "nt" else "spanmux")
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m spanmux.cli"
    on_path = shutil.which("spanmux")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "spanmux"
    relative = os.path.relpath(script)
    if relative.startswith(".."):
        relative = str(script.absolute())
    elif os.sep not in relative:
        relative = os.curdir + os.sep + relative  # a bare name would be looked up on PATH
    return shlex.quote(relative)


def explore_hint(store: str) -> str:
    """The line the examples end with: commands that work from here, whether or not the venv is
    activated (``--store`` only when the store is not where the CLI looks by default)."""
    command = command_path()
    option = "" if os.path.normpath(store) == os.path.normpath(DEFAULT_PATH) else f" --store {shlex.quote(store)}"
    return f"Stored in {store}. Explore it with:  {command} traces{option}   |   {command} show <trace id>{option}"


# ---- experiments (spanmux.evaluate): list, show, compare
experiments_app = typer.Typer(help="Experiment runs (spanmux.evaluate): list, show one, compare two.",
                              invoke_without_command=True)
app.add_typer(experiments_app, name="experiments")


def _score_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.3g}" if isinstance(value, float) else escape(str(value))


def _mean_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@experiments_app.callback()
def experiments_list(
    ctx: typer.Context,
    store: StoreOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs.")] = 20,
    name: Annotated[str | None, typer.Option(help="Only runs of this experiment.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the newest experiment runs with their scorer means."""
    if ctx.invoked_subcommand is not None:
        return
    from spanmux.experiments import summarize

    with _open_store(store) as db:
        runs = [db.get_experiment(r.run_id) for r in db.list_experiments(limit, name=name)]
    summaries = [summarize(r) for r in runs if r is not None]
    if as_json:
        _print_json(summaries)
        return
    if not summaries:
        console.print("no experiment runs in the store (run spanmux.evaluate first)")
        return
    table = Table(title=f"{len(summaries)} newest experiment runs", title_justify="left")
    for column in ("run", "started", "experiment", "dataset", "items", "errors", "scores", "p50", "cost", "status"):
        table.add_column(column, overflow="fold")
    for run, summary in zip((r for r in runs if r is not None), summaries, strict=True):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.start_ns / 1e9))
        scores = ", ".join(f"{escape(n)}={_mean_text(s.mean)}" for n, s in summary.scorers.items())
        table.add_row(run.run_id[:12], started, escape(run.name), escape(run.dataset or "-"), str(summary.items),
                      str(summary.errors), scores or "-",
                      _fmt_ms(summary.latency_p50_ms) if summary.latency_p50_ms is not None else "-",
                      _fmt_cost(summary.cost), run.status)
    console.print(table)


@experiments_app.command("show")
def experiments_show(
    run: Annotated[str, typer.Argument(help="A run id (or a unique prefix), or an experiment name (its newest run).")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """One run: its summary and every item with scores, latency, tokens, cost and error."""
    from spanmux.experiments import summarize

    with _open_store(store) as db:
        found = db.get_experiment(run)
    if found is None:
        _error(f"no experiment run {run!r} in the store (spanmux experiments lists them)")
        raise typer.Exit(1)
    summary = summarize(found)
    if as_json:
        _print_json({"summary": summary, "items": found.items})
        return
    lines = [f"[bold]{escape(found.name)}[/bold]  run {found.run_id}  dataset {escape(found.dataset or '-')}  "
             f"{found.status}  {summary.items} items, {summary.errors} errors"]
    for name, s in summary.scorers.items():
        labels = ", ".join(f"{escape(k)}: {v}" for k, v in s.labels.items())
        lines.append(f"  {escape(name)} ({s.kind}): mean {_mean_text(s.mean)}"
                     + (f"  [{labels}]" if labels else "") + (f"  {s.errors} scorer errors" if s.errors else ""))
    p50 = _fmt_ms(summary.latency_p50_ms) if summary.latency_p50_ms is not None else "-"
    p95 = _fmt_ms(summary.latency_p95_ms) if summary.latency_p95_ms is not None else "-"
    lines.append(f"  latency p50 {p50}, p95 {p95}; task {summary.total_tokens} tokens {_fmt_cost(summary.cost)};"
                 f" scorers {summary.evaluator_tokens} tokens {_fmt_cost(summary.evaluator_cost)}")
    console.print("\n".join(lines))
    table = Table(title_justify="left")
    for column in ("item", "trace", "scores", "latency", "tokens", "cost", "error"):
        table.add_column(column, overflow="fold")
    for item in found.items:
        scores = ", ".join(f"{escape(k)}={_score_text(v)}" for k, v in item.scores.items())
        problems = [item.error] if item.error else []
        problems += [f"{k}: {v}" for k, v in item.scorer_errors.items()]
        table.add_row(escape(item.item_id), item.trace_id[:12], scores or "-", _fmt_ms(item.latency_ms),
                      str(item.total_tokens), _fmt_cost(item.cost),
                      f"[red]{escape('; '.join(problems)[:200])}[/red]" if problems else "")
    console.print(table)


@experiments_app.command("compare")
def experiments_compare(
    run_a: Annotated[str, typer.Argument(help="The baseline run (id, prefix or experiment name).")],
    run_b: Annotated[str, typer.Argument(help="The run compared with it.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run B against run A: per-scorer deltas and the items that got better, worse or stayed the same."""
    with _open_store(store) as db:
        try:
            comparison = db.compare_experiments(run_a, run_b)
        except LookupError as exc:
            _error(str(exc).strip("'\""))
            raise typer.Exit(1) from None
    if as_json:
        _print_json({**msgspec.to_builtins(comparison), "counts": comparison.counts()})
        return
    counts = comparison.counts()
    console.print(f"[bold]{escape(comparison.name_b)}[/bold] {comparison.run_b[:12]} vs "
                  f"[bold]{escape(comparison.name_a)}[/bold] {comparison.run_a[:12]}: "
                  f"[green]{counts['better']} better[/green], [red]{counts['worse']} worse[/red], "
                  f"{counts['same']} same, {counts['mixed']} mixed"
                  + (f"; only in A: {len(comparison.only_a)}" if comparison.only_a else "")
                  + (f"; only in B: {len(comparison.only_b)}" if comparison.only_b else ""))
    table = Table(title_justify="left")
    for column in ("scorer", "mean A", "mean B", "delta", "better", "worse", "same"):
        table.add_column(column)
    for d in comparison.scorers:
        delta = "-" if d.delta is None else f"{d.delta:+.3f}"
        table.add_row(escape(d.name), _mean_text(d.mean_a), _mean_text(d.mean_b), delta, str(d.better),
                      str(d.worse), str(d.same))
    console.print(table)
    changed = [c for c in comparison.items if c.verdict != "same"]
    if changed:
        items = Table(title="changed items", title_justify="left")
        for column in ("item", "verdict", "A", "B"):
            items.add_column(column, overflow="fold")
        for c in changed:
            colour = {"better": "green", "worse": "red"}.get(c.verdict, "yellow")
            a = ", ".join(f"{escape(k)}={_score_text(v)}" for k, v in c.scores_a.items()) or escape(c.error_a or "-")
            b = ", ".join(f"{escape(k)}={_score_text(v)}" for k, v in c.scores_b.items()) or escape(c.error_b or "-")
            items.add_row(escape(c.item_id), f"[{colour}]{c.verdict}[/{colour}]", a, b)
        console.print(items)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
