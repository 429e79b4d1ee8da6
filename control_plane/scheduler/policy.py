"""Dispatch policy: the GPU profiles, the adaptive in-flight window and the circuit breaker.

The state lives in one item per RunPod endpoint (store/endpoint.py) that the endpoint's
dispatcher reads once and writes once per run, conditioned on the version it read; only one
dispatcher runs per endpoint at a time (its SQS FIFO message group), so the write does not
race. Beside the window and the breaker it keeps the chunks it believes in flight (set from
RunPod's own count at every top-up), the endpoint's workersMax, the workers' measured
throughput (an EWMA over chunk summaries) that sizes new batches' chunks
(`control_plane/metering/sizing.py`), the warm workers RunPod last reported, and the fair
queue's virtual clock per priority.

The window's ceiling is the endpoint's workersMax × MAX_CONCURRENCY: RunPod starts workers only
for queued jobs, so a smaller window leaves paid-for capacity idle, and a larger one only queues
jobs behind each other (and behind other tenants'). `conservative` caps it lower.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from control_plane.observability import count
from control_plane.store import Table
from control_plane.store import endpoint as endpoint_store

Breaker = Literal["closed", "open", "half_open"]


class Profile(BaseModel):
    window_start: int  # 0: start at the ceiling (RunPod's queue, not the window, holds back)
    window_min: int
    window_max: int  # the ceiling when the endpoint's workersMax is unknown
    follow_workers_max: bool = True  # the ceiling is workersMax × MAX_CONCURRENCY once known
    max_attempts: int  # dispatches of a chunk before it is bisected
    backoff_base_s: int
    backoff_max_s: int
    execution_timeout_s: int  # RunPod's executionTimeout for one chunk
    queue_grace_s: int  # how long a job may wait in RunPod's queue before its lease ends
    slow_chunk_s: int  # a chunk slower than this shrinks the window
    breaker_failures: int  # consecutive endpoint failures that open the breaker
    breaker_cooldown_s: int  # open this long before a probe


PROFILES: dict[str, Profile] = {
    # One GPU or a new model: small window, patient timeouts, an early breaker.
    "conservative": Profile(
        window_start=1,
        window_min=1,
        window_max=4,
        follow_workers_max=False,
        max_attempts=3,
        backoff_base_s=30,
        backoff_max_s=600,
        execution_timeout_s=3600,
        queue_grace_s=1800,
        slow_chunk_s=1800,
        breaker_failures=3,
        breaker_cooldown_s=300,
    ),
    "medium": Profile(
        window_start=0,
        window_min=1,
        window_max=32,
        max_attempts=3,
        backoff_base_s=15,
        backoff_max_s=300,
        execution_timeout_s=1800,
        queue_grace_s=900,
        slow_chunk_s=900,
        breaker_failures=5,
        breaker_cooldown_s=120,
    ),
    # Many workers and a proven model: a wide window that opens fast.
    "aggressive": Profile(
        window_start=0,
        window_min=2,
        window_max=256,
        max_attempts=2,
        backoff_base_s=5,
        backoff_max_s=120,
        execution_timeout_s=900,
        queue_grace_s=600,
        slow_chunk_s=600,
        breaker_failures=10,
        breaker_cooldown_s=60,
    ),
}


# Weight of the newest chunk in the throughput averages: about the last ten chunks count.
THROUGHPUT_ALPHA = 0.2


class SchedulerState(BaseModel):
    window: int
    breaker: Breaker = "closed"
    failures: int = 0  # consecutive endpoint failures
    opened_at: int = 0
    version: int = 0
    workers: int = 0  # warm workers (idle + running) at the last RunPod /health read
    workers_max: int = 0  # the endpoint's workersMax (RunPod's REST API, or the setting)
    workers_max_at: int = 0  # when it was read
    in_flight: int = 0  # chunk jobs believed queued or running at RunPod
    # The fair queue's virtual clock per priority rank: where a tenant that starts waiting
    # enters (`scheduler/fair.py`).
    vclock: dict[str, int] = {}
    # EWMAs of what one chunk brought: requests, tokens (prompt + completion) and the engine-busy
    # seconds its worker reported. Their ratios are one worker's requests/s and tokens/s; a
    # ratio of averages stays sane when one chunk reports almost no busy time (its neighbour on
    # the worker took the busy seconds they shared).
    ewma_requests: float = 0.0
    ewma_tokens: float = 0.0
    ewma_busy_s: float = 0.0

    @property
    def requests_per_s(self) -> float | None:
        """One worker's measured requests per engine-busy second; None before any chunk."""
        return self.ewma_requests / self.ewma_busy_s if self.ewma_busy_s > 0 else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.ewma_tokens / self.ewma_busy_s if self.ewma_busy_s > 0 else None


def backoff_s(profile: Profile, attempt: int) -> int:
    return int(min(profile.backoff_max_s, profile.backoff_base_s * 2 ** max(0, attempt - 1)))


def ceiling(profile: Profile, state: SchedulerState, concurrency: int) -> int:
    """The most chunks in flight: workersMax × MAX_CONCURRENCY once known (profile allowing),
    the profile's window_max before."""
    if profile.follow_workers_max and state.workers_max > 0:
        return max(profile.window_min, state.workers_max * concurrency)
    return profile.window_max


def load(table: Table, profile: Profile, endpoint_id: str) -> SchedulerState:
    item = endpoint_store.load_scheduler_state(table, endpoint_id)
    if item is None:
        return SchedulerState(window=profile.window_start or profile.window_max)
    return SchedulerState.model_validate(item)


