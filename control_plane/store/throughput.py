"""The endpoint's measured throughput: one `THROUGHPUT` / `BUCKET#{start:010d}` item per five
minutes, to which each recorded chunk adds its figures (requests, bytes, tokens, engine, wall
and queued seconds) and, for a worker's first chunk in the bucket, one to `workers_seen`.
Estimates and first ETAs read the newest ones. The item's size does not grow with the fleet
(it once held the set of every worker's id: each write then cost W/64 units).

Plain `ADD` updates, outside the chunk's transaction: concurrent writers never conflict on this
one hot item, and a sample lost to a crash between the two writes only makes an estimate rest
on one chunk fewer.
"""

from __future__ import annotations

from typing import Any, TypedDict

from control_plane.store import keys
from control_plane.store.table import Item, Table

BUCKET_S = 300
COLD_PREFIX = "cold_"
TTL_S = 2 * 24 * 3600


class ChunkFigures(TypedDict):
    chunks: int
    requests: int
    bytes: int
    tok_input: int
    tok_output: int
    tok_cached: int
    engine_s: float
    latency_s: float  # dispatch → result recorded
    queued_s: float  # of which in RunPod's queue, waiting for a worker


def first_chunk_of(table: Table, *, worker: str, at: int) -> tuple[bool, bool]:
    """Count a chunk for the worker process `worker`: (its first chunk, which pays for what a
    fresh engine does once (grammar compilation, empty caches); its first in this bucket)."""
    start = at - at % BUCKET_S
    before = table.update(
        keys.throughput_worker(worker),
        "ADD chunks :one SET expires_at = :ttl, last_bucket = :bucket",
        values={":one": 1, ":ttl": at + TTL_S, ":bucket": start},
        returns="ALL_OLD",
    )
    return int(before.get("chunks", 0)) == 0, before.get("last_bucket") != start


def add_chunk(
    table: Table, *, at: int, figures: ChunkFigures, new_worker: bool, cold: bool = False
) -> None:
    """Add a chunk's figures to its bucket; a worker's first chunk under `cold_…` names, which
    estimates fall back on only while nothing else was measured."""
    start = at - at % BUCKET_S
    prefix = COLD_PREFIX if cold else ""
    names = {f"#f{i}": prefix + name for i, name in enumerate(figures)}
    values: dict[str, Any] = {f":f{i}": value for i, value in enumerate(figures.values())}
    adds = [f"#f{i} :f{i}" for i in range(len(figures))]
    if new_worker:
        # The distinct workers that ran chunks in the bucket (cold or warm: one name for both).
        adds.append("workers_seen :one")
        values[":one"] = 1
    values.update({":start": start, ":ttl": start + BUCKET_S + TTL_S})
    table.update(
        keys.throughput_bucket(start),
        "ADD " + ", ".join(adds) + " SET started_at = :start, expires_at = :ttl",
        names=names,
        values=values,
    )


def buckets_since(table: Table, *, since: int, limit: int = 600) -> list[Item]:
    """The buckets that started at or after `since`, newest first."""
    items, _ = table.query_page(
        index=None,
        key_name="pk",
        key_value=keys.THROUGHPUT,
        limit=limit,
        newest_first=True,
        sort_condition=("sk", ">=", keys.throughput_bucket(since - since % BUCKET_S)["sk"]),
    )
    return items
