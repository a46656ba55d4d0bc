"""`portraitkit workers`: which worker processes are running (service role)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from portraitkit.models import WorkerRecord, WorkerState

from .context import CliContext, cli_context, run
from .output import console, emit_json

STATE_STYLE = {WorkerState.LIVE: "green", WorkerState.STOPPED: "dim", WorkerState.LOST: "red"}


def workers(
    ctx: typer.Context,
    all_: Annotated[
        bool,
        typer.Option("--all", "-a", help="Also workers that stopped or stopped checking in."),
    ] = False,
) -> None:
    """The workers checked in on this database: host, pid, items running, last heartbeat.

    A worker checks in when it starts and on every heartbeat; one that stops checking in
    (killed, or cut off from the database) shows as lost once its record runs out.

    Examples:

      portraitkit workers
      portraitkit workers --all --json
    """
    options = cli_context(ctx)
    records = run(_list(options, include_stopped=all_))
    if options.json:
        emit_json(records)
        return
    out = console()
    if not records:
        out.print(
            "no worker is running; start one with [bold]portraitkit worker[/bold]"
            if not all_
            else "no worker has checked in"
        )
        return
    out.print(_table(records, datetime.now(UTC)))


async def _list(options: CliContext, *, include_stopped: bool) -> list[WorkerRecord]:
    async with options.service_client() as client:
        return await client.list_workers(include_stopped=include_stopped)


def _table(records: list[WorkerRecord], now: datetime) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("worker", "status", "host", "pid", "running", "done", "started", "last seen"):
        table.add_column(
            column, justify="right" if column in ("pid", "running", "done") else "left"
        )
    for w in records:
        table.add_row(
            w.worker_id,
            f"[{STATE_STYLE[w.status]}]{w.status}[/]",
            w.hostname or "",
            str(w.pid or ""),
            f"{w.running}/{w.concurrency}" if w.concurrency else str(w.running),
            str(w.stats.get("completed", 0)),
            w.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            f"{_ago(now - w.last_seen_at)} ago",
        )
    return table


def _ago(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
