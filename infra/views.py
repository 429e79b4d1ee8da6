"""What the CLI shows, with rich: a batch's live progress (requests done and failed, tokens per
second, ETA, cost so far) and the tables of `batches list|get`, `dead-letters`, `estimate`,
`files list|get` and `health`.

Progress goes to stderr, so stdout stays the command's result. On a terminal it is a live bar;
in a pipe or a CI log it is one plain line whenever something moved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from openai.types import Batch, FileObject

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "expired": "red",
    "cancelled": "yellow",
    "cancelling": "yellow",
    "in_progress": "cyan",
    "finalizing": "cyan",
    "validating": "blue",
    "healthy": "green",
    "degraded": "yellow",
    "down": "red",
}


def figures(batch: Batch) -> dict[str, Any]:
    """The `hotbatch` extra of a Batch (the SDK keeps unknown fields as plain values)."""
    value = getattr(batch, "hotbatch", None)
    return value if isinstance(value, dict) else {}


def counts(batch: Batch) -> tuple[int, int, int]:
    """(total, completed, failed)."""
    c = batch.request_counts
    return (c.total, c.completed, c.failed) if c else (0, 0, 0)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24}d{hours % 24:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def money(value: float | None) -> str:
    if value is None:
        return "–"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def eta_text(eta_at: int | None, *, now: float | None = None) -> str:
    if eta_at is None:
        return "–"
    return duration(eta_at - (time.time() if now is None else now))


def progress_fields(batch: Batch) -> dict[str, Any]:
    extra = figures(batch)
    _, _, failed = counts(batch)
    rate = extra.get("tokens_per_second")
    return {
        "status": f"[{STATUS_STYLE.get(batch.status, 'white')}]{batch.status}[/]",
        "failed": f"{failed} failed",
        "rate": f"{rate:,.0f} tok/s" if rate else "– tok/s",
        "eta": f"ETA {eta_text(extra.get('eta_at'))}",
        "cost": money(extra.get("cost_usd")),
    }


def progress_line(batch: Batch) -> str:
    """The same figures as the live bar, as one plain line."""
    total, completed, failed = counts(batch)
    fields = progress_fields(batch)
    return (
        f"{batch.id} {batch.status:<11} {completed + failed}/{total} done, {fields['failed']}, "
        f"{fields['rate']}, {fields['eta']}, cost {fields['cost']}"
    )


def follow(
    fetch: Callable[[], Batch],
    console: Console,
    *,
    interval: float = 2.0,
    timeout: float | None = None,
    stop: threading.Event | None = None,
) -> Batch:
    """Poll a batch until it ends (or `timeout` seconds, or `stop`), showing its progress."""
    stop = stop or threading.Event()
    deadline = None if timeout is None else time.monotonic() + timeout
    batch = fetch()

    def over() -> bool:
        return (
            batch.status in TERMINAL
            or stop.is_set()
            or (deadline is not None and time.monotonic() > deadline)
        )

    if not console.is_terminal:
        last = ""
        while True:
            line = progress_line(batch)
            if line != last:
                console.print(line, highlight=False, soft_wrap=True)
                last = line
            if over():
                return batch
            stop.wait(interval)
            batch = fetch()
    with Progress(
        TextColumn("{task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
        TextColumn("{task.fields[cost]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        total, completed, failed = counts(batch)
        task = bar.add_task(batch.id, total=total or None, **progress_fields(batch))
        while True:
            total, completed, failed = counts(batch)
            bar.update(
                task,
                total=total or None,
                completed=completed + failed,
                **progress_fields(batch),
            )
            if over():
                return batch
            stop.wait(interval)
            batch = fetch()


def transfer_bar(console: Console, description: str, total: int) -> tuple[Progress, Any]:
    """A byte progress bar (uploads, downloads); the caller enters the Progress."""
    bar = Progress(
        TextColumn(description),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    return bar, bar.add_task(description, total=total)


def batches_table(batches: Iterable[Batch]) -> Table:
    batches = list(batches)
    table = Table(title="batches", box=box.SIMPLE_HEAD)
    # Ids are copied from here: never cut one, however narrow the terminal.
    table.add_column("id", no_wrap=True, min_width=max((len(b.id) for b in batches), default=2))
    table.add_column("status", no_wrap=True)
    for column in ("done", "failed", "tok/s", "ETA", "cost"):
        table.add_column(column, justify="right", no_wrap=column in ("done", "cost"))
    for batch in batches:
        total, completed, failed = counts(batch)
        extra = figures(batch)
        rate = extra.get("tokens_per_second")
        table.add_row(
            batch.id,
            f"[{STATUS_STYLE.get(batch.status, 'white')}]{batch.status}[/]",
            f"{completed + failed}/{total}",
            str(failed),
            f"{rate:,.0f}" if rate else "–",
            eta_text(extra.get("eta_at")),
            money(extra.get("cost_usd")),
        )
    return table


def batch_view(batch: Batch) -> Table:
    """One batch, field by field (`batches get`): where it stands, its files, and why it
    failed when it did."""
    total, completed, failed = counts(batch)
    extra = figures(batch)
    rate = extra.get("tokens_per_second")
    ended = batch.cancelled_at
    rows = [
        ("status", f"[{STATUS_STYLE.get(batch.status, 'white')}]{batch.status}[/]"),
        ("endpoint", batch.endpoint),
        ("priority", str(getattr(batch, "priority", None) or "–")),
        ("done", f"{completed + failed:,}/{total:,} ({failed:,} failed)"),
        ("tokens/s", f"{rate:,.0f}" if rate else "–"),
        ("ETA", eta_text(extra.get("eta_at"))),
        ("engine time", duration(extra.get("engine_seconds"))),
        ("cost", money(extra.get("cost_usd"))),
        ("created", utc(batch.created_at)),
        ("ended", utc(batch.completed_at or batch.failed_at or batch.expired_at or ended)),
        ("input file", batch.input_file_id),
        ("output file", batch.output_file_id or "–"),
        ("error file", batch.error_file_id or "–"),
    ]
    if batch.metadata:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in batch.metadata.items())))
    errors = batch.errors.data if batch.errors and batch.errors.data else []
    for error in errors[:5]:
        where = f"line {error.line}: " if error.line else ""
        rows.append(("error", f"{where}{error.code or ''} {error.message or ''}".strip()))
    if len(errors) > 5:
        rows.append(("error", f"… and {len(errors) - 5} more (--json shows them all)"))
    return _fields(batch.id, rows)


def files_table(files: Iterable[FileObject], *, now: float | None = None) -> Table:
    files = list(files)
    now = time.time() if now is None else now
    # No padding at the edges: the id, a name and five short columns fit 80 characters.
    table = Table(title="files", box=box.SIMPLE_HEAD, pad_edge=False)
    # Ids are copied from here: never cut one, however narrow the terminal.
    table.add_column("id", no_wrap=True, min_width=max((len(f.id) for f in files), default=2))
    table.add_column("filename", overflow="fold")
    table.add_column("purpose", overflow="fold")
    table.add_column("bytes", justify="right")
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("expires", justify="right", no_wrap=True)
    for file in files:
        expires = file.expires_at
        table.add_row(
            file.id,
            file.filename,
            file.purpose,
            f"{file.bytes:,}",
            duration(now - file.created_at),
            "never" if not expires else "expired" if expires <= now else duration(expires - now),
        )
    return table


def file_view(file: FileObject) -> Table:
    rows = [
        ("filename", file.filename),
        ("purpose", file.purpose),
        ("bytes", f"{file.bytes:,}"),
        ("created", utc(file.created_at)),
        ("expires", utc(file.expires_at) if file.expires_at else "never"),
        ("status", file.status or "–"),
    ]
    return _fields(file.id, rows)


def utc(at: int | None, *, zone: bool = True) -> str:
    from datetime import UTC, datetime

    shape = "%Y-%m-%d %H:%M UTC" if zone else "%Y-%m-%d %H:%M"
    return "–" if not at else datetime.fromtimestamp(at, UTC).strftime(shape)


def _fields(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, box=box.SIMPLE)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    return table


def dead_letters_table(batch_id: str, letters: list[dict[str, Any]]) -> Table:
    table = Table(title=f"dead letters of {batch_id}")
    table.add_column("custom_id", no_wrap=True)
    for column in ("status", "code", "attempts", "message"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(
            str(letter["custom_id"]),
            str(letter.get("status_code", "")),
            str(letter.get("code") or letter.get("type") or ""),
            str(letter.get("attempts", "")),
            str(letter.get("message", ""))[:300],
        )
    return table


def estimate_table(estimate: dict[str, Any]) -> Table:
    table = Table(title=f"estimate for {estimate['input_file_id']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    basis = estimate.get("basis") or {}
    rows = [
        ("requests", f"{estimate['requests']:,}"),
        ("chunks", f"{estimate['chunks']:,}"),
        ("input tokens", f"{estimate['input_tokens']:,} ({estimate['input_tokens_method']})"),
        ("output tokens", f"{estimate['output_tokens']:,}"),
        ("engine time", duration(estimate.get("engine_seconds"))),
        ("duration", duration(estimate.get("duration_seconds"))),
        ("cost", money(estimate.get("cost_usd"))),
        ("measured on", f"{basis.get('chunks', 0)} recent chunk(s)"),
        ("tokens / engine-second", _number(basis.get("tokens_per_engine_second"))),
        ("workers seen", str(basis.get("workers", "–"))),
    ]
    for what, value in rows:
        table.add_row(what, value)
    return table


def health_table(health: dict[str, Any]) -> Table:
    status = health["status"]
    table = Table(
        title=f"health: [{STATUS_STYLE.get(status, 'white')}]{status}[/] "
        f"({health.get('samples', 0)} samples in the last {duration(health.get('window_s'))})"
    )
    for column in ("component", "status", "note", "metrics"):
        table.add_column(column, overflow="fold")
    for name, component in health["components"].items():
        metrics = ", ".join(
            f"{key}={_number(value)}"
            for key, value in component.get("metrics", {}).items()
            if value is not None
        )
        table.add_row(
            name,
            f"[{STATUS_STYLE.get(component['status'], 'white')}]{component['status']}[/]",
            component.get("note") or "",
            metrics,
        )
    return table


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)