def save(
    table: Table,
    before: SchedulerState,
    after: SchedulerState,
    *,
    now: int,
    endpoint_id: str,
    mirror: bool = True,
) -> bool:
    """Write `after` if nobody moved the state since `before` was read; False if someone did.
    The breaker's state is mirrored to the item that admission reads (503 while open) for the
    default endpoint (`mirror`)."""
    if after.model_dump(exclude={"version"}) == before.model_dump(exclude={"version"}):
        return True
    state = after.model_dump(exclude={"version"})
    if not endpoint_store.save_scheduler_state(
        table, endpoint_id, state, seen=before.version, now=now
    ):
        return False
    if after.breaker == "open" and before.breaker != "open":
        # Counted here, where the open state is saved once, so an alarm sees each opening once.
        count("BreakerOpened")
    if not mirror:
        return True
    if after.breaker != before.breaker:
        reason = (
            f"{after.failures} consecutive endpoint failures" if after.breaker == "open" else ""
        )
        endpoint_store.set_endpoint_state(table, state=after.breaker, reason=reason)
    return True


def on_success(
    state: SchedulerState, profile: Profile, *, seconds: float, ceiling: int
) -> SchedulerState:
    """One more chunk in flight for a chunk that finished in good time, one fewer for a slow
    one. The breaker is left alone: a worker's result says nothing of the client API (/run)
    that the breaker guards, and closing it here would reopen admission mid-outage. Only a
    dispatch that succeeds (the half-open probe) closes it."""
    if seconds > profile.slow_chunk_s:
        return on_slow(state, profile)
    return state.model_copy(update={"window": min(ceiling, state.window + 1)})


def on_slow(state: SchedulerState, profile: Profile) -> SchedulerState:
    """One fewer in flight. Per chunk, not halving: on a fleet of a thousand workers one slow
    or failed chunk a minute would otherwise keep the window at half its ceiling; a storm of
    them (every chunk failing) still closes it as fast as they come."""
    return state.model_copy(update={"window": max(profile.window_min, state.window - 1)})


def on_chunk_failure(state: SchedulerState, profile: Profile) -> SchedulerState:
    """A chunk that failed or timed out on a worker: one fewer in flight."""
    return on_slow(state, profile)


def on_endpoint_failure(state: SchedulerState, profile: Profile, *, now: int) -> SchedulerState:
    """The endpoint itself failed (5xx, 429, timeout): count it; open the breaker at the limit
    (or at once when a half-open probe fails)."""
    failures = state.failures + 1
    update: dict[str, Any] = {
        "failures": failures,
        "window": max(profile.window_min, state.window // 2),
    }
    if state.breaker == "half_open" or failures >= profile.breaker_failures:
        update.update(breaker="open", opened_at=now)
    return state.model_copy(update=update)


def on_throughput(
    state: SchedulerState, *, requests: int, tokens: int, busy_s: float
) -> SchedulerState:
    """Fold one finished chunk into the throughput averages (the first chunk seeds them)."""
    if requests <= 0 or busy_s <= 0:
        return state
    if state.ewma_busy_s <= 0:
        return state.model_copy(
            update={"ewma_requests": requests, "ewma_tokens": tokens, "ewma_busy_s": busy_s}
        )
    a = THROUGHPUT_ALPHA
    return state.model_copy(
        update={
            "ewma_requests": round((1 - a) * state.ewma_requests + a * requests, 3),
            "ewma_tokens": round((1 - a) * state.ewma_tokens + a * tokens, 3),
            "ewma_busy_s": round((1 - a) * state.ewma_busy_s + a * busy_s, 4),
        }
    )


def worker_floor(state: SchedulerState, concurrency: int) -> int:
    """Chunks in flight that keep every warm worker's `MAX_CONCURRENCY` slots full, so each
    takes its next chunk while the current one drains (at least one worker's worth: RunPod
    starts workers for queued jobs)."""
    return concurrency * max(1, state.workers)


def within(state: SchedulerState, ceiling: int) -> SchedulerState:
    """The window inside [window_min, ceiling] (the ceiling moves with workersMax)."""
    if state.window <= ceiling:
        return state
    return state.model_copy(update={"window": ceiling})


def on_endpoint_success(state: SchedulerState) -> SchedulerState:
    return state.model_copy(update={"failures": 0, "breaker": "closed"})


def on_endpoint_answer(state: SchedulerState) -> SchedulerState:
    """Another client-API call worked (a status poll): the failures were not consecutive.
    An open or half-open breaker still waits for its probe."""
    if state.breaker != "closed" or not state.failures:
        return state
    return state.model_copy(update={"failures": 0})


def admit(
    state: SchedulerState, profile: Profile, *, now: int, floor: int = 0, ceiling: int = 0
) -> tuple[SchedulerState, int]:
    """How many chunks may be in flight after this run: none while open, one probe once the
    cooldown has passed (half-open), the window otherwise (the caller subtracts what is in
    flight). A closed breaker allows at least `floor` (`worker_floor`), within the ceiling."""
    if state.breaker == "open":
        if now - state.opened_at < profile.breaker_cooldown_s:
            return state, 0
        return state.model_copy(update={"breaker": "half_open"}), 1
    if state.breaker == "half_open":
        return state, 1
    return state, max(state.window, min(floor, ceiling or profile.window_max))
