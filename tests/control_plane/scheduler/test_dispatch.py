"""One endpoint's dispatcher on moto and SQS (mock_aws), against a scripted RunPod client API:
the window it fills, how it meets RunPod's limits, what results and top-ups do to it."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from control_plane.clients import queues
from control_plane.clients.aws import Aws
from control_plane.clients.runpod import EndpointError, RunPodClient
from control_plane.messages import ResultEvent, TopUpEvent, WorkEvent
from control_plane.models import ChunkRef, CreateBatchBody
from control_plane.scheduler import dispatch, policy
from control_plane.scheduler.context import TickContext
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from tests.support.api import stored_file

ENDPOINT = "ep"
TENANT = "tenant-a"
SETTINGS = {"runpod_endpoint_id": ENDPOINT, "worker_concurrency": 2}
ON_ENDPOINT = pytest.mark.parametrize("settings", [SETTINGS], indirect=True)


@dataclass
class ScriptedRunPod(RunPodClient):
    """Queues every /run (or answers `refuse` with that status), and reports `queued` jobs."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    refuse: int | None = None
    queued: int = 0
    ids: Iterator[int] = field(default_factory=itertools.count)

    def run(self, job_input: dict[str, Any], **policy: Any) -> str:
        if self.refuse is not None:
            raise EndpointError(f"HTTP {self.refuse}", status=self.refuse)
        self.sent.append(job_input)
        return f"job-{next(self.ids)}"

    def health(self) -> dict[str, Any]:
        return {"jobs": {"inQueue": self.queued, "inProgress": 0}, "workers": {"idle": 3}}


@pytest.fixture()
def runpod() -> ScriptedRunPod:
    return ScriptedRunPod(base_url="http://unused", endpoint_id=ENDPOINT, api_key="k")


def ctx_of(aws: Aws, runpod: ScriptedRunPod) -> TickContext:
    return TickContext(aws=aws, runpod=runpod, now=int(time.time()), pause=lambda _: None)


