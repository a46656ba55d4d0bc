"""How batches, styles and stats look in a terminal: tables, a detail view, live progress."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from portraitkit.models import (
    Batch,
    BatchPage,
    BatchStatus,
    BatchSummary,
    Generation,
    GenerationStatus,
    Stats,
    Style,
)

STATUS_COLOURS = {
    "pending": "yellow",
    "processing": "cyan",
    "completed": "green",
    "partial": "yellow",
    "failed": "red",
    "cancelled": "bright_black",
}
ENDED = (GenerationStatus.COMPLETED, GenerationStatus.FAILED, GenerationStatus.CANCELLED)


def status_text(status: BatchStatus | GenerationStatus | str) -> str:
    colour = STATUS_COLOURS.get(str(status), "white")
    return f"[{colour}]{status}[/{colour}]"


def when(moment: datetime | None) -> str:
    return f"{moment.astimezone():%Y-%m-%d %H:%M}" if moment else ""


def seconds(ms: int | None) -> str:
    return "" if ms is None else f"{ms / 1000:.1f} s"


def progress_bar(percent: int, width: int = 10) -> str:
    filled = round(percent / 100 * width)
    return f"{'█' * filled}{'░' * (width - filled)} {percent:>3}%"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 credit``, ``3 credits``: a count and its noun (``many``: an irregular plural)."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def refund_note(batch: Batch) -> str:
    """``, 3 refunded (net 0)`` after what a batch was charged; nothing if nothing was."""
    if not batch.refunded_credits:
        return ""
    return f", {batch.refunded_credits} refunded (net {batch.net_credits})"


def photos(batch: BatchSummary) -> str:
    return f"{batch.completed_count}/{batch.total_count} photos"


def ended_count(batch: BatchSummary) -> int:
    return batch.completed_count + batch.failed_count + batch.cancelled_count


# -- tables ------------------------------------------------------------------------------


def styles_table(styles: Sequence[Style]) -> Table:
    """The catalogue grouped by category, with each style's cost in credits."""
    table = Table("category", "key", "name", "credits", "description")
    for category, group in groupby(styles, key=lambda s: s.category):
        for index, style in enumerate(group):
            table.add_row(
                f"[bold]{category}[/bold]" if index == 0 else "",
                style.key,
                style.name,
                str(style.credit_cost),
                style.description,
            )
        table.add_section()
    return table


def batches_table(page: BatchPage) -> Table:
    """The gallery: one row per batch, newest first."""
    table = Table("id", "created", "cover style", "photos", "status", "progress")
    for b in page.items:
        table.add_row(
            str(b.id),
            when(b.created_at),
            b.cover_style_key or "",
            photos(b),
            status_text(b.status),
            progress_bar(b.progress),
        )
    return table


def batch_header(batch: Batch) -> list[str]:
    lines = [
        f"[bold]batch[/bold]     {batch.id}",
        f"[bold]status[/bold]    {status_text(batch.status)}, {photos(batch)}, "
        f"{batch.failed_count} failed, {batch.cancelled_count} cancelled, "
        f"{progress_bar(batch.progress)}",
        f"[bold]credits[/bold]   charged {plural(batch.credits_charged, 'credit')}"
        f"{refund_note(batch)}",
        f"[bold]created[/bold]   {when(batch.created_at)}"
        + (f", finished {when(batch.finished_at)}" if batch.finished_at else ""),
        f"[bold]source[/bold]    {batch.original_image_url}",
    ]
    if batch.custom_prompt:
        lines.append(f"[bold]prompt[/bold]    {batch.custom_prompt}")
    return lines


def items_table(batch: Batch) -> Table:
    """Each style of the batch: status, attempts, duration, last error."""
    table = Table("#", "style", "status", "attempts", "duration", "last error")
    for item in sorted(batch.items, key=lambda i: i.position):
        table.add_row(
            str(item.position),
            item.style_name,
            status_text(item.status),
            f"{item.attempts}/{item.max_attempts}",
            seconds(item.duration_ms),
            item.last_error or "",
        )
    return table


def image_lines(batch: Batch, location: Callable[[str], str]) -> list[str]:
    """Where each result is, one per line (whole, so it can be copied or clicked)."""
    items = sorted(batch.items, key=lambda i: i.position)
    return [
        f"  {item.style_name:<16} {location(item.generated_image_url)}"
        for item in items
        if item.generated_image_url
    ]


