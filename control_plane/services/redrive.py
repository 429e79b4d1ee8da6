"""Redrive: run a finished batch's dead letters again, results merged into the same batch.

Only those requests run: their lines are cut out of the chunk inputs they came from into new
chunks, their old error lines are removed from those chunks' error objects, and the batch goes
back to `in_progress` in one transaction with the new chunk items and its tenant's counters.
The endpoint's dispatcher, told that the tenant has work, runs the new chunks and the batch is
finalized again into new output and error files (the previous ones stay readable by id).
"""

from __future__ import annotations

from collections import defaultdict

import orjson

from control_plane import layout
from control_plane.clients import queues
from control_plane.clients.aws import Aws
from control_plane.errors import Conflict, InvalidRequest, NotFound
from control_plane.ids import now_s
from control_plane.metering.figures import Figures
from control_plane.models import Batch, ChunkRef
from control_plane.services import routing
from control_plane.store import BatchItem, ChunkItem, Item, TransactionConflict, deadletters
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store

MAX_REDRIVE = 50_000
# DynamoDB transactions hold at most 100 items: batch + tenant + new chunk items.
MAX_NEW_CHUNKS = 90


def redrive(aws: Aws, *, tenant_id: str, batch_id: str, custom_ids: list[str] | None) -> Batch:
    table = aws.table
    batch = batch_store.get_batch_item(table, batch_id=batch_id, tenant_id=tenant_id)
    if batch["status"] != "completed":
        raise Conflict(
            f"Batch {batch_id} is {batch['status']}: dead letters are redriven once it has "
            "completed.",
            code="batch_not_completed",
        )
    letters = _letters(aws, batch_id, custom_ids)
    by_chunk: dict[str, set[str]] = defaultdict(set)
    for letter in letters:
        by_chunk[letter["chunk_id"]].add(letter["custom_id"])
    lines: list[bytes] = []
    generation = int(batch.get("redrives", 0)) + 1
    for chunk_id, ids in sorted(by_chunk.items()):
        lines.extend(_take_lines(aws, batch_id, chunk_id, ids, generation))
    size = aws.settings.chunk_max_requests
    groups = [lines[i : i + size] for i in range(0, len(lines), size)]
    if len(groups) > MAX_NEW_CHUNKS:
        raise InvalidRequest(
            f"Redrive at most {MAX_NEW_CHUNKS * size} requests at a time; pass `custom_ids`.",
            code="too_many_to_redrive",
        )
    first = batch_store.reserve_chunk_numbers(table, batch_id, len(groups))
    new_items = [_new_chunk(aws, batch, first + n, group) for n, group in enumerate(groups)]
    try:
        batch_store.reopen_for_redrive(
            table,
            batch,
            new_chunks=[chunk_store.new_chunk_put(table, item) for item in new_items],
            requests=len(lines),
            generation=generation,
            now=now_s(),
        )
    except TransactionConflict as exc:
        current = batch_store.get_batch(table, batch_id)
        raise Conflict(
            f"Batch {batch_id} changed while it was being redriven "
            f"(now {current['status'] if current else 'gone'}); retry.",
            code="batch_changed",
        ) from exc
    # The letters go once the batch has reopened: a failure before leaves them to retry with.
    deadletters.delete_dead_letters(
        table, batch_id=batch_id, custom_ids=[letter["custom_id"] for letter in letters]
    )
    # Lost, this is re-sent by the batch's next re-check (it has chunks waiting).
    queues.announce_work(aws.queues, dict(batch), endpoint_id=_endpoint(aws, batch), now=now_s())
    return Figures(aws)(
        batch_store.batch_from_item(
            batch_store.get_batch_item(table, batch_id=batch_id, tenant_id=None)
        )
    )


def _letters(aws: Aws, batch_id: str, custom_ids: list[str] | None) -> list[Item]:
    if custom_ids is not None:
        found = deadletters.get_dead_letters(aws.table, batch_id=batch_id, custom_ids=custom_ids)
        missing = [cid for cid, item in zip(custom_ids, found, strict=True) if item is None]
        if missing:
            raise NotFound("dead letter", missing[0], param="custom_ids")
        return [item for item in found if item is not None]
    letters, _ = deadletters.list_dead_letters(
        aws.table, batch_id=batch_id, limit=MAX_REDRIVE, after=None
    )
    if not letters:
        raise Conflict(f"Batch {batch_id} has no dead letters.", code="no_dead_letters")
    return letters


def _take_lines(
    aws: Aws, batch_id: str, chunk_id: str, ids: set[str], generation: int
) -> list[bytes]:
    """The input lines of `ids` from their chunk, whose error object loses their old lines."""
    s3, bucket = aws.s3, aws.settings.bucket_name
    chunk = chunk_store.get_chunk(aws.table, batch_id=batch_id, chunk_id=chunk_id)
    if chunk is None:
        raise Conflict(f"Chunk {chunk_id} of batch {batch_id} is gone.", code="chunk_missing")
    taken = [raw for raw in layout.read_lines(s3, bucket, chunk["input_key"]) if _id(raw) in ids]
    if chunk.get("error_key"):
        errors = layout.read_lines(s3, bucket, chunk["error_key"])
        key = layout.redriven_error_key(chunk["error_key"], generation)
        layout.put_lines(s3, bucket, key, [raw for raw in errors if _id(raw) not in ids])
        chunk_store.set_error_object(aws.table, chunk, error_key=key, removed=len(taken))
    return taken


def _id(raw: bytes) -> str | None:
    value = orjson.loads(raw).get("custom_id")
    return value if isinstance(value, str) else None


def _endpoint(aws: Aws, batch: BatchItem) -> str:
    return str(
        batch.get("runpod_endpoint_id") or routing.endpoint_for(aws.settings, batch.get("model"))
    )


def _new_chunk(aws: Aws, batch: BatchItem, index: int, lines: list[bytes]) -> ChunkItem:
    key = layout.chunk_input_key(batch["id"], index)
    size = layout.put_lines(aws.s3, aws.settings.bucket_name, key, lines)
    ref = ChunkRef(index=index, key=key, requests=len(lines), bytes=size, first_line=0)
    return chunk_store.chunk_item(
        batch["id"],
        batch.get("priority", "normal"),
        ref,
        tenant_id=batch["tenant_id"],
        endpoint_id=_endpoint(aws, batch),
        created_at=now_s(),
    )
