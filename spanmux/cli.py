"""The ``spanmux`` command: read the built-in store, check configuration files.

Every listing prints a rich table, or JSON with ``--json`` (for scripts and tests).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from spanmux.errors import ConfigurationError

app = typer.Typer(help="spanmux: traces of your LLM agents, in the observability tool you already use.",
                  no_args_is_help=True, add_completion=False)


def _width() -> int | None:
    """Full width in a terminal; a wide fixed width when piped, so ids and names never fold."""
    return None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))


class _LazyConsole:
    """Consoles bound at print time: the CLI runner and pipes swap sys.stdout after import."""

    def __init__(self, stderr: bool = False) -> None:
        self.stderr = stderr

    def print(self, *objects: Any) -> None:
        Console(stderr=self.stderr, width=_width(), highlight=False).print(*objects)


console = _LazyConsole()
err_console = _LazyConsole(stderr=True)

StoreOption = Annotated[
    str | None, typer.Option("--store", "-s", help="Store file (default: from ./spanmux.yaml or .spanmux/spanmux.db)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _store_path(store: str | None) -> str:
    if store:
        return store
    try:
        from spanmux.config import load_config  # noqa: PLC0415

        return str(load_config(None).settings.local.path)
    except ConfigurationError:
        return ".spanmux/spanmux.db"


def _open_store(store: str | None) -> Any:
    from spanmux.backends.local import LocalStore  # noqa: PLC0415

    path = _store_path(store)
    try:
        return LocalStore(path)
    except FileNotFoundError:
        err_console.print(f"[red]no spanmux store at {path}[/red] (run a traced program first, or pass --store)")
        raise typer.Exit(1) from None


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
    from datetime import datetime  # noqa: PLC0415

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
    with _open_store(store) as db:
        rows = db.list_traces(limit=limit, since_ns=_parse_since(since), status=status, user_id=user,
                              session_id=session, tag=tag, metadata=_metadata_filters(metadata))
    if as_json:
        _print_json([{**msgspec.to_builtins(r), "duration_ms": r.duration_ms} for r in rows])
        return
    table = Table(title=f"{len(rows)} newest traces", title_justify="left")
    for column in ("trace", "started", "name", "status", "spans", "duration", "tokens", "cost", "models", "user"):
        table.add_column(column, overflow="fold")
    for r in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.start_ns / 1e9))
        status_text = "[green]ok[/green]" if r.status == "ok" else f"[red]{r.status}[/red]"
        table.add_row(r.trace_id[:12], started, r.name or "-", status_text, str(r.span_count),
                      _fmt_ms(r.duration_ms), str(r.total_tokens), _fmt_cost(r.cost_total),
                      ", ".join(r.models) or "-", r.user_id or "-")
    console.print(table)


def _span_label(span: Any) -> str:
    parts = [f"[bold]{span.name}[/bold]", f"[cyan]{span.kind}[/cyan]", _fmt_ms(span.duration_ms)]
    if span.model is not None and span.model.name:
        parts.append(f"[magenta]{span.model.name}[/magenta]")
    if span.usage is not None:
        estimate = "~" if span.usage.estimated else ""
        parts.append(f"{estimate}{span.usage.input_tokens}→{span.usage.output_tokens} tok")
    if span.cost is not None:
        parts.append(_fmt_cost(span.cost.total))
    if span.status == "error":
        message = span.error.message if span.error else ""
        parts.append(f"[red]error: {span.error.type if span.error else ''} {message[:120]}[/red]")
    return "  ".join(parts)


@app.command()
def show(
    trace_id: Annotated[str, typer.Argument(help="A trace id (a unique prefix is enough).")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one trace as a tree: kind, duration, model, tokens, cost, errors."""
    with _open_store(store) as db:
        full_id = db.find_trace_id(trace_id) or trace_id.removeprefix("tr-")
        spans = db.get_trace(full_id)
        summary = db.get_trace_summary(full_id)
        scores = db.get_scores(full_id)
    if not spans:
        err_console.print(f"[red]no trace {trace_id!r} in the store[/red]")
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
    for sc in scores:
        console.print(f"  score [bold]{sc.name}[/bold] = {sc.value!r} ({sc.source}) {sc.comment or ''}")


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="A YAML file with an observability block.")]) -> None:
    """Check a configuration file without starting anything."""
    from spanmux.config import load_config  # noqa: PLC0415
    from spanmux.registry import known_backends  # noqa: PLC0415

    try:
        loaded = load_config(file, known_backends())
    except ConfigurationError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    settings = loaded.settings
    console.print(f"[green]ok[/green] {file}: backends={', '.join(settings.backends)} enabled={settings.enabled}")