def running_batch(aws: Aws, chunks: int) -> str:
    """An in-progress batch of `chunks` pending chunks (as a split leaves it)."""
    file_id = stored_file(aws, b'{"a": 1}\n', line_count=1, tenant_id=TENANT)
    body = CreateBatchBody(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    from control_plane.services.batches import create_batch

    batch = create_batch(aws, tenant_id=TENANT, body=body)
    item = batch_store.get_batch(aws.table, batch.id)
    assert item is not None
    refs = [
        ChunkRef(index=n, key=f"batches/{batch.id}/{n}", requests=10, bytes=100, first_line=1)
        for n in range(chunks)
    ]
    chunk_store.put_chunks(
        aws.table,
        batch_id=batch.id,
        tenant_id=TENANT,
        endpoint_id=ENDPOINT,
        priority="normal",
        chunks=refs,
        created_at=1,
    )
    batch_store.transition(
        aws.table,
        item,
        expect={"validating"},
        to="in_progress",
        at=1,
        sets={"chunks_open": chunks, "n_total": 10 * chunks},
    )
    return batch.id


def work(batch_id: str) -> WorkEvent:
    return WorkEvent(endpoint_id=ENDPOINT, at=1, tenant_id=TENANT, batch_id=batch_id)


def queued_dispatch_events(aws: Aws) -> list[str]:
    return [body for _, body in queues.receive(aws.queues, queues.DISPATCH)]


@ON_ENDPOINT
def test_the_window_opens_to_workers_max_times_concurrency_and_no_further(
    aws: Aws, runpod: ScriptedRunPod
) -> None:
    batch_id = running_batch(aws, 40)
    topup = TopUpEvent(endpoint_id=ENDPOINT, at=1, workers_max=7)
    report = dispatch.run(ctx_of(aws, runpod), [work(batch_id), topup])[ENDPOINT]
    assert (report["window"], report["sent"], len(runpod.sent)) == (14, 14, 14)
    state = policy.load(aws.table, policy.PROFILES["medium"], ENDPOINT)
    assert (state.workers_max, state.in_flight) == (7, 14)
    # Nothing frees a slot: the next run sends nothing more.
    assert dispatch.run(ctx_of(aws, runpod), [work(batch_id)])[ENDPOINT]["sent"] == 0


@ON_ENDPOINT
def test_each_result_frees_a_slot_for_the_next_chunk(aws: Aws, runpod: ScriptedRunPod) -> None:
    batch_id = running_batch(aws, 20)
    topup = TopUpEvent(endpoint_id=ENDPOINT, at=1, workers_max=2)
    dispatch.run(ctx_of(aws, runpod), [work(batch_id), topup])
    assert len(runpod.sent) == 4
    done = [
        ResultEvent(
            endpoint_id=ENDPOINT,
            at=2,
            batch_id=batch_id,
            chunk_id=f"{n:05d}",
            attempt=1,
            tenant_id=TENANT,
            outcome="done",
            requests=10,
            busy_s=5.0,
        )
        for n in range(3)
    ]
    report = dispatch.run(ctx_of(aws, runpod), done)[ENDPOINT]
    assert report["sent"] == 3 and len(runpod.sent) == 7
    state = policy.load(aws.table, policy.PROFILES["medium"], ENDPOINT)
    assert state.requests_per_s == pytest.approx(2.0)  # 10 requests per 5 busy seconds


@ON_ENDPOINT
def test_a_top_up_takes_runpods_own_count_over_the_estimate(
    aws: Aws, runpod: ScriptedRunPod
) -> None:
    batch_id = running_batch(aws, 20)
    dispatch.run(
        ctx_of(aws, runpod), [work(batch_id), TopUpEvent(endpoint_id=ENDPOINT, at=1, workers_max=4)]
    )
    assert len(runpod.sent) == 8
    # RunPod holds only 5 of them (results whose events were lost): 3 slots are free.
    runpod.queued = 5
    report = dispatch.run(ctx_of(aws, runpod), [TopUpEvent(endpoint_id=ENDPOINT, at=2)])[ENDPOINT]
    assert report["sent"] == 3 and report["in_flight"] == 8


@ON_ENDPOINT
def test_a_429_slows_dispatch_down_without_counting_against_the_endpoint(
    aws: Aws, runpod: ScriptedRunPod
) -> None:
    batch_id = running_batch(aws, 10)
    runpod.refuse = 429
    topup = TopUpEvent(endpoint_id=ENDPOINT, at=1, workers_max=4)
    for _ in range(policy.PROFILES["medium"].breaker_failures + 1):  # past the breaker's count
        report = dispatch.run(ctx_of(aws, runpod), [work(batch_id), topup])[ENDPOINT]
        assert report["sent"] == 0
    state = policy.load(aws.table, policy.PROFILES["medium"], ENDPOINT)
    assert (state.breaker, state.failures, state.window) == ("closed", 0, 8)
    # Every refused chunk went back unspent, and a "continue" top-up is queued to try again.
    assert {
        chunk_store.tries(c) for c in chunk_store.list_chunks(aws.table, batch_id=batch_id)
    } == {0}
    assert any('"reason":"continue"' in body for body in queued_dispatch_events(aws))


@ON_ENDPOINT
def test_5xx_answers_open_the_breaker(aws: Aws, runpod: ScriptedRunPod) -> None:
    batch_id = running_batch(aws, 10)
    runpod.refuse = 502
    for _ in range(policy.PROFILES["medium"].breaker_failures):
        dispatch.run(ctx_of(aws, runpod), [work(batch_id)])
    assert policy.load(aws.table, policy.PROFILES["medium"], ENDPOINT).breaker == "open"


class SendingClock:
    """Stands in for the `time` module inside `dispatch` (the pacing clock): the sends take
    half a second, however busy the machine running the test is."""

    def __init__(self) -> None:
        self.readings = iter([1000.0, 1000.5])

    def time(self) -> float:
        return next(self.readings)


@pytest.mark.parametrize("settings", [{**SETTINGS, "dispatch_runs_per_s": 10}], indirect=True)
def test_one_run_sends_at_most_its_cap_at_the_paced_rate_and_queues_the_rest(
    aws: Aws, runpod: ScriptedRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cap of 20 (200 as shipped): the same comparisons, a tenth of the sends.
    monkeypatch.setattr(dispatch, "MAX_PER_RUN", 20)
    batch_id = running_batch(aws, dispatch.MAX_PER_RUN + 5)
    waited: list[float] = []
    ctx = TickContext(aws=aws, runpod=runpod, now=int(time.time()), pause=waited.append)
    topup = TopUpEvent(endpoint_id=ENDPOINT, at=1, workers_max=1000)
    monkeypatch.setattr(dispatch, "time", SendingClock())
    report = dispatch.run(ctx, [work(batch_id), topup])[ENDPOINT]
    assert report["sent"] == dispatch.MAX_PER_RUN == len(runpod.sent)
    # At 10 /run a second, 20 sends take at least 2 s: the run waited out the 1.5 s that
    # sending them did not take.
    assert waited == [pytest.approx(1.5)]
    assert any('"reason":"continue"' in body for body in queued_dispatch_events(aws))


@ON_ENDPOINT
def test_every_job_carries_its_tenants_cache_salt_and_no_other(
    aws: Aws, runpod: ScriptedRunPod
) -> None:
    batch_id = running_batch(aws, 3)
    topup = TopUpEvent(endpoint_id=ENDPOINT, at=1, workers_max=2)
    dispatch.run(ctx_of(aws, runpod), [work(batch_id), topup])
    salts = {job["cache_salt"] for job in runpod.sent}
    assert salts == {dispatch.cache_salt(ctx_of(aws, runpod).webhook_secret, TENANT)}
    assert dispatch.cache_salt("s", TENANT) != dispatch.cache_salt("s", "tenant-b")
    assert dispatch.cache_salt("s", TENANT) != dispatch.cache_salt("other secret", TENANT)
    assert TENANT not in salts.pop()  # the salt does not name the tenant


@pytest.mark.parametrize(
    "settings",
    [{**SETTINGS, "public_url": "https://hb.example", "result_check_s": 300}],
    indirect=True,
)
def test_a_job_sent_without_a_webhook_is_asked_about_every_sweep_whoever_sweeps(
    aws: Aws, runpod: ScriptedRunPod
) -> None:
    from control_plane.scheduler import sweep

    batch_id = running_batch(aws, 2)
    polling = dataclasses.replace(ctx_of(aws, runpod), webhook_secret="")  # sends no webhooks
    dispatch.run(polling, [work(batch_id), TopUpEvent(endpoint_id=ENDPOINT, at=1, workers_max=1)])
    sent = {c["chunk_id"]: c for c in chunk_store.list_chunks(aws.table, batch_id=batch_id)}
    assert [c["webhook"] for c in sent.values() if c["state"] == "dispatched"] == [False, False]

    # A sweep of a context that does send webhooks finds the job still running: it must ask
    # again at the next sweep, not after the 300 s safety net of a webhook that never comes.
    hooked = dataclasses.replace(ctx_of(aws, runpod), webhook_secret="s")
    runpod.status = lambda job_id: {"id": job_id, "status": "IN_PROGRESS"}  # type: ignore[method-assign]
    for chunk in sent.values():
        assert sweep.check_chunk(hooked, chunk) == "running"
    after = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    assert {int(c["check_at"]) for c in after} == {hooked.now}
