"""A batch's `hotbatch` figures: cost, cache hit rate, throughput and ETA, derived at read time
from its counters (the engine time is stored; everything else follows from it, the usage, the
timestamps and the price)."""

from __future__ import annotations

import math
from collections.abc import Callable

from control_plane.clients.aws import Aws
from control_plane.ids import now_s
from control_plane.metering.rates import Rates, predict, recent_rates
from control_plane.models import Batch, BatchFigures

RUNNING = frozenset({"in_progress", "cancelling"})


class Figures:
    """Fills in the figures of the batches of one request; the endpoint's rates are read at
    most once, and only for a batch whose ETA needs them."""

    def __init__(self, aws: Aws, *, now: int | None = None) -> None:
        self.price = aws.settings.gpu_price_per_hour
        self.chunk_requests = aws.settings.chunk_max_requests
        self.now = now_s() if now is None else now
        self._aws = aws
        self._rates: tuple[Rates | None] | None = None

    def rates(self) -> Rates | None:
        if self._rates is None:
            self._rates = (recent_rates(self._aws.table, now=self.now),)
        return self._rates[0]

    def __call__(self, batch: Batch) -> Batch:
        return with_figures(
            batch,
            price_per_hour=self.price,
            now=self.now,
            rates=self.rates,
            chunk_requests=self.chunk_requests,
        )


def with_figures(
    batch: Batch,
    *,
    price_per_hour: float,
    now: int,
    rates: Callable[[], Rates | None],
    chunk_requests: int,
) -> Batch:
    # Cost from the engine time as shown, so the two always agree; 9 decimals keep a cent's
    # millionths on a short batch.
    engine = round(batch.hotbatch.engine_seconds, 3)
    usage = batch.usage
    tokens = usage.input_tokens + usage.output_tokens
    running = _running_seconds(batch, now)
    figures = BatchFigures(
        engine_seconds=engine,
        cost_usd=round(engine * price_per_hour / 3600, 9) if price_per_hour > 0 else None,
        cache_hit_rate=(
            round(usage.input_tokens_details.cached_tokens / usage.input_tokens, 4)
            if usage.input_tokens
            else None
        ),
        tokens_per_second=round(tokens / running, 2) if running and tokens else None,
        eta_at=(
            eta(batch, now=now, rates=rates, chunk_requests=chunk_requests)
            if batch.status == "in_progress"
            else None
        ),
    )
    return batch.model_copy(update={"hotbatch": figures})


def _running_seconds(batch: Batch, now: int) -> int | None:
    if batch.in_progress_at is None:
        return None
    end = now
    if batch.status not in RUNNING:
        ends = (
            batch.finalizing_at,
            batch.cancelled_at,
            batch.expired_at,
            batch.failed_at,
            batch.completed_at,
        )
        end = next((at for at in ends if at is not None), now)
    return max(0, end - batch.in_progress_at) or None


def eta(
    batch: Batch, *, now: int, rates: Callable[[], Rates | None], chunk_requests: int
) -> int | None:
    """From this batch's own pace once a chunk of it has finished (requests done per second
    since it started running); before that, from the endpoint's recent throughput."""
    counts = batch.request_counts
    started = batch.in_progress_at
    if started is None or not counts.total:
        return None
    done = counts.completed + counts.failed
    remaining = max(0, counts.total - done)
    if not remaining:
        return now  # every request is done: it ends as soon as it is finalized
    if done:
        return now + math.ceil(remaining * max(1, now - started) / done)
    measured = rates()
    if measured is None or not measured.requests:
        return None
    per_request = (measured.input_tokens + measured.output_tokens) / measured.requests
    chunks = math.ceil(counts.total / chunk_requests)
    prediction = predict(measured, tokens=per_request * counts.total, chunks=chunks)
    if prediction is None:
        return None
    return max(now, started + math.ceil(prediction.duration_s))