def stats_table(stats: Stats) -> Table:
    table = Table.grid(padding=(0, 2))
    rate = "" if stats.success_rate is None else f"{stats.success_rate:.0%}"
    rows: list[tuple[str, Any]] = [
        ("batches", stats.batches),
        (
            "photos",
            f"{stats.items} ({stats.completed} completed, {stats.failed} failed, "
            f"{stats.cancelled} cancelled, {stats.pending} pending, "
            f"{stats.processing} processing)",
        ),
        ("success rate", rate),
        ("average time", seconds(stats.avg_generation_ms)),
        (
            "credits",
            f"{stats.credits_spent} spent, {stats.credits_refunded} refunded, "
            f"{stats.credits_granted} granted",
        ),
        ("balance", "" if stats.balance is None else stats.balance),
    ]
    for name, value in rows:
        table.add_row(f"[bold]{name}[/bold]", str(value))
    return table


def summary(batch: Batch) -> str:
    """One line for a batch that has ended."""
    took = ""
    if batch.finished_at:
        took = f" in {(batch.finished_at - batch.created_at).total_seconds():.1f} s"
    return (
        f"batch {batch.id} {status_text(batch.status)}{took}: {photos(batch)}, "
        f"{batch.failed_count} failed, {batch.cancelled_count} cancelled; "
        f"{plural(batch.credits_charged, 'credit')} charged{refund_note(batch)}"
    )


# -- live progress -----------------------------------------------------------------------


class BatchView:
    """Shows a batch filling up: rich progress bars on a terminal, plain lines elsewhere.

    ``update`` takes each new snapshot; ``close`` ends the live display.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self._progress: Progress | None = None
        self._batch_task: TaskID | None = None
        self._item_tasks: dict[str, TaskID] = {}
        self._seen: dict[str, GenerationStatus] = {}
        self._seen_batch: BatchStatus | None = None

    def update(self, batch: Batch) -> None:
        if self.live:
            self._update_bars(batch)
        else:
            self._print_changes(batch)

    def note(self, message: str) -> None:
        """A line about the batch's circumstances (no worker running), above the bars."""
        target = self._progress.console if self._progress is not None else self.console
        target.print(f"[yellow]{message}[/yellow]")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> BatchView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _update_bars(self, batch: Batch) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}", justify="left"),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[status]}"),
                TextColumn("{task.fields[detail]}", style="dim"),
                console=self.console,
                refresh_per_second=10,
            )
            self._progress.start()
            self._batch_task = self._progress.add_task(
                f"[bold]batch {str(batch.id)[:8]}[/bold]",
                total=batch.total_count,
                status="",
                detail="",
            )
        progress = self._progress
        assert self._batch_task is not None
        progress.update(
            self._batch_task,
            completed=ended_count(batch),
            status=status_text(batch.status),
            detail=photos(batch),
        )
        for item in sorted(batch.items, key=lambda i: i.position):
            key = str(item.id)
            if key not in self._item_tasks:
                self._item_tasks[key] = progress.add_task(
                    f"  {item.style_name}", total=1, status="", detail=""
                )
            task = self._item_tasks[key]
            running = item.status == GenerationStatus.PROCESSING
            progress.update(
                task,
                total=None if running else 1,
                completed=1 if item.status in ENDED else 0,
                status=status_text(item.status),
                detail=_item_detail(item),
            )
        if batch.status.is_final:
            progress.refresh()

    def _print_changes(self, batch: Batch) -> None:
        for item in sorted(batch.items, key=lambda i: i.position):
            key = str(item.id)
            if self._seen.get(key) != item.status:
                self._seen[key] = item.status
                detail = _item_detail(item)
                self.console.print(
                    f"  {item.style_name:<18} {status_text(item.status)}"
                    + (f"  {detail}" if detail else "")
                )
        if batch.status != self._seen_batch:
            self._seen_batch = batch.status
            self.console.print(
                f"batch {batch.id}: {status_text(batch.status)}, {photos(batch)} "
                f"({batch.progress}%)"
            )


def _item_detail(item: Generation) -> str:
    parts = []
    if item.duration_ms is not None:
        parts.append(seconds(item.duration_ms))
    if item.attempts > 1:
        parts.append(f"attempt {item.attempts}/{item.max_attempts}")
    if item.last_error and item.status != GenerationStatus.COMPLETED:
        parts.append(item.last_error[:60])
    return ", ".join(parts)
