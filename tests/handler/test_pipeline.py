"""The worker's shared in-flight budget, chunk overlap and busy clock, on a stand-in engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from handler.chunk import process_chunk
from handler.contract import WorkerIdentity
from handler.engine import Reply
from handler.pipeline import BusyClock, EngineGate
from infra.blob_server import BlobServer
from tests.support.chunks import stage_chunk
from tests.support.lines import request_line
from tests.support.standin import StandinEngine

WORKER = WorkerIdentity(
    worker_id="w1", hostname="h", pid=1, model="tiny", vllm_version="x", hotbatch_version="y"
)


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class TracingEngine:
    """Answers after one to three times `delay_s` (requests in an engine finish unevenly),
    logging which chunk each request came from as it enters; a request tagged in `stuck`
    never answers (it leaves when cancelled)."""

    delay_s: float = 0.01
    stuck: frozenset[str] = frozenset()
    entered: list[str] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    # the chunks in the engine each time a request enters
    mixes: list[set[str]] = field(default_factory=list)
    _tags: list[str] = field(default_factory=list)

    async def run(self, endpoint: str, body: dict[str, Any]) -> Reply:
        tag = str(body["tag"])
        self.entered.append(tag)
        self._tags.append(tag)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.mixes.append(set(self._tags))
        try:
            if tag in self.stuck:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay_s * (1 + len(self.entered) % 3))
            return Reply(200, {"usage": {}})
        finally:
            self.in_flight -= 1
            self._tags.remove(tag)


def test_busy_clock_counts_overlapping_requests_once() -> None:
    clock = FakeClock()
    busy = BusyClock(clock)
    busy.enter()  # t=100
    clock.now = 101
    busy.enter()  # a second request overlaps the first
    clock.now = 103
    busy.leave()
    clock.now = 104
    assert busy.seconds() == pytest.approx(4.0)  # still running: counts up to now
    busy.leave()  # t=104: idle
    clock.now = 110
    assert busy.seconds() == pytest.approx(4.0)
    busy.enter()
    clock.now = 111.5
    busy.leave()
    assert busy.seconds() == pytest.approx(5.5)
    assert busy.in_flight == 0


def test_each_busy_second_is_shared_by_the_chunks_in_the_engine() -> None:
    clock = FakeClock()
    gate = EngineGate(TracingEngine(), limit=4, clock=clock)
    older = gate.lane()
    gate.enter(older)
    clock.now += 2  # the older chunk alone: 2 s its own
    newer = gate.lane()
    gate.enter(newer)
    gate.enter(newer)
    clock.now += 3  # 1 request against 2: a third of 3 s to the older, two thirds to the newer
    gate.leave(older)
    gate.close(older)  # the older chunk ends while the newer one's requests still run
    assert older.busy_s == pytest.approx(3.0)
    clock.now += 2
    gate.leave(newer)
    gate.leave(newer)
    clock.now += 10  # idle: not busy
    gate.close(newer)
    assert newer.busy_s == pytest.approx(4.0)
    assert older.busy_s + newer.busy_s == pytest.approx(gate.busy.seconds())
    assert older.started_cold and newer.started_cold  # both began before any chunk ended
    assert not gate.lane().started_cold


def test_a_failed_chunk_keeps_its_busy_share_off_the_next_summary() -> None:
    clock = FakeClock()
    gate = EngineGate(TracingEngine(), limit=4, clock=clock)
    with gate.lane() as failed:
        gate.enter(failed)
        clock.now += 4
        gate.leave(failed)
    # (it raised: no summary reports its 4 s)
    with gate.lane() as next_one:
        gate.enter(next_one)
        clock.now += 1
        gate.leave(next_one)
    assert failed.busy_s == pytest.approx(4.0) and next_one.busy_s == pytest.approx(1.0)


async def _chunk(gate: EngineGate, tag: str, count: int) -> list[Reply]:
    with gate.lane() as lane:
        return list(
            await asyncio.gather(
                *(lane.run("/v1/chat/completions", {"tag": tag}) for _ in range(count))
            )
        )


async def test_two_chunks_share_one_budget_and_the_older_goes_first() -> None:
    engine = TracingEngine(delay_s=0.01)
    gate = EngineGate(engine, limit=4)
    older = asyncio.ensure_future(_chunk(gate, "older", 20))
    await asyncio.sleep(0)  # the older chunk's requests are all waiting for slots
    newer = asyncio.ensure_future(_chunk(gate, "newer", 20))
    await asyncio.gather(older, newer)
    assert engine.peak_in_flight == 4  # one budget for both chunks, never oversubscribed
    # Every request of the older chunk got its slot before any of the newer one...
    assert engine.entered == ["older"] * 20 + ["newer"] * 20
    # ...yet the newer chunk filled the older one's tail: they overlapped in the engine.
    assert any(mix == {"older", "newer"} for mix in engine.mixes)
    assert gate.used == 0 and gate.chunks == 0


async def test_a_chunk_that_arrives_later_ranks_behind_even_if_it_asks_first() -> None:
    engine = TracingEngine(delay_s=0.02)
    gate = EngineGate(engine, limit=2)
    first = gate.lane()
    second = gate.lane()
    # Hold both slots, then let the second (newer) lane queue before the first (older) one.
    hold = [asyncio.ensure_future(first.run("x", {"tag": "hold"})) for _ in range(2)]
    await asyncio.sleep(0)
    late = [asyncio.ensure_future(second.run("x", {"tag": "newer"})) for _ in range(3)]
    await asyncio.sleep(0)
    early = [asyncio.ensure_future(first.run("x", {"tag": "older"})) for _ in range(3)]
    await asyncio.gather(*hold, *late, *early)
    assert engine.entered == ["hold", "hold"] + ["older"] * 3 + ["newer"] * 3
    assert first.peak_chunks == second.peak_chunks == 2


async def _entered(engine: TracingEngine, tag: str, count: int) -> None:
    while engine.entered.count(tag) < count:
        await asyncio.sleep(0.001)


async def test_a_cancelled_chunk_gives_its_slots_to_the_next_one() -> None:
    # The doomed chunk's requests hold their slots until cancelled, however slowly the test
    # gets to the cancel (one that answered in time would let a fourth one in).
    engine = TracingEngine(delay_s=0.05, stuck=frozenset({"doomed"}))
    gate = EngineGate(engine, limit=3)
    doomed = asyncio.ensure_future(_chunk(gate, "doomed", 30))
    await asyncio.wait_for(_entered(engine, "doomed", 3), 5)
    survivor = asyncio.ensure_future(_chunk(gate, "survivor", 6))
    await asyncio.sleep(0.01)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    replies = await asyncio.wait_for(survivor, 5)
    assert len(replies) == 6
    assert gate.used == 0 and gate.busy.in_flight == 0
    assert engine.entered.count("doomed") == 3  # only the first slots ever reached the engine


@pytest.fixture()
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_overlapping_chunks_report_busy_time_once_and_their_overlap(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    engine = StandinEngine(delay_s=0.05)
    gate = EngineGate(engine, limit=8)
    jobs = [
        stage_chunk(blobs, [request_line(f"{n}-{i}", "hi") for i in range(40)], chunk_id=f"0000{n}")
        for n in (1, 2)
    ]
    started = time.perf_counter()
    summaries = await asyncio.gather(
        *(
            process_chunk(job, gate=gate, session=session, worker=WORKER, transfer_retries=1)
            for job in jobs
        )
    )
    wall = time.perf_counter() - started
    assert engine.peak_in_flight == 8  # the two chunks together, within the one budget
    assert [s.timings.concurrent_chunks for s in summaries] == [2, 2]
    first, second = (s.timings for s in summaries)
    assert first.started_at < second.finished_at and second.started_at < first.finished_at
    busy = sum(s.timings.engine_busy_s for s in summaries)
    # Summed over the chunks, busy time is the worker's clock: never more than the wall time
    # even though each chunk's own engine phase spans most of it.
    assert busy == pytest.approx(gate.busy.seconds(), abs=0.01)
    assert busy <= wall
    assert first.engine_s + second.engine_s > wall  # what per-chunk clocks would double count
    # 80 requests of 50 ms, 8 at a time, back to back: the engine is busy nearly throughout.
    assert busy >= 0.45
    assert max(s.timings.worker_busy_s for s in summaries) == pytest.approx(busy, abs=0.01)
