"""The virtual clock: an event queue in virtual seconds, and invocations charged for their calls.

An invocation (a Lambda run: a tick, a webhook, a split) runs whole when its event comes up; as
it calls AWS or RunPod, the clock moves on by each call's modelled latency, so what it does
happens at the virtual time it would, and its duration is the sum of its calls' latencies
(divided by the threads it runs them on). time_machine moves `time.time()` and `datetime.now()`
with the clock, so the control plane's own clocks read virtual time.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import time_machine

EPOCH = 1_893_456_000.0  # 2030-01-01T00:00:00Z: far from any real timestamp in the data


@dataclass
class Invocation:
    kind: str
    start: float
    end: float = 0.0
    calls: int = 0

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Clock:
    now: float = EPOCH
    _queue: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    _seq: Iterator[int] = field(default_factory=itertools.count)
    _travel: Any = None
    _coordinates: Any = None
    current: Invocation | None = None
    invocations: list[Invocation] = field(default_factory=list)
    # Calls made by this many threads at once inside an invocation (the dispatcher's pool).
    parallel: int = 1

    def start(self) -> Clock:
        self._travel = time_machine.travel(self.now, tick=False)
        self._coordinates = self._travel.start()
        return self

    def stop(self) -> None:
        if self._travel is not None:
            self._travel.stop()
            self._travel = self._coordinates = None

    def _move(self, to: float) -> None:
        self.now = to
        if self._coordinates is not None:
            self._coordinates.move_to(to)

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(when, 0.0), next(self._seq), action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    def charge(self, seconds: float) -> None:
        """A call inside the current invocation took this long (virtually)."""
        if self.current is not None:
            self.current.calls += 1
            self._move(self.now + seconds / max(1, self.parallel))

    @contextmanager
    def invocation(self, kind: str) -> Iterator[Invocation]:
        """Run one invocation from the current time; afterwards the clock returns to it (the
        invocation ran concurrently with whatever comes next)."""
        outer, started = self.current, self.now
        run = Invocation(kind=kind, start=started)
        self.current = run
        try:
            yield run
        finally:
            run.end = self.now
            self.invocations.append(run)
            self.current = outer
            if outer is None:
                self._move(started)

    def run_until(
        self,
        end: float,
        *,
        stop: Callable[[], bool] | None = None,
        report: Callable[[float], None] | None = None,
    ) -> None:
        """Run events up to `end` (or until `stop`); `report` hears the virtual time about every
        30 real seconds."""
        next_report = time.monotonic() + 30
        while self._queue and self._queue[0][0] <= end:
            when, _, action = heapq.heappop(self._queue)
            self._move(max(when, self.now))
            action()
            if stop is not None and stop():
                return
            if report is not None and time.monotonic() > next_report:
                report(self.now)
                next_report = time.monotonic() + 30
        self._move(end)
