"""How busy the workers' engines were for a batch, from what its chunks recorded.

Each chunk carries the engine-busy seconds its worker reported (one clock per worker, so chunks
that overlapped on it are counted once) and when it started and ended on the worker's clock.
A batch's engine-busy share is its busy seconds over the engine time its workers gave it: for
each worker, from its first chunk's start to its last chunk's end. A share below one is what
the chunk boundaries (downloads, uploads, the pause before the next job, an empty queue) cost.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

from control_plane.store import ChunkItem


class BusyShare(BaseModel):
    busy_s: float  # engine-busy seconds reported by the batch's chunks
    span_s: float  # per worker, first chunk start to last chunk end, summed over workers
    chunks: int
    workers: int

    @property
    def share(self) -> float | None:
        return self.busy_s / self.span_s if self.span_s > 0 else None


def busy_share(chunks: Iterable[ChunkItem]) -> BusyShare:
    """The engine-busy share of the finished chunks among `chunks` (a batch's, typically)."""
    spans: dict[str, tuple[float, float]] = {}
    busy, counted = 0.0, 0
    for chunk in chunks:
        started, finished = chunk.get("run_started_at"), chunk.get("run_finished_at")
        if chunk.get("state") != "done" or not started or not finished:
            continue  # not finished, or a worker older than the busy clock
        worker = chunk.get("worker_id", "")
        first, last = spans.get(worker, (started, finished))
        spans[worker] = (min(first, started), max(last, finished))
        busy += float(chunk.get("engine_busy_s", 0.0))
        counted += 1
    return BusyShare(
        busy_s=round(busy, 3),
        span_s=round(sum(last - first for first, last in spans.values()), 3),
        chunks=counted,
        workers=len(spans),
    )
