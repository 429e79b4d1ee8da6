"""The endpoint's recent throughput, summed from the throughput buckets the tick fills with
every chunk it records (store/throughput.py), and what it predicts for a batch."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from control_plane.models import EstimateBasis
from control_plane.store import Item, Table
from control_plane.store import throughput as throughput_store
from control_plane.store.throughput import COLD_PREFIX

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
    cold: bool = False  # only workers' first chunks were measured: estimates run high

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
    """Sum buckets (newest first) until `min_chunks` chunks are covered. Workers' first chunks
    (stored apart) count only while nothing else was measured."""
    warm, cold = _Totals(), _Totals()
    for bucket in buckets:
        warm.add(bucket, "")
        cold.add(bucket, COLD_PREFIX)
        if warm.chunks >= min_chunks:
            break
    if warm.chunks:
        return warm.rates(cold=False)
    return cold.rates(cold=True) if cold.chunks else None


@dataclass
class _Totals:
    chunks: int = 0
    requests: int = 0
    bytes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    engine_s: float = 0.0
    latency_s: float = 0.0
    queued_s: float = 0.0
    since: int = 0
    workers_seen: int = 0  # the most distinct workers one bucket saw
    worker_ids: set[str] = field(default_factory=set)  # buckets written before workers_seen

    def add(self, bucket: Item, prefix: str) -> None:
        def number(name: str) -> float:
            return float(bucket.get(prefix + name, 0))

        self.chunks += int(number("chunks"))
        self.requests += int(number("requests"))
        self.bytes += int(number("bytes"))
        self.input_tokens += int(number("tok_input"))
        self.output_tokens += int(number("tok_output"))
        self.cached_tokens += int(number("tok_cached"))
        self.engine_s += number("engine_s")
        self.latency_s += number("latency_s")
        self.queued_s += number("queued_s")
        self.workers_seen = max(self.workers_seen, int(number("workers_seen")))
        if not prefix:
            self.worker_ids |= set(bucket.get("workers", ()))
        self.since = int(bucket.get("started_at", 0))

    def rates(self, *, cold: bool) -> Rates:
        return Rates(
            chunks=self.chunks,
            requests=self.requests,
            bytes=self.bytes,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_tokens=self.cached_tokens,
            engine_s=self.engine_s,
            latency_s=self.latency_s,
            queued_s=self.queued_s,
            workers=max(self.workers_seen, len(self.worker_ids)),
            since=self.since,
            cold=cold,
        )


def predict(rates: Rates, *, tokens: float, chunks: int, concurrency: int = 1) -> Prediction | None:
    """Engine time at the measured tokens per engine-second; wall time over the workers seen
    recently: each worker's engine runs its chunks' engine time one after another, while a
    chunk's overhead (transfers, dispatch, the result's way back) overlaps that of the other
    chunks it holds at once (`concurrency`, the workers' MAX_CONCURRENCY), so overheads come
    in waves of that many. Assumes those workers are there again (RunPod may scale out
    further, or from zero)."""
    speed = rates.tokens_per_engine_second
    if speed is None or chunks < 1:
        return None
    engine = tokens / speed
    workers = max(1, min(chunks, rates.workers))
    per_worker = math.ceil(chunks / workers)
    waves = math.ceil(per_worker / max(1, concurrency))
    duration = per_worker * engine / chunks + waves * rates.overhead_per_chunk_s
    return Prediction(engine_s=engine, duration_s=duration, workers=workers)
