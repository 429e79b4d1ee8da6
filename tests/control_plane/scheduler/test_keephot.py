"""Keep-hot: the schedule, the health judgement, and the tick keeping real runpod SDK workers
(stand-in engine) warm on the local endpoint, measured against cold starts."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from pydantic import ValidationError

from control_plane.aws import Aws
from control_plane.health.report import (
    build_report,
    endpoint_status,
    gpu_status,
    queue_status,
    workers_status,
)
from control_plane.health.sample import HealthSample, WorkerCounts, WorkerReading
from control_plane.health.schedule import in_schedule, parse_schedule
from control_plane.models import ChunkRef
from control_plane.runpod import RunPodClient
from control_plane.scheduler.context import TickContext
from control_plane.scheduler.keephot import PING_GIVE_UP_S, keep_hot
from control_plane.scheduler.policy import SchedulerState
from control_plane.settings import Settings
from control_plane.store import health as health_store
from control_plane.store.chunks import put_chunks
from infra.runpod_local.models import FINAL
from infra.stack import LocalStack, StackConfig, worker_pool
from tests.control_plane.requests import CHAT, jsonl

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
STANDIN = [sys.executable, "-m", "tests.control_plane.standin_worker"]
IDLE_TIMEOUT_S = 2.0
COLD_START_DELAY_S = 3.0
TICK_S = 0.25


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    """2024-01-01 was a Monday: day 0 is Monday, 6 Sunday."""
    return datetime(2024, 1, 1 + day, hour, minute, tzinfo=UTC)


MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


# --- the schedule ----------------------------------------------------------------------------


def test_keywords_always_never_and_pending_follow_waiting_work() -> None:
    noon = utc(WED, 12)
    assert in_schedule("always", noon, work_waiting=False)
    assert not in_schedule("never", noon, work_waiting=True)
    assert in_schedule("pending", noon, work_waiting=True)
    assert not in_schedule("pending", noon, work_waiting=False)


def test_windows_cover_day_ranges_and_single_days_with_exclusive_ends() -> None:
    schedule = "Mon-Fri 08:00-20:00, Sat 10:00-14:00"
    assert in_schedule(schedule, utc(WED, 12), work_waiting=False)
    assert in_schedule(schedule, utc(MON, 8), work_waiting=False)
    assert not in_schedule(schedule, utc(FRI, 20), work_waiting=False)
    assert not in_schedule(schedule, utc(TUE, 7, 59), work_waiting=False)
    assert in_schedule(schedule, utc(SAT, 13, 59), work_waiting=False)
    assert not in_schedule(schedule, utc(SAT, 14), work_waiting=False)
    assert not in_schedule(schedule, utc(SUN, 12), work_waiting=True)


def test_window_crossing_midnight_belongs_to_its_day_and_the_morning_after() -> None:
    schedule = "Fri 22:00-02:00"
    assert in_schedule(schedule, utc(FRI, 23), work_waiting=False)
    assert in_schedule(schedule, utc(SAT, 1, 59), work_waiting=False)
    assert not in_schedule(schedule, utc(SAT, 2), work_waiting=False)
    assert not in_schedule(schedule, utc(FRI, 21, 59), work_waiting=False)
    assert not in_schedule(schedule, utc(FRI, 1), work_waiting=False)  # Thursday's night
    assert not in_schedule(schedule, utc(SAT, 23), work_waiting=False)


def test_day_ranges_wrap_the_week_and_semicolons_and_pending_combine() -> None:
    weekend = "Fri-Mon 00:00-24:00"
    assert in_schedule(weekend, utc(SUN, 3), work_waiting=False)
    assert in_schedule(weekend, utc(MON, 23, 59), work_waiting=False)
    assert not in_schedule(weekend, utc(TUE, 12), work_waiting=False)
    mixed = "pending; sat 10:00-14:00"
    assert parse_schedule(mixed).pending
    assert in_schedule(mixed, utc(SAT, 11), work_waiting=False)
    assert in_schedule(mixed, utc(TUE, 3), work_waiting=True)
    assert not in_schedule(mixed, utc(TUE, 3), work_waiting=False)
    every_day = "06:00-07:00"
    assert all(in_schedule(every_day, utc(day, 6, 30), work_waiting=False) for day in range(7))


def test_times_in_other_zones_are_read_in_utc() -> None:
    nine_in_paris = datetime(2024, 1, 3, 9, 30, tzinfo=timezone(timedelta(hours=1)))
    assert not in_schedule("Wed 09:00-10:00", nine_in_paris, work_waiting=False)
    assert in_schedule("Wed 08:00-09:00", nine_in_paris, work_waiting=False)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("Mon-Fry 08:00-20:00", "unknown day 'Fry'"),
        ("Mon 25:00-26:00", "'25:00' is not a time"),
        ("always, Mon 08:00-10:00", "must stand alone"),
        ("", "empty keep-hot schedule"),
        ("Mon 08:00-08:00", "starts and ends at the same time"),
        ("weekdays 8-20", "cannot read 'weekdays 8-20'"),
    ],
)
def test_bad_schedules_name_the_wrong_part(schedule: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_schedule(schedule)
    assert "Mon-Fri 08:00-20:00" in str(info.value)  # and show the expected form


def test_settings_refuse_a_bad_schedule_at_start_up() -> None:
    with pytest.raises(ValidationError, match="unknown day 'Fry'"):
        Settings(keep_hot_schedule="Mon-Fry 08:00-20:00")
    assert Settings(keep_hot_schedule=" Sat 10:00-14:00 ").keep_hot_schedule == "Sat 10:00-14:00"
    assert (Settings().keep_hot_schedule, Settings().keep_hot_workers) == ("pending", 1)


# --- the judgement ---------------------------------------------------------------------------


def test_component_thresholds() -> None:
    assert [gpu_status(v) for v in (90, 75, 74.9, 50, 49.9)] == [
        "healthy",
        "healthy",
        "degraded",
        "degraded",
        "down",
    ]
    assert [workers_status(v) for v in (0.0, 0.25, 0.3, 0.5, 0.51)] == [
        "healthy",
        "healthy",
        "degraded",
        "degraded",
        "down",
    ]
    assert [queue_status(v) for v in (None, 29 * 60, 30 * 60, 7199, 7200)] == [
        "healthy",
        "healthy",
        "degraded",
        "degraded",
        "down",
    ]
    assert [endpoint_status(b) for b in ("closed", "half_open", "open")] == [
        "healthy",
        "degraded",
        "down",
    ]


def sample(at: int, *, waiting: bool, gpu: float | None = None, **extra: Any) -> HealthSample:
    readings = []
    if gpu is not None:
        report = {"status": "ok", "worker_id": "w1", "gpus": [{"utilization_percent": gpu}]}
        reading = WorkerReading.from_report(report)
        assert reading is not None
        readings.append(reading)
    fields: dict[str, Any] = {
        "at": at,
        "expires_at": at + 1,
        "schedule": "always",
        "in_schedule": True,
        "keep_hot_workers": 1,
        "work_waiting": waiting,
        "pending_chunks": 1 if waiting else 0,
        "in_flight_chunks": 0,
        "workers": WorkerCounts(idle=1),
        "readings": readings,
    }
    return HealthSample(**{**fields, **extra})


def test_gpu_is_judged_only_while_work_waits_and_overall_is_the_worst() -> None:
    idle = build_report([sample(10, waiting=False, gpu=3.0)], breaker="closed", now=20)
    assert idle.components.gpu.status == "healthy"
    assert idle.components.gpu.note and "nothing waited" in idle.components.gpu.note
    assert idle.status == "healthy"

    busy = [
        sample(10, waiting=True, gpu=40.0, workers=WorkerCounts(running=3, idle=1)),
        sample(20, waiting=True, gpu=50.0, workers=WorkerCounts(running=4)),
    ]
    report = build_report(busy, breaker="half_open", now=30)
    assert report.components.gpu.status == "down"  # mean 45 %
    assert report.components.gpu.metrics["mean_utilization_percent"] == 45.0
    assert report.components.workers.status == "healthy"  # idle share 12.5 %
    assert report.components.endpoint.status == "degraded"
    assert report.status == "down"

    stuck = [sample(10, waiting=True, oldest_pending_age_s=3 * 3600)]
    assert build_report(stuck, breaker="closed", now=20).components.queue.status == "down"
    nothing = build_report([], breaker="closed", now=20)
    assert nothing.status == "degraded" and nothing.samples == 0


# --- ping bookkeeping against a scripted endpoint (moto) -------------------------------------


@dataclass
class ScriptedRunPod(RunPodClient):
    """Answers like RunPod would, as the test scripts it; counts every call."""

    job_status: str = "IN_QUEUE"
    sent: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    health_reads: int = 0

    def run(self, job_input: dict[str, Any], **policy: Any) -> str:
        assert job_input == {"action": "health"}
        self.sent.append(f"ping-{len(self.sent)}")
        return self.sent[-1]

    def status(self, job_id: str) -> dict[str, Any]:
        report = {"status": "ok", "worker_id": "w1", "engine": {"kv_cache_usage_percent": 12.5}}
        return {"id": job_id, "status": self.job_status, "output": report}

    def cancel(self, job_id: str) -> dict[str, Any]:
        self.cancelled.append(job_id)
        return {"id": job_id, "status": "CANCELLED"}

    def health(self) -> dict[str, Any]:
        self.health_reads += 1
        return {"workers": {"idle": 1, "running": 0}, "jobs": {"inQueue": 0}}


ALWAYS_TWO = [{"keep_hot_schedule": "always", "keep_hot_workers": 2}]


@pytest.mark.parametrize("settings", ALWAYS_TWO, indirect=True)
def test_a_round_of_pings_goes_out_only_once_the_last_one_finished(aws: Aws) -> None:
    runpod = ScriptedRunPod(base_url="http://unused", endpoint_id="e", api_key="k")
    closed = SchedulerState(window=4)

    def step(now: int, state: SchedulerState = closed) -> dict[str, Any]:
        return keep_hot(TickContext(aws=aws, runpod=runpod, now=now), state)

    assert step(1000)["pings_sent"] == 2
    stalled = step(1001)
    assert (stalled["pings_sent"], stalled["pings_outstanding"]) == (0, 2)
    assert stalled["skipped"] == "previous round unfinished"
    runpod.job_status = "COMPLETED"
    harvested = step(1002)
    assert (harvested["readings"], harvested["pings_sent"]) == (2, 2)
    runpod.job_status = "IN_QUEUE"  # a cold start that never ends: given up, then resent
    assert step(1003)["pings_sent"] == 0
    resent = step(1002 + PING_GIVE_UP_S + 1)
    assert runpod.cancelled == ["ping-2", "ping-3"] and resent["pings_sent"] == 2
    assert len(runpod.sent) == 6
    reads = runpod.health_reads
    opened = step(5000, SchedulerState(window=1, breaker="open", opened_at=4990))
    assert opened["skipped"] == "breaker open" and len(runpod.sent) == 6
    assert runpod.health_reads == reads  # an open breaker leaves the endpoint alone
    samples = health_store.samples_since(aws.table, since=0, limit=100)
    assert len(samples) == 6 and all(s["expires_at"] == s["at"] + 2 * 86400 for s in samples)
    kept = HealthSample.model_validate(next(s for s in samples if s["at"] == 1002))
    assert kept.readings[0].kv_cache_usage_percent == 12.5 and kept.workers == WorkerCounts(idle=1)


def test_a_tick_that_lost_the_race_for_the_round_is_told_so(aws: Aws) -> None:
    seen = health_store.load_pings(aws.table)
    mine = seen.model_copy(update={"jobs": ["a"], "sent_at": 1})
    theirs = seen.model_copy(update={"jobs": ["b"], "sent_at": 1})
    assert health_store.save_pings(aws.table, seen, theirs, now=1)
    assert not health_store.save_pings(aws.table, seen, mine, now=1)  # keep_hot cancels "a"
    assert health_store.load_pings(aws.table).jobs == ["b"]


@pytest.mark.parametrize("settings", ALWAYS_TWO, indirect=True)
def test_waiting_chunks_keep_workers_busy_so_no_ping_is_sent(aws: Aws) -> None:
    runpod = ScriptedRunPod(base_url="http://unused", endpoint_id="e", api_key="k")
    ref = ChunkRef(
        index=0, key="batches/b/chunks/00000/input.jsonl", requests=1, bytes=9, first_line=1
    )
    put_chunks(aws.table, batch_id="batch_x", priority="normal", chunks=[ref], created_at=900)
    report = keep_hot(TickContext(aws=aws, runpod=runpod, now=1000), SchedulerState(window=4))
    assert report["skipped"] == "chunks keep the workers busy" and runpod.sent == []
    [item] = health_store.samples_since(aws.table, since=0, limit=10)
    assert (item["pending_chunks"], item["oldest_pending_age_s"]) == (1, 100)
    assert item["work_waiting"] and item["in_schedule"]


# --- the tick on a local stack ---------------------------------------------------------------


def make_stack(tmp: Path, schedule: str) -> LocalStack:
    pool = worker_pool(
        workers=0,
        max_workers=2,
        idle_timeout_s=IDLE_TIMEOUT_S,
        cold_start_delay_s=COLD_START_DELAY_S,
        command=STANDIN,
        env={"PYTHONPATH": str(REPO)},
        workdir=tmp,
    )
    settings = {"keep_hot_schedule": schedule, "keep_hot_workers": 1}
    return LocalStack(StackConfig(pool=pool, tick_interval_s=None, settings=settings)).start()


@pytest.fixture(scope="module")
def hot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = make_stack(tmp_path_factory.mktemp("hot"), "always")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = make_stack(tmp_path_factory.mktemp("cold"), "never")
    yield stack
    stack.stop()


def runpod_health(stack: LocalStack) -> dict[str, Any]:
    assert stack.endpoint is not None
    client = RunPodClient(
        base_url=stack.endpoint.client_base_url,
        endpoint_id=stack.endpoint.config.endpoint_id,
        api_key=stack.endpoint.api_key,
    )
    return client.health()


def warm(stack: LocalStack) -> int:
    workers = runpod_health(stack)["workers"]
    return int(workers["idle"]) + int(workers["running"])


def health_jobs(stack: LocalStack) -> list[Any]:
    """Every ping the endpoint received (a C-level copy: the endpoint's thread mutates it)."""
    assert stack.endpoint is not None and stack.endpoint.backend is not None
    jobs = list(stack.endpoint.backend.jobs.values())
    return [job for job in jobs if job.input == {"action": "health"}]


def tick_until(
    stack: LocalStack, done: Callable[[], bool], *, timeout: float, every: float = TICK_S
) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done after {timeout} s: {reports[-3:]}"
        reports.append(stack.tick())
        time.sleep(every)
    return reports


def run_batch(stack: LocalStack) -> float:
    """Seconds from batch creation to `completed`, ticking every 0.2 s."""
    sdk = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
    file = sdk.files.create(file=("in.jsonl", jsonl(3)), purpose="batch")
    started = time.monotonic()
    batch = sdk.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    tick_until(
        stack, lambda: sdk.batches.retrieve(batch.id).status == "completed", timeout=60, every=0.2
    )
    return time.monotonic() - started


def test_always_keeps_a_worker_warm_past_the_idle_timeout_without_piling_up_pings(
    hot: LocalStack,
) -> None:
    tick_until(hot, lambda: warm(hot) >= 1, timeout=30)
    assert hot.endpoint is not None and hot.endpoint.backend is not None
    spawned = set(hot.endpoint.backend.workers)
    pings_before = len(health_jobs(hot))
    ticks, watched = 0, time.monotonic()
    while time.monotonic() - watched < 4 * IDLE_TIMEOUT_S:
        report = hot.tick()["keep_hot"]
        ticks += 1
        outstanding = [job for job in health_jobs(hot) if job.status not in FINAL]
        assert len(outstanding) <= 1, outstanding
        assert report["pings_outstanding"] <= 1 and report["in_schedule"]
        assert warm(hot) >= 1
        time.sleep(TICK_S)
    # The same worker all along: none retired at its idle timeout and none cold-started again.
    assert set(hot.endpoint.backend.workers) == spawned and len(spawned) == 1
    sent = len(health_jobs(hot)) - pings_before
    assert 4 <= sent <= ticks, (sent, ticks)  # one ping a tick at most, and it did ping


def test_a_cold_start_holds_one_ping_and_samples_keep_readings_with_a_ttl(
    hot: LocalStack,
) -> None:
    assert hot.aws is not None
    table, start = hot.aws.table, int(time.time())
    tick_until(
        hot,
        lambda: any(
            s["readings"] for s in health_store.samples_since(table, since=start, limit=99)
        ),
        timeout=30,
    )
    samples = health_store.samples_since(table, since=start - 120, limit=10_000)
    assert samples and all(s["expires_at"] - s["at"] == 2 * 24 * 3600 for s in samples)
    read = [HealthSample.model_validate(s) for s in samples if s["readings"]]
    reading = read[0].readings[0]
    assert reading.worker_id.startswith("local-worker-") and reading.status
    assert read[0].workers is not None and read[0].in_schedule and not read[0].work_waiting
    # Every ping ever sent on this stack overlapped no other one, the cold start included.
    pings = sorted(health_jobs(hot), key=lambda job: job.created_at)
    for earlier, later in zip(pings, pings[1:], strict=False):
        assert earlier.completed_at is not None and earlier.completed_at <= later.created_at


def test_health_endpoint_answers_with_the_components(hot: LocalStack) -> None:
    tick_until(hot, lambda: warm(hot) >= 1, timeout=30)
    hot.tick()
    assert hot.api is not None
    url = f"{hot.api.url}/v1/health"
    assert httpx.get(url).status_code == 401
    reply = httpx.get(url, headers={"Authorization": f"Bearer {hot.api_key}"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    components = body["components"]
    assert set(components) == {"gpu", "workers", "queue", "endpoint"}
    assert components["endpoint"] == {
        "status": "healthy",
        "note": None,
        "metrics": components["endpoint"]["metrics"],
    }
    assert components["endpoint"]["metrics"]["breaker"] == "closed"
    assert components["workers"]["metrics"]["warm_latest"] >= 1
    assert body["samples"] >= 1 and body["object"] == "health"
    order = ["healthy", "degraded", "down"]
    worst = max((c["status"] for c in components.values()), key=order.index)
    assert body["status"] == worst


def test_keep_hot_starts_the_next_batch_sooner_than_a_cold_start(
    hot: LocalStack, cold: LocalStack
) -> None:
    tick_until(hot, lambda: warm(hot) >= 1, timeout=30)
    for _ in range(3):  # a few keep-hot rounds, as between two batches
        hot.tick()
        time.sleep(TICK_S)
    hot_s = run_batch(hot)
    tick_until(cold, lambda: warm(cold) == 0, timeout=30)
    cold_s = run_batch(cold)
    log.warning("batch creation to completion: keep-hot %.2f s, cold %.2f s", hot_s, cold_s)
    assert hot_s + 2.0 < cold_s, (hot_s, cold_s)


def test_never_sends_no_pings_and_workers_scale_to_zero(cold: LocalStack) -> None:
    assert cold.endpoint is not None and cold.endpoint.backend is not None
    if not cold.endpoint.backend.workers:
        run_batch(cold)  # a worker to scale down (the latency test usually left one)
    assert cold.endpoint.backend.workers
    reports = tick_until(cold, lambda: warm(cold) == 0, timeout=4 * IDLE_TIMEOUT_S + 10)
    for _ in range(int(2 * IDLE_TIMEOUT_S / TICK_S)):  # and it stays at zero
        reports.append(cold.tick())
        assert warm(cold) == 0 and runpod_health(cold)["workers"]["initializing"] == 0
        time.sleep(TICK_S)
    assert health_jobs(cold) == []
    assert all(not r["keep_hot"]["in_schedule"] for r in reports)
    assert all(r["keep_hot"]["pings_sent"] == 0 for r in reports)