@app.command()
def schema(
    write: Annotated[bool, typer.Option("--write", help="Rewrite the committed schema file.")] = False,
) -> None:
    """Print the JSON Schema of the observability block (for editors)."""
    from spanmux.config_schemas import json_schema  # noqa: PLC0415
    from spanmux.config_schemas.observability import SCHEMA_FILE  # noqa: PLC0415

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
    from spanmux.comparison import check_grouping, compare  # noqa: PLC0415

    try:
        check_grouping(by)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--by") from None
    filters = {"since_ns": _parse_since(since), "name": name, "status": status, "user_id": user,
               "session_id": session, "tag": tag, "model": model, "metadata": _metadata_filters(metadata)}
    with _open_store(store) as db:
        groups = compare(db, by, **filters)
    if as_json:
        _print_json({"by": by, "groups": groups})
        return
    score_names = sorted({score for g in groups for score in g.scores})
    table = Table(title=f"{sum(g.traces for g in groups)} traces by {by}", title_justify="left")
    for column in ("group", "traces", "errors", "p50", "p95", "llm calls", "tokens (mean)", "cost total",
                   "cost mean", *score_names):
        table.add_column(column, overflow="fold")
    for g in groups:
        table.add_row(
            g.group, str(g.traces), f"{g.errors} ({g.error_rate:.0%})", _fmt_ms(g.p50_ms), _fmt_ms(g.p95_ms),
            f"{g.mean_llm_calls:.1f}", f"{g.mean_total_tokens:.1f}", _fmt_cost(g.total_cost), _fmt_cost(g.mean_cost),
            *(_fmt_score(g.scores[n]) if n in g.scores else "-" for n in score_names),
        )
    console.print(table)


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML with the observability block (default: ./spanmux.yaml)")
]


def _load(config: Path | None) -> Any:
    """The validated configuration, or a clean exit with the problems listed."""
    from spanmux.config import load_config  # noqa: PLC0415
    from spanmux.registry import known_backends  # noqa: PLC0415

    try:
        return load_config(config, known_backends())
    except ConfigurationError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def _build_backend(loaded: Any, name: str) -> Any:
    """One backend of the configuration, built as ``configure()`` would (raises ConfigurationError)."""
    import dataclasses  # noqa: PLC0415

    from spanmux.registry import build_backends  # noqa: PLC0415

    only = dataclasses.replace(loaded, settings=loaded.settings.model_copy(update={"backends": [name]}))
    return build_backends(only)[0][1]


def _export_with_retries(backend: Any, spans: list[Any], scores: list[Any], attempts: int = 5) -> None:
    """Send one batch; retry what the backend calls retryable, honouring its Retry-After."""
    from spanmux.backend import ExportError  # noqa: PLC0415

    delay = 0.5
    for attempt in range(attempts):
        try:
            backend.export(spans, scores)
            return
        except ExportError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
            time.sleep(exc.retry_after or delay)
            delay = min(delay * 2, 10.0)


@app.command()
def replay(
    to: Annotated[str, typer.Option("--to", help="Backend to send to, as named (and configured) in the YAML.")],
    since: Annotated[str | None, typer.Option(help="Only traces newer than 15m, 2h, 7d or an ISO date.")] = None,
    config: ConfigOption = None,
    store: StoreOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Records per export call.")] = 500,
) -> None:
    """Send what the built-in store holds to another backend (switching backend keeps history).
    Idempotent: backends upsert by span and score id, so replaying twice duplicates nothing."""
    from spanmux.backend import ExportError  # noqa: PLC0415
    from spanmux.backends.local import LocalStore  # noqa: PLC0415
    from spanmux.registry import known_backends  # noqa: PLC0415

    loaded = _load(config)
    if to not in known_backends():
        raise typer.BadParameter(f"unknown backend {to!r}; known: {', '.join(sorted(known_backends()))}",
                                 param_hint="--to")
    path = store or (str(loaded.settings.local.path) if config else _store_path(None))
    if not Path(path).exists():
        err_console.print(f"[red]no spanmux store at {path}[/red] (pass --store)")
        raise typer.Exit(1)
    target_path = getattr(getattr(loaded.settings, to, None), "path", None)
    if to in ("local", "superoptix") and target_path and Path(target_path).resolve() == Path(path).resolve():
        raise typer.BadParameter(f"the {to} backend writes to {path}, the store being replayed", param_hint="--to")
    try:
        backend = _build_backend(loaded, to)
    except ConfigurationError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    since_ns = _parse_since(since)
    sent_spans = sent_scores = 0
    try:
        with LocalStore(path) as db:
            for spans in db.iter_spans(since_ns=since_ns, batch=batch_size):
                _export_with_retries(backend, spans, [])
                sent_spans += len(spans)
            scores: list[Any] = []
            for score in db.iter_scores(since_ns=since_ns):
                scores.append(score)
                if len(scores) >= batch_size:
                    _export_with_retries(backend, [], scores)
                    sent_scores += len(scores)
                    scores = []
            if scores:
                _export_with_retries(backend, [], scores)
                sent_scores += len(scores)
        backend.force_flush(30.0)
    except ExportError as exc:
        err_console.print(f"[red]replay to {to} stopped after {sent_spans} spans and {sent_scores} scores: {exc}[/red]"
                          "\nrun it again once the backend answers: nothing is duplicated")
        raise typer.Exit(1) from None
    finally:
        try:
            backend.shutdown(10.0)
        except Exception as exc:
            err_console.print(f"[yellow]backend {to} did not close cleanly: {exc}[/yellow]")
    console.print(f"[green]sent[/green] {sent_spans} spans and {sent_scores} scores from {path} to {to}")


