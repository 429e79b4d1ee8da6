"""Keep-hot in the tick: the ping rounds against a scripted endpoint (moto), then real runpod
SDK workers (stand-in engine) kept warm on the local stack, measured against cold starts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.health.forecast import DAY_S
from control_plane.health.sample import HealthSample, WorkerCounts
from control_plane.models import ChunkRef
from control_plane.scheduler import fair
from control_plane.scheduler.context import TickContext
from control_plane.scheduler.keephot import PING_GIVE_UP_S, keep_hot
from control_plane.scheduler.policy import SchedulerState
from control_plane.store import health as health_store
from control_plane.store.chunks import put_chunks
from infra.runpod_local.models import FINAL
from infra.stack import LocalStack, StackConfig
from infra.wait import wait_for
from tests.support.lines import CHAT, jsonl
from tests.support.stack import sdk, standin_pool

log = logging.getLogger(__name__)
IDLE_TIMEOUT_S = 2.0
COLD_START_DELAY_S = 3.0
TICK_S = 0.25


# --- ping bookkeeping against a scripted endpoint (moto) -------------------------------------


@dataclass
class ScriptedRunPod(RunPodClient):
    """Answers like RunPod would, as the test scripts it; counts every call."""

    job_status: str = "IN_QUEUE"
    delay_ms: int = 0  # RunPod's delayTime: the job's wait in the queue
    workers: dict[str, int] = field(default_factory=lambda: {"idle": 1, "running": 0})
    sent: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    health_reads: int = 0

    def run(self, job_input: dict[str, Any], **policy: Any) -> str:
        assert job_input == {"action": "health"}
        self.sent.append(f"ping-{len(self.sent)}")
        return self.sent[-1]

    def status(self, job_id: str) -> dict[str, Any]:
        report = {"status": "ok", "worker_id": "w1", "engine": {"kv_cache_usage_percent": 12.5}}
        return {
            "id": job_id,
            "status": self.job_status,
            "output": report,
            "delayTime": self.delay_ms,
        }

    def cancel(self, job_id: str) -> dict[str, Any]:
        self.cancelled.append(job_id)
        return {"id": job_id, "status": "CANCELLED"}

    def health(self) -> dict[str, Any]:
        self.health_reads += 1
        return {"workers": self.workers, "jobs": {"inQueue": 0}}


ALWAYS_TWO = [{"keep_hot_schedule": "always", "keep_hot_workers": 2}]
LEARNED = [{"keep_hot_schedule": "learned", "keep_hot_lead_s": 300, "keep_hot_tolerance_s": 900}]


@pytest.mark.parametrize("settings", LEARNED, indirect=True)
def test_learned_warms_ahead_of_a_batch_that_recurs_and_lets_go_once_it_came(aws: Aws) -> None:
    runpod = ScriptedRunPod(base_url="http://unused", endpoint_id="e", api_key="k")
    runpod.job_status = "COMPLETED"  # each round is done by the next tick
    today = 20_426 * DAY_S  # midnight UTC
    for day in range(1, 8):  # the 09:00 batch of the week before
        health_store.record_arrival(aws.table, today - day * DAY_S + 9 * 3600 + 60 * (day % 3))
    health_store.record_arrival(aws.table, today - 3 * DAY_S + 15 * 3600)  # a one-off

    def step(clock: str) -> dict[str, Any]:
        hours, minutes = (int(part) for part in clock.split(":"))
        now = today + hours * 3600 + minutes * 60
        return keep_hot(TickContext(aws=aws, runpod=runpod, now=now), SchedulerState(window=4))

    early = step("08:50")
    assert (early["work_expected"], early["pings_sent"], early["skipped"]) == (
        False,
        0,
        "out of schedule",
    )
    assert step("08:56")["pings_sent"] == 1  # one lead (300 s) before the earliest 09:00
    assert step("09:01")["pings_sent"] == 1  # no batch yet: kept warm
    health_store.record_arrival(aws.table, today + 9 * 3600 + 90)
    came = step("09:02")
    assert (came["work_expected"], came["pings_sent"]) == (False, 0)
    assert step("14:56")["pings_sent"] == 0  # the one-off 15:00 is no pattern
    sample = HealthSample.model_validate(health_store.samples_since(aws.table, since=0, limit=1)[0])
    assert sample.work_expected is False and sample.schedule == "learned"


@pytest.mark.parametrize("settings", LEARNED, indirect=True)
def test_learned_leads_by_the_cold_starts_its_pings_measured(aws: Aws) -> None:
    runpod = ScriptedRunPod(base_url="http://unused", endpoint_id="e", api_key="k")
    today = 20_426 * DAY_S
    for day in range(1, 8):
        health_store.record_arrival(aws.table, today - day * DAY_S + 9 * 3600)

    def step(clock: str) -> dict[str, Any]:
        hours, minutes = (int(part) for part in clock.split(":"))
        now = today + hours * 3600 + minutes * 60
        return keep_hot(TickContext(aws=aws, runpod=runpod, now=now), SchedulerState(window=4))

    def measured() -> list[float]:
        return health_store.load_pings(aws.table).cold_starts_s

    early = step("08:54")
    assert (early["lead_s"], early["pings_sent"]) == (300, 0)  # nothing measured: fixed lead
    assert step("08:55")["pings_sent"] == 1  # a worker is warm: this round measures nothing
    runpod.workers = {"idle": 0, "running": 0, "initializing": 0}  # the worker left meanwhile
    runpod.job_status, runpod.delay_ms = "COMPLETED", 90_000
    assert step("08:56")["pings_sent"] == 1 and measured() == []
    assert health_store.load_pings(aws.table).sent_cold  # no worker warm or starting
    runpod.delay_ms = 41_200
    step("08:57")
    assert measured() == [41.2]
    runpod.workers, runpod.delay_ms = {"idle": 0, "initializing": 1}, 99_000
    assert step("08:58")["lead_s"] == 42 + 60  # the slowest cold start and a tick
    assert measured() == [41.2, 99.0]  # the 08:57 round went out cold
    assert step("08:59")["lead_s"] == 99 + 60
    assert measured() == [41.2, 99.0]  # the 08:58 one found a worker starting: not measured
    for _ in range(6):
        runpod.workers = {"idle": 0}
        step("09:00")
    assert measured() == [99.0] * 5  # the last five
    assert step("08:40")["work_expected"] is False  # 20 minutes ahead is too early now
    sample = HealthSample.model_validate(health_store.samples_since(aws.table, since=0, limit=1)[0])
    assert sample.lead_s == 159


@pytest.mark.parametrize(
    "settings", [{**LEARNED[0], "keep_hot_lead_measured": False}], indirect=True
)
def test_a_fixed_lead_ignores_measured_cold_starts(aws: Aws) -> None:
    runpod = ScriptedRunPod(base_url="http://unused", endpoint_id="e", api_key="k")
    health_store.save_pings(
        aws.table,
        health_store.PingRound(),
        health_store.PingRound(cold_starts_s=[20.0]),
        now=1,
    )
    assert (
        keep_hot(TickContext(aws=aws, runpod=runpod, now=1000), SchedulerState(window=4))["lead_s"]
        == 300
    )


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


@pytest.mark.parametrize("settings", ALWAYS_TWO, indirect=True)
def test_waiting_chunks_keep_workers_busy_so_no_ping_is_sent(aws: Aws) -> None:
    runpod = ScriptedRunPod(base_url="http://unused", endpoint_id="e", api_key="k")
    ref = ChunkRef(
        index=0, key="batches/b/chunks/00000/input.jsonl", requests=1, bytes=9, first_line=1
    )
    put_chunks(
        aws.table,
        batch_id="batch_x",
        tenant_id="t",
        endpoint_id="e",
        priority="normal",
        chunks=[ref],
        created_at=900,
    )
    # The endpoint's dispatcher has the tenant waiting in its fair queue.
    fair.enroll(aws.table, "e", tenant_id="t", priority="normal", vclock={})
    report = keep_hot(TickContext(aws=aws, runpod=runpod, now=1000), SchedulerState(window=4))
    assert report["skipped"] == "chunks keep the workers busy" and runpod.sent == []
    [item] = health_store.samples_since(aws.table, since=0, limit=10)
    assert (item["pending_chunks"], item["oldest_pending_age_s"]) == (1, 100)
    assert item["work_waiting"] and item["in_schedule"]


# --- the tick on a local stack (stack tier) ------------------------------------------------


def make_stack(workdir: Path, schedule: str) -> LocalStack:
    pool = standin_pool(
        workdir,
        workers=0,
        max_workers=2,
        idle_timeout_s=IDLE_TIMEOUT_S,
        cold_start_delay_s=COLD_START_DELAY_S,
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
    """Tick every `every` seconds until `done`; the tick reports."""
    reports: list[dict[str, Any]] = []

    def ticked() -> bool:
        if done():
            return True
        reports.append(stack.tick())
        return False

    wait_for(ticked, lambda: f"keep-hot, last reports {reports[-3:]}", timeout=timeout, every=every)
    return reports


def run_batch(stack: LocalStack) -> float:
    """Seconds from batch creation to `completed`, ticking every 0.2 s."""
    client = sdk(stack)
    file = client.files.create(file=("in.jsonl", jsonl(3)), purpose="batch")
    started = time.monotonic()
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    tick_until(
        stack,
        lambda: client.batches.retrieve(batch.id).status == "completed",
        timeout=60,
        every=0.2,
    )
    return time.monotonic() - started


@pytest.mark.stack
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


@pytest.mark.stack
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


@pytest.mark.stack
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


@pytest.mark.stack
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


@pytest.mark.stack
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
