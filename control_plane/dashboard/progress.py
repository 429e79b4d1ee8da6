"""A batch's progress over time, for the dashboard's batch page
(`GET /v1/batches/{batch_id}/progress`): its requests answered, summed at each chunk's finish
from the chunk items the tick writes, its chunks by state, and how busy its workers' engines were.

Tenant-scoped as every batch read is: another tenant's batch answers 404, as a missing one does.
The chunk items are read whole, one Query of the batch's partition (a chunk item is under 1 KB, a
200K-request batch has a few hundred); past MAX_CHUNKS the series is cut (`truncated`). A
redrive takes its requests off the chunk they first failed in, so the series after one shows
them where they finally ended, not where they first failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel

from control_plane.metering.throughput import busy_share
from control_plane.store import ChunkItem, Table
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store

MAX_POINTS = 240  # as many as the health series: the chart is a few hundred pixels wide
MAX_CHUNKS = 5000
# Chunks in these states carry their final counts and `finished_at`; a bisected (`split`)
# chunk's requests are counted in its halves, a cancelled one answered none.
RESULT_STATES = frozenset({"done", "dead", "expired"})


class ProgressPoint(BaseModel):
    at: int  # Unix seconds
    completed: int  # requests answered so far, in total
    failed: int


class BatchProgress(BaseModel):
    object: Literal["batch.progress"] = "batch.progress"
    batch_id: str
    started_at: int | None  # when it began running (in_progress_at)
    # Cumulative, oldest first: (started_at, 0, 0) once it has started, then one per second in
    # which chunks finished (at most MAX_POINTS: the last of each bucket). Requests answered by
    # chunks still running are in the batch's request_counts, not here.
    points: list[ProgressPoint]
    chunks: dict[str, int]  # by state: pending, dispatched, done, dead, split, cancelled, …
    engine_busy_share: float | None  # engine-busy seconds over the workers' spans (metering)
    workers: int  # workers that ran a finished chunk of it
    truncated: bool  # more than MAX_CHUNKS chunks: only the first were read


def batch_progress(table: Table, *, tenant_id: str, batch_id: str) -> BatchProgress:
    batch = batch_store.get_batch_item(table, batch_id=batch_id, tenant_id=tenant_id)
    chunks = chunk_store.list_chunks(table, batch_id=batch_id, limit=MAX_CHUNKS + 1)
    truncated = len(chunks) > MAX_CHUNKS
    chunks = chunks[:MAX_CHUNKS]
    started = batch.get("in_progress_at")
    busy = busy_share(chunks)
    share = busy.share
    return BatchProgress(
        batch_id=batch_id,
        started_at=started,
        points=timeline(chunks, started_at=started),
        chunks=dict(Counter(chunk["state"] for chunk in chunks)),
        engine_busy_share=None if share is None else round(share, 4),
        workers=busy.workers,
        truncated=truncated,
    )


def timeline(
    chunks: Iterable[ChunkItem], *, started_at: int | None, max_points: int = MAX_POINTS
) -> list[ProgressPoint]:
    """Requests answered so far at each second a chunk finished, from `started_at`."""
    finished = sorted(
        (int(chunk["finished_at"]), int(chunk.get("completed", 0)), int(chunk.get("failed", 0)))
        for chunk in chunks
        if chunk["state"] in RESULT_STATES and "finished_at" in chunk
    )
    start = [] if started_at is None else [ProgressPoint(at=started_at, completed=0, failed=0)]
    points: list[ProgressPoint] = []
    completed = failed = 0
    for at, done, lost in finished:
        completed, failed = completed + done, failed + lost
        if points and points[-1].at == at:
            points.pop()  # one point a second: the sum after all of them
        points.append(ProgressPoint(at=at, completed=completed, failed=failed))
    return _thinned(start + points, max_points)


def _thinned(points: list[ProgressPoint], max_points: int) -> list[ProgressPoint]:
    """At most `max_points`: the first, then the last point of each equal stretch of time, so
    the curve keeps its start, its end and its shape."""
    if len(points) <= max_points:
        return points
    first, last = points[0].at, points[-1].at
    step = -(-(last - first + 1) // (max_points - 1))  # ceil
    kept: dict[int, ProgressPoint] = {}
    for point in points[1:]:
        kept[(point.at - first) // step] = point  # the later point of a bucket wins
    return [points[0], *kept.values()]