def _doctor_row(loaded: Any, name: str, timeout: float) -> dict[str, Any]:
    from spanmux.spool import Spool  # noqa: PLC0415

    row: dict[str, Any] = {"backend": name, "ok": False, "status": "", "detail": ""}
    try:
        backend = _build_backend(loaded, name)
    except ConfigurationError as exc:
        row.update(status="misconfigured", detail="; ".join(p.message for p in exc.problems) or str(exc))
    else:
        check = getattr(backend, "check_connection", None)
        try:
            if callable(check):
                row.update(ok=True, status="ok", detail=str(check(timeout)))
            else:
                row.update(ok=True, status="ok", detail="configured (this backend has no connection check)")
        except Exception as exc:
            retryable = getattr(exc, "retryable", True)
            row.update(status="unreachable" if retryable else "refused", detail=str(exc) or type(exc).__name__)
        finally:
            try:
                backend.shutdown(1.0)
            except Exception:
                pass
    spool = Spool(Path(loaded.settings.spool_dir) / name, loaded.settings.spool_max_bytes)
    row["spool"] = spool.describe()
    return row


@app.command()
def doctor(
    file: Annotated[Path, typer.Argument(help="A YAML file with an observability block.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each backend.")] = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Configure each backend (sending nothing), check reachability and credentials, show what waits
    in the spools. Exits 1 when a backend is unreachable, refuses the keys or is misconfigured."""
    from spanmux.spool import Spool  # noqa: PLC0415

    loaded = _load(file)
    settings = loaded.settings
    rows = [_doctor_row(loaded, name, timeout) for name in settings.backends]
    overflow = Spool(Path(settings.spool_dir) / "_overflow", settings.spool_max_bytes).describe()
    healthy = all(row["ok"] for row in rows)
    if as_json:
        _print_json({"ok": healthy, "source": loaded.source, "enabled": settings.enabled,
                     "spool_dir": settings.spool_dir, "backends": rows, "overflow_spool": overflow})
    else:
        table = Table(title=f"{file}: spool in {settings.spool_dir}", title_justify="left")
        for column in ("backend", "status", "detail", "spooled batches", "spans", "scores", "bytes"):
            table.add_column(column, overflow="fold")
        for row in rows:
            colour = "green" if row["ok"] else "red"
            spool = row["spool"]
            table.add_row(row["backend"], f"[{colour}]{row['status']}[/{colour}]", row["detail"],
                          str(spool["batches"] + spool["claimed"]), str(spool["spans"]), str(spool["scores"]),
                          str(spool["bytes"]))
        console.print(table)
        if overflow["batches"] or overflow["claimed"]:
            console.print(f"queue overflow spool: {overflow['spans']} spans, {overflow['scores']} scores waiting")
        if not settings.enabled:
            console.print("[yellow]tracing is disabled in this file (enabled: false)[/yellow]")
    if not healthy:
        raise typer.Exit(1)


def print_recent(store: str, since_ns: int | None = None, limit: int = 10) -> None:
    """Print the traces table and each trace's tree, oldest first: what the examples end with
    (the same output as ``spanmux traces`` followed by ``spanmux show ID``)."""
    from spanmux.backends.local import LocalStore  # noqa: PLC0415

    with LocalStore(store) as db:
        recent = db.list_traces(limit=limit, since_ns=since_ns)
    app(["traces", "--store", store, "--limit", str(max(1, len(recent)))], standalone_mode=False)
    for trace in reversed(recent):
        app(["show", trace.trace_id, "--store", store], standalone_mode=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
