"""Redrive: run a finished batch's dead letters again, results merged into the same batch.

Only those requests run: their lines are cut out of the chunk inputs they came from into new
chunks, their old error lines are removed from those chunks' error objects, and the batch goes
back to `in_progress` in one transaction with the new chunk items and its tenant's counters.
The tick then runs the new chunks and finalizes the batch again into new output and error
files (the previous ones stay readable by id).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from control_plane.aws import Aws
from control_plane.errors import Conflict, InvalidRequest
from control_plane.ids import now_s
from control_plane.models import Batch
from control_plane.split import ChunkRef, chunk_key
from control_plane.store import Item, TransactionConflict, deadletters, keys
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store.table import to_attrs

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
    first = int(
        table.update(keys.batch(batch_id), "ADD chunk_seq :n", values={":n": len(groups)})[
            "chunk_seq"
        ]
    ) - len(groups)
    new_items = [_new_chunk(aws, batch, first + n, group) for n, group in enumerate(groups)]
    _reopen(aws, batch, new_items, requests=len(lines), generation=generation)
    table.client.batch_write_item  # noqa: B018 - dead letters go once the batch has reopened
    for letter in letters:
        table.delete(keys.dead_letter(batch_id, letter["custom_id"]))
    return batch_store.batch_from_item(
        batch_store.get_batch_item(table, batch_id=batch_id, tenant_id=None)
    )


def _letters(aws: Aws, batch_id: str, custom_ids: list[str] | None) -> list[Item]:
    if custom_ids is not None:
        found = [aws.table.get(keys.dead_letter(batch_id, cid)) for cid in custom_ids]
        missing = [cid for cid, item in zip(custom_ids, found, strict=True) if item is None]
        if missing:
            raise InvalidRequest(
                f"No dead letter for custom_id {missing[0]!r} in batch {batch_id}.",
                code="dead_letter_not_found",
                param="custom_ids",
            )
        return [item for item in found if item is not None]
    letters, _ = deadletters.list_dead_letters(
        aws.table, batch_id=batch_id, limit=MAX_REDRIVE, after=None
    )
    if not letters:
        raise InvalidRequest(f"Batch {batch_id} has no dead letters.", code="no_dead_letters")
    return letters


def _take_lines(
    aws: Aws, batch_id: str, chunk_id: str, ids: set[str], generation: int
) -> list[bytes]:
    """The input lines of `ids` from their chunk, whose error object loses their old lines."""
    s3, bucket = aws.s3, aws.settings.bucket_name
    chunk = aws.table.get(keys.chunk(batch_id, int(chunk_id)))
    if chunk is None:
        raise Conflict(f"Chunk {chunk_id} of batch {batch_id} is gone.", code="chunk_missing")
    taken = [raw for raw in _read(s3, bucket, chunk["input_key"]) if _custom_id(raw) in ids]
    if chunk.get("error_key"):
        kept = [raw for raw in _read(s3, bucket, chunk["error_key"]) if _custom_id(raw) not in ids]
        key = f"{chunk['error_key'].removesuffix('.jsonl')}-r{generation}.jsonl"
        s3.put_object(Bucket=bucket, Key=key, Body=b"".join(line + b"\n" for line in kept))
        aws.table.update(
            keys.chunk(batch_id, int(chunk_id)),
            "SET error_key = :key, failed = failed - :n",
            values={":key": key, ":n": len(taken)},
        )
    return taken


def _read(s3: Any, bucket: str, key: str) -> list[bytes]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    with body:
        return [line for line in body.read().split(b"\n") if line.strip()]


def _custom_id(raw: bytes) -> str | None:
    value = orjson.loads(raw).get("custom_id")
    return value if isinstance(value, str) else None


def _new_chunk(aws: Aws, batch: Item, index: int, lines: list[bytes]) -> Item:
    key = chunk_key(batch["id"], index)
    content = b"\n".join(lines) + b"\n"
    aws.s3.put_object(Bucket=aws.settings.bucket_name, Key=key, Body=content)
    ref = ChunkRef(index=index, key=key, requests=len(lines), bytes=len(content), first_line=0)
    return chunk_store.chunk_item(
        batch["id"], batch.get("priority", "normal"), ref, created_at=now_s()
    )


def _reopen(
    aws: Aws, batch: Item, new_items: list[Item], *, requests: int, generation: int
) -> None:
    table = aws.table
    update = {
        "Update": {
            "TableName": table.name,
            "Key": to_attrs(keys.batch(batch["id"])),
            "UpdateExpression": (
                "SET #status = :progress, redrives = :generation, queued = :requests, "
                "gsi2pk = :active, gsi2sk = :id REMOVE finalizing_at "
                "ADD chunks_open :chunks, n_failed :minus"
            ),
            "ConditionExpression": (
                "#status = :completed AND (attribute_not_exists(redrives) OR redrives = :seen)"
            ),
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": to_attrs(
                {
                    ":progress": "in_progress",
                    ":completed": "completed",
                    ":generation": generation,
                    ":seen": generation - 1,
                    ":requests": requests,
                    ":active": batch_store.ACTIVE,
                    ":id": batch["id"],
                    ":chunks": len(new_items),
                    ":minus": -requests,
                }
            ),
        }
    }
    tenant = {
        "Update": {
            "TableName": table.name,
            "Key": to_attrs(keys.tenant(batch["tenant_id"])),
            "UpdateExpression": "ADD active_batches :one, queued_requests :requests",
            "ExpressionAttributeValues": to_attrs({":one": 1, ":requests": requests}),
        }
    }
    try:
        table.transact([update, tenant, *(chunk_store.new_chunk_put(table, i) for i in new_items)])
    except TransactionConflict as exc:
        current = table.get(keys.batch(batch["id"]))
        raise Conflict(
            f"Batch {batch['id']} changed while it was being redriven "
            f"(now {(current or {}).get('status')}); retry.",
            code="batch_changed",
        ) from exc
