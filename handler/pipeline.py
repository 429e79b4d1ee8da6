"""One engine, several chunks: the worker's shared in-flight budget and its engine-busy clock.

A worker runs up to `MAX_CONCURRENCY` chunks at once on its one engine, so that the next chunk's
download, parsing and first requests overlap the current chunk's tail and upload: the engine
never empties at a chunk boundary. Two chunks must not oversubscribe it, so every chunk of the
worker draws from one budget of `MAX_REQUESTS_IN_FLIGHT` requests, handed out oldest chunk
first: the older chunk drains first and the newer one only fills the room its tail leaves.

The busy clock runs while at least one request is in the engine. There is one per worker, not
per chunk, so overlapping chunks are never counted twice. Each busy second is shared among the
chunks with requests in the engine, in proportion to their requests in flight, and a chunk's
summary carries its share: summing them over a batch's chunks gives the engine's busy time for
it, and a chunk's own figure (what estimates measure throughput from) is its own work even when
it overlapped another. A chunk that began before the worker had finished any is marked
`started_cold`: it shared the fresh engine's one-time costs (compilation, empty caches).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from handler.engine import Reply

Clock = Callable[[], float]


class RequestRunner(Protocol):
    """What a chunk needs of an engine (the real one, a gate's lane, or a test stand-in)."""

    async def run(self, endpoint: str, body: dict[str, Any]) -> Reply: ...


class BusyClock:
    """Seconds during which at least one request was in flight."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._in_flight = 0
        self._since = 0.0
        self._total = 0.0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> None:
        if self._in_flight == 0:
            self._since = self._clock()
        self._in_flight += 1

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._total += self._clock() - self._since

    def seconds(self) -> float:
        if self._in_flight:
            return self._total + self._clock() - self._since
        return self._total


@dataclass(eq=False)
class Lane:
    """One chunk's door to the shared engine: a `RequestRunner` whose requests wait behind
    those of every older chunk of the worker. Use it as a context manager."""

    gate: EngineGate
    order: int
    started_cold: bool = False  # began before the worker had finished any chunk
    peak_chunks: int = 1  # chunks of the worker running at once, at most, during this one
    busy_s: float = 0.0  # this chunk's share of the busy seconds, final once it closes
    in_flight: int = 0  # its requests in the engine

    async def run(self, endpoint: str, body: dict[str, Any]) -> Reply:
        await self.gate.acquire(self.order)
        self.gate.enter(self)
        try:
            return await self.gate.engine.run(endpoint, body)
        finally:
            self.gate.leave(self)
            self.gate.release()

    def __enter__(self) -> Lane:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.gate.close(self)


@dataclass(order=True)
class _Waiter:
    order: int
    ticket: int
    future: asyncio.Future[None] = field(compare=False)


class EngineGate:
    """The worker's engine behind its in-flight budget and busy clock (one per worker, used
    from the engine's event loop only, so it needs no locks)."""

    def __init__(self, engine: RequestRunner, limit: int, clock: Clock = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("the in-flight budget must be at least 1")
        self.engine = engine
        self.limit = limit
        self.busy = BusyClock(clock)
        self._used = 0
        self._waiting: list[_Waiter] = []
        self._tickets = itertools.count()
        self._orders = itertools.count()
        self._lanes: set[Lane] = set()
        self._closed = 0
        self._shared_at = clock()
        self._clock = clock

    @property
    def used(self) -> int:
        """Slots of the budget held: requests in the engine or just handed a slot."""
        return self._used

    @property
    def chunks(self) -> int:
        return len(self._lanes)

    def lane(self) -> Lane:
        """A lane for a chunk that arrives now: it ranks behind every open lane."""
        lane = Lane(self, next(self._orders), started_cold=self._closed == 0)
        self._lanes.add(lane)
        for open_lane in self._lanes:
            open_lane.peak_chunks = max(open_lane.peak_chunks, len(self._lanes))
        return lane

    def enter(self, lane: Lane) -> None:
        """One of `lane`'s requests goes into the engine."""
        self._share()
        lane.in_flight += 1
        self.busy.enter()

    def leave(self, lane: Lane) -> None:
        self._share()
        lane.in_flight -= 1
        self.busy.leave()

    def close(self, lane: Lane) -> None:
        """A chunk ends (done, failed or cancelled): its share is final, and what a failed
        chunk kept the engine busy never lands on another."""
        self._share()
        self._lanes.discard(lane)
        self._closed += 1

    def _share(self) -> None:
        """Hand the busy time since the last event to the lanes in flight, by their requests."""
        now = self._clock()
        elapsed, self._shared_at = now - self._shared_at, now
        total = self.busy.in_flight
        if total:
            for lane in self._lanes:
                if lane.in_flight:
                    lane.busy_s += elapsed * lane.in_flight / total

    async def acquire(self, order: int) -> None:
        if self._used < self.limit and not self._waiting:
            self._used += 1
            return
        waiter = _Waiter(order, next(self._tickets), asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiting, waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release()  # the slot arrived with the cancel: pass it on
            raise

    def release(self) -> None:
        """Give a slot back, or straight to the oldest chunk's next waiting request."""
        while self._waiting:
            waiter = heapq.heappop(self._waiting)
            if not waiter.future.done():  # a cancelled waiter's future is done: skip it
                waiter.future.set_result(None)
                return
        self._used -= 1
