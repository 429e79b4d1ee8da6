"""The endpoint's recent throughput, summed from the throughput buckets the tick fills with
every chunk it records (store/throughput.py), and what it predicts for a batch."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from control_plane.models import EstimateBasis
from control_plane.store import Item, Table
from control_plane.store import throughput as throughput_store

# Newest buckets first until this many chunks are covered: recent enough to follow a new
# model or GPU, enough chunks that one slow one does not swing the figures.
MIN_CHUNKS = 20
HORIZON_S = 24 * 3600


@dataclass(frozen=True)
class Rates:
    chunks: int
    requests: int
    bytes: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    engine_s: float
    latency_s: float
    queued_s: float
    workers: int  # distinct workers that ran those chunks
    since: int

    @property
    def tokens_per_engine_second(self) -> float | None:
        tokens = self.input_tokens + self.output_tokens
        return tokens / self.engine_s if self.engine_s > 0 and tokens else None

    @property
    def input_tokens_per_byte(self) -> float | None:
        return self.input_tokens / self.bytes if self.bytes and self.input_tokens else None

    @property
    def output_tokens_per_request(self) -> float | None:
        return self.output_tokens / self.requests if self.requests else None

    @property
    def overhead_per_chunk_s(self) -> float:
        """Wall time a chunk takes on a free worker beyond its engine time: dispatch, the
        transfers, the result's way back (time waiting in RunPod's queue for a busy worker is
        left out: the prediction's waves account for it)."""
        if not self.chunks:
            return 0.0
        return max(0.0, (self.latency_s - self.queued_s - self.engine_s) / self.chunks)

    def basis(self) -> EstimateBasis:
        return EstimateBasis(
            chunks=self.chunks,
            since=self.since,
            tokens_per_engine_second=self.tokens_per_engine_second,
            input_tokens_per_byte=self.input_tokens_per_byte,
            output_tokens_per_request=self.output_tokens_per_request,
            overhead_per_chunk_seconds=self.overhead_per_chunk_s,
            workers=self.workers,
        )


@dataclass(frozen=True)
class Prediction:
    engine_s: float
    duration_s: float
    workers: int


def recent_rates(table: Table, *, now: int) -> Rates | None:
    """The newest measured figures (None before any chunk was recorded in the horizon)."""
    return aggregate(throughput_store.buckets_since(table, since=now - HORIZON_S))


def aggregate(buckets: Iterable[Item], *, min_chunks: int = MIN_CHUNKS) -> Rates | None:
    """Sum buckets (newest first) until `min_chunks` chunks are covered."""
    totals = {"chunks": 0, "requests": 0, "bytes": 0, "tok_input": 0, "tok_output": 0}
    cached, engine, latency, queued, since = 0, 0.0, 0.0, 0.0, 0
    workers: set[str] = set()
    for bucket in buckets:
        for name in totals:
            totals[name] += int(bucket.get(name, 0))
        cached += int(bucket.get("tok_cached", 0))
        engine += float(bucket.get("engine_s", 0.0))
        latency += float(bucket.get("latency_s", 0.0))
        queued += float(bucket.get("queued_s", 0.0))
        workers |= set(bucket.get("workers", ()))
        since = int(bucket.get("started_at", 0))
        if totals["chunks"] >= min_chunks:
            break
    if not totals["chunks"]:
        return None
    return Rates(
        chunks=totals["chunks"],
        requests=totals["requests"],
        bytes=totals["bytes"],
        input_tokens=totals["tok_input"],
        output_tokens=totals["tok_output"],
        cached_tokens=cached,
        engine_s=engine,
        latency_s=latency,
        queued_s=queued,
        workers=len(workers),
        since=since,
    )


def predict(rates: Rates, *, tokens: float, chunks: int) -> Prediction | None:
    """Engine time at the measured tokens per engine-second; wall time as waves of chunks over
    the workers seen recently, each chunk its share of engine time plus the measured overhead.
    Assumes those workers are there again (RunPod may scale out further, or from zero)."""
    speed = rates.tokens_per_engine_second
    if speed is None or chunks < 1:
        return None
    engine = tokens / speed
    workers = max(1, min(chunks, rates.workers))
    per_chunk = engine / chunks + rates.overhead_per_chunk_s
    return Prediction(
        engine_s=engine, duration_s=math.ceil(chunks / workers) * per_chunk, workers=workers
    )
