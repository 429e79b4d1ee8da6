"""Files completed through an upload (status `uploaded`): the tick reads them once to say
whether they are good, OpenAI's `uploaded → processed | error` (`status_details` says why).

A file posted to `POST /v1/files` is checked while it arrives; an upload's parts go straight to
S3, so nothing has read its content when `complete` answers. The tick does the same checks
(non-empty UTF-8 text; its request lines are counted, so admission can hold a batch to
`max_requests_per_batch` as for a posted file), at most CHECK_BYTES_PER_TICK a tick, resuming a
large file where the last tick stopped (the scan state is a few numbers: `textscan.py`).
"""

from __future__ import annotations

import logging

from control_plane.scheduler.context import TickContext
from control_plane.scheduler.file_expiry import remove_files
from control_plane.services.textscan import TextError, TextScan
from control_plane.store import Item
from control_plane.store import files as file_store

log = logging.getLogger("control_plane.services.files")

CHECK_BYTES_PER_TICK = 256 * 1024 * 1024
FILES_PER_TICK = 10
READ_SIZE = 1024 * 1024


def run(ctx: TickContext, *, budget: int = CHECK_BYTES_PER_TICK) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in file_store.unchecked_files(ctx.aws.table, limit=FILES_PER_TICK):
        if budget <= 0:
            break
        if file_store.is_expired(item, ctx.now):
            remove_files(ctx, [item])
            outcome = "removed"
        else:
            outcome, read = check_file(ctx, item, budget=budget)
            budget -= read
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def check_file(ctx: TickContext, item: Item, *, budget: int) -> tuple[str, int]:
    """Read the file on from where its check stopped, up to `budget` bytes; return what
    became of it (`processed`, `error`, `partial`, or `lost` to another tick) and the bytes
    read."""
    table = ctx.aws.table
    scan = TextScan.from_state(item.get("check_state"))
    start, size = scan.size, int(item["bytes"])
    end = min(size, start + budget)
    try:
        if end > start:
            _read_into(ctx, item, scan, start, end)
        if end < size:
            saved = file_store.save_check_progress(table, item, seen=start, state=scan.state())
            return ("partial" if saved else "lost"), end - start
        lines = scan.finish()
    except TextError as exc:
        done = file_store.finish_check(table, item, seen=start, status="error", details=exc.message)
        log.info("file check failed", extra={"file_id": item["id"], "reason": exc.message})
        return ("error" if done else "lost"), end - start
    done = file_store.finish_check(table, item, seen=start, status="processed", line_count=lines)
    return ("processed" if done else "lost"), end - start


def _read_into(ctx: TickContext, item: Item, scan: TextScan, start: int, end: int) -> None:
    try:
        reply = ctx.aws.s3.get_object(
            Bucket=ctx.settings.bucket_name, Key=item["s3_key"], Range=f"bytes={start}-{end - 1}"
        )
    except ctx.aws.s3.exceptions.NoSuchKey as exc:
        raise TextError("The file's content is missing.", code="file_missing") from exc
    with reply["Body"] as body:
        while piece := body.read(READ_SIZE):
            scan.feed(piece)
