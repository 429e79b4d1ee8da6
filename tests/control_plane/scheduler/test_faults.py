"""Faults the scheduler must survive, on the local stack (moto's server and SQS, the local
RunPod endpoint, real runpod SDK workers around the stand-in engine): killed workers, a poison
request, a failing endpoint, concurrent ticks, results delivered twice, cancel, expiry and
dispatchers and batch handlers killed halfway. Each test checks that every custom_id lands
exactly once and that the batch's counters and usage match its files.

The tests tick by hand: a tick is the sweep, then every queued event handled (the dispatcher's
and the batch handler's runs). Waits the scheduler measures on `ctx.now` (retry backoff, the
breaker's cooldown, leases, the completion window, the next look at a batch) are skipped by
ticking with a later `now`; RunPod's webhooks keep recording at the real time, as they would.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import urllib3

from control_plane.clients import queues, secrets
from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.scheduler import finalize, policy, settle
from control_plane.scheduler.policy import PROFILES
from control_plane.scheduler.sweep import check_chunk
from control_plane.scheduler.tick import make_context, record_webhook, run_tick
from control_plane.services import results as webhook_results
from control_plane.store import BatchItem, ChunkItem, deadletters
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store import endpoint as endpoint_store
from control_plane.webhooks import signature as webhook_signature
from infra.runpod_local.models import Job
from infra.stack import LocalStack, StackConfig
from infra.wait import wait_for
from tests.support.lines import CHAT, request_line
from tests.support.stack import file_lines, sdk, standin_pool

pytestmark = pytest.mark.stack

PROFILE = PROFILES["aggressive"]  # two attempts before a bisection, short backoffs
CHUNK = 4  # requests per chunk
WINDOW = 3  # the endpoint's ceiling: workersMax 3 × MAX_CONCURRENCY 1
POISON = "POISON"  # a worker meeting this in a request dies (exit 137)


# Every batch a test submitted: the check after each test looks at their chunks.
SUBMITTED: list[str] = []


class TickKilled(BaseException):
    """A tick killed mid-way (SIGKILL, a Lambda timeout) is no exception it could catch: a
    BaseException, which the tick's failure isolation lets through, stands in for it."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    pool = standin_pool(
        tmp_path_factory.mktemp("faults"),
        workers=2,
        max_workers=3,
        # One chunk per worker: a killed worker then takes exactly the chunk a test aims at
        # down (at the default of 2 its neighbour would be retried too).
        env={"STANDIN_EXIT_ON": POISON, "MAX_CONCURRENCY": "1"},
    )
    # These tests kill workers on purpose, several in a row: at the pool's default backoff
    # (doubling up to 60 s) the next test could wait half a minute for a worker to come back.
    pool.restart_backoff_max_s = 2.0
    settings = {
        "chunk_max_requests": CHUNK,
        "worker_concurrency": 1,
        "dispatch_profile": "aggressive",
        "keep_hot_schedule": "never",  # only chunk jobs reach the endpoint
    }
    stack = LocalStack(StackConfig(pool=pool, tick_interval_s=None, settings=settings))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def quiet(stack: LocalStack) -> Iterator[None]:
    """Each test starts with a closed breaker and must leave nothing pending or in flight; what
    a failed test leaves is cancelled, so that one failure does not cascade."""
    table = aws(stack).table
    discard_events(stack)
    set_window(stack, WINDOW)
    endpoint_store.set_endpoint_state(table, state="closed")
    # Workers an earlier test killed are back before this one starts: its waits then time
    # the scheduler, not the pool's restarts.
    wait_for(lambda: ready_workers(stack) >= 1, "a ready worker", timeout=120)
    yield
    assert stack.endpoint is not None
    stack.endpoint.inject_fault(seconds=0)
    left = [
        chunk
        for batch_id in SUBMITTED
        for chunk in chunk_store.list_chunks(table, batch_id=batch_id)
        if chunk["state"] in ("pending", "dispatched")
    ]
    if left:
        for batch_id in {chunk["batch_id"] for chunk in left}:
            with contextlib.suppress(openai.APIError):
                sdk(stack).batches.cancel(batch_id)
        tick(stack)
        pytest.fail(f"the test left {len(left)} chunk(s) pending or in flight")


# --- driving the stack ---


def discard_events(stack: LocalStack) -> None:
    """Events an earlier test left queued (its killed runs' come back a second after) would
    move this test's chunks too."""
    for _ in range(2):
        for which in (queues.DISPATCH, queues.BATCHES):
            while messages := queues.receive(aws(stack).queues, which):
                queues.delete(aws(stack).queues, which, [receipt for receipt, _ in messages])
        time.sleep(1.1)


def aws(stack: LocalStack) -> Aws:
    assert stack.aws is not None
    return stack.aws


def tick(stack: LocalStack, *, skew: int = 0, poll_only: bool = False) -> dict[str, Any]:
    """One tick at `skew` seconds from now. `poll_only`: a tick without webhooks, which polls
    every chunk in flight and dispatches chunks with no webhook URL."""
    ctx = make_context(aws(stack), now=int(time.time()) + skew)
    if poll_only:
        ctx = dataclasses.replace(ctx, webhook_secret="")
    return run_tick(ctx)


def submit(stack: LocalStack, custom_ids: list[str]) -> str:
    """Upload and create a batch; return its id once the split has made its chunks."""
    client = sdk(stack)
    content = "".join(request_line(custom_id) + "\n" for custom_id in custom_ids)
    file = client.files.create(file=("in.jsonl", content.encode()), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    SUBMITTED.append(batch.id)
    wait_for(lambda: batch_item(stack, batch.id)["status"] != "validating", "the split")
    assert batch_item(stack, batch.id)["status"] == "in_progress"
    return batch.id


def run_until(
    stack: LocalStack, batch_id: str, *done: str, skew: int = 0, timeout: float = 60
) -> str:
    """Tick (at `skew`) until the batch reaches one of `done`; its status then."""

    def ended() -> str | None:
        tick(stack, skew=skew)
        status = str(batch_item(stack, batch_id)["status"])
        return status if status in done else None

    return wait_for(ended, f"batch {batch_id} to reach {done}", timeout=timeout, every=0.2)


def batch_item(stack: LocalStack, batch_id: str) -> BatchItem:
    item = batch_store.get_batch(aws(stack).table, batch_id)
    assert item is not None
    return item


def chunks(stack: LocalStack, batch_id: str) -> dict[str, ChunkItem]:
    items = chunk_store.list_chunks(aws(stack).table, batch_id=batch_id)
    return {item["chunk_id"]: item for item in items}


def jobs(stack: LocalStack, batch_id: str) -> list[Job]:
    """The chunk jobs the endpoint received for this batch, in the order it received them."""
    assert stack.endpoint is not None and stack.endpoint.backend is not None
    found = [
        job
        for job in list(stack.endpoint.backend.jobs.values())
        if isinstance(job.input, dict) and job.input.get("batch_id") == batch_id
    ]
    return sorted(found, key=lambda job: job.created_at)


def job_for(stack: LocalStack, batch_id: str, chunk_id: str) -> Job | None:
    found = [job for job in jobs(stack, batch_id) if job.input["chunk_id"] == chunk_id]
    return found[-1] if found else None


def job_in(stack: LocalStack, batch_id: str, chunk_id: str, status: str) -> Job | None:
    """The chunk's latest job, if it is in `status`."""
    job = job_for(stack, batch_id, chunk_id)
    return job if job is not None and job.status == status else None


def ready_workers(stack: LocalStack) -> int:
    assert stack.endpoint is not None and stack.endpoint.backend is not None
    return int(stack.endpoint.backend.health()["workers"]["ready"])


def running_job(stack: LocalStack, batch_id: str, chunk_id: str) -> Job | None:
    return job_in(stack, batch_id, chunk_id, "IN_PROGRESS")


def endpoint_id(stack: LocalStack) -> str:
    return aws(stack).settings.runpod_endpoint_id


def state(stack: LocalStack) -> policy.SchedulerState:
    return policy.load(aws(stack).table, PROFILE, endpoint_id(stack))


def set_window(stack: LocalStack, window: int) -> None:
    """Start a test from a known in-flight window (earlier tests moved it); the dispatcher keeps
    it under the endpoint's ceiling (workersMax 3 × MAX_CONCURRENCY 1 here)."""
    table = aws(stack).table
    before = state(stack)
    after = before.model_copy(
        update={"window": window, "breaker": "closed", "failures": 0, "in_flight": 0}
    )
    assert policy.save(table, before, after, now=int(time.time()), endpoint_id=endpoint_id(stack))


def ids_of_chunks(custom_ids: list[str], *numbers: int) -> list[str]:
    return [custom_id for n in numbers for custom_id in custom_ids[n * CHUNK : (n + 1) * CHUNK]]


# --- checking results ---


@dataclasses.dataclass
class Results:
    outputs: dict[str, dict[str, Any]]
    errors: dict[str, dict[str, Any]]
    completed: int
    failed: int
    total: int


def results(stack: LocalStack, batch_id: str, *, settled: bool = True) -> Results:
    """The output and error files, checked against each other and against the batch: every
    custom_id once across both, counts and usage equal to what the files hold, and (when
    `settled`) every request accounted for."""
    client = sdk(stack)
    batch = client.batches.retrieve(batch_id)
    outputs = file_lines(client, batch.output_file_id)
    errors = file_lines(client, batch.error_file_id)
    seen = collections.Counter(line["custom_id"] for line in outputs + errors)
    assert [custom_id for custom_id, n in seen.items() if n > 1] == []
    counts, usage = batch.request_counts, batch.usage
    assert counts is not None and usage is not None
    assert (counts.completed, counts.failed) == (len(outputs), len(errors))
    if settled:
        assert counts.completed + counts.failed == counts.total
    used = [line["response"]["body"]["usage"] for line in outputs]
    assert usage.input_tokens == sum(u["prompt_tokens"] for u in used)
    assert usage.output_tokens == sum(u["completion_tokens"] for u in used)
    assert usage.input_tokens_details.cached_tokens == sum(
        u["prompt_tokens_details"]["cached_tokens"] for u in used
    )
    return Results(
        outputs={line["custom_id"]: line for line in outputs},
        errors={line["custom_id"]: line for line in errors},
        completed=counts.completed,
        failed=counts.failed,
        total=counts.total,
    )


def error_code(line: dict[str, Any]) -> str:
    return str(line["response"]["body"]["error"]["code"])


# --- the faults ---


def test_worker_killed_mid_chunk_is_retried_and_every_request_lands_once(
    stack: LocalStack,
) -> None:
    custom_ids = [f"kill{i}" for i in range(3 * CHUNK)]
    custom_ids[CHUNK + 1] = "kill5-standin-sleep=3"  # chunk 00001 runs for three seconds
    batch_id = submit(stack, custom_ids)
    tick(stack)
    assert stack.endpoint is not None and stack.endpoint.pool is not None
    slow = wait_for(lambda: running_job(stack, batch_id, "00001"), "the slow chunk to start")
    first_worker = slow.worker_id
    assert first_worker is not None
    stack.endpoint.pool.kill(first_worker)
    # The endpoint puts a job whose worker died back in its queue once; kill the second worker
    # too, and the job fails: the scheduler's retry is what saves the chunk.
    wait_for(
        lambda: (
            slow.retries == 1
            and slow.status == "IN_PROGRESS"
            and slow.worker_id not in (None, first_worker)
        ),
        "the endpoint's retry",
    )
    assert slow.worker_id is not None
    stack.endpoint.pool.kill(slow.worker_id)
    wait_for(lambda: chunks(stack, batch_id)["00001"]["state"] == "pending", "a chunk retry")

    assert run_until(stack, batch_id, "completed", skew=PROFILE.backoff_max_s) == "completed"
    done = results(stack, batch_id)
    assert sorted(done.outputs) == sorted(custom_ids) and done.errors == {}
    assert {c: item["attempts"] for c, item in chunks(stack, batch_id).items()} == {
        "00000": 1,
        "00001": 2,
        "00002": 1,
    }
    slow_jobs = [j for j in jobs(stack, batch_id) if j.input["chunk_id"] == "00001"]
    assert [(j.input["attempt"], j.status, j.retries) for j in slow_jobs] == [
        (1, "FAILED", 1),
        (2, "COMPLETED", 0),
    ]


def test_poison_request_is_bisected_into_a_dead_letter_and_the_rest_completes(
    stack: LocalStack,
) -> None:
    custom_ids = [f"pois{i}" for i in range(2 * CHUNK)]
    poison = custom_ids[2] = f"pois2-{POISON}"
    batch_id = submit(stack, custom_ids)

    status = run_until(stack, batch_id, "completed", skew=PROFILE.backoff_max_s, timeout=120)
    assert status == "completed"
    done = results(stack, batch_id)
    assert sorted(done.outputs) == sorted(set(custom_ids) - {poison})
    assert list(done.errors) == [poison]
    line = done.errors[poison]
    assert line["response"]["status_code"] == 500 and error_code(line) == "worker_failure"
    (letter,) = deadletters.get_dead_letters(
        aws(stack).table, batch_id=batch_id, custom_ids=[poison]
    )
    assert letter is not None and letter["code"] == "worker_failure"

    # 4 requests → 2 → 1: the chunk ran its attempts, then each half once, then the poison alone.
    items = chunks(stack, batch_id)
    assert (items["00000"]["state"], items["00000"]["attempts"]) == ("split", PROFILE.max_attempts)
    (dead,) = [item for item in items.values() if item["state"] == "dead"]
    assert dead["requests"] == 1 and dead["attempts"] == 1
    half = items[dead["parent"]]
    assert (half["state"], half["requests"], half["parent"]) == ("split", 2, "00000")
    # The halves keep their parent's place in the queue (its prefix group's), not their number's.
    assert {item["group_order"] for item in items.values() if "parent" in item} == {0}
    leaves = [item for item in items.values() if item["state"] == "done"]
    assert sum(int(item["requests"]) for item in leaves) == len(custom_ids) - 1
    # Every job that met the poison killed two workers: the endpoint's retry died as well.
    poisoned = {"00000", dead["chunk_id"], half["chunk_id"]}
    for job in jobs(stack, batch_id):
        if job.input["chunk_id"] in poisoned:
            assert (job.status, job.retries) == ("FAILED", 1)
        else:
            assert job.status == "COMPLETED"


def test_endpoint_5xx_opens_the_breaker_without_losing_chunks_and_a_probe_closes_it(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = aws(stack).table
    counted: list[str] = []
    monkeypatch.setattr(policy, "count", lambda name, value=1: counted.append(name))
    set_window(stack, 4)
    busy_ids = ["brk-busy"]
    busy = submit(stack, busy_ids)  # a chunk whose result arrives while the client API fails
    tick(stack, poll_only=True)  # without a webhook: the test delivers it when it wants
    custom_ids = [f"brk{i}" for i in range(2 * CHUNK)]
    batch_id = submit(stack, custom_ids)
    assert stack.endpoint is not None
    stack.endpoint.inject_fault(seconds=120, status=502)
    try:
        for _ in range(PROFILE.breaker_failures):
            tick(stack)
        assert state(stack).breaker == "open"
        assert endpoint_store.breaker_state(table) == "open"
        tick(stack)  # still open: the opening is counted once, for BreakerOpenAlarm
        assert counted.count("BreakerOpened") == 1
        client = sdk(stack)
        more = request_line("more").encode()
        file = client.files.create(file=("more.jsonl", more), purpose="batch")
        with pytest.raises(openai.APIStatusError) as refused:
            client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
        assert refused.value.status_code == 503

        # Refunded: every failed /run gave its chunk back without spending a try (the attempt
        # numbers themselves are never reused).
        items = chunks(stack, batch_id).values()
        assert [(c["state"], chunk_store.tries(c)) for c in items] == [("pending", 0)] * 2
        assert jobs(stack, batch_id) == []
        # A worker finishing a chunk says nothing about the client API: the breaker stays open.
        finished = wait_for(
            lambda: job_in(stack, busy, "00000", "COMPLETED"), "the busy chunk", timeout=120
        )
        outcome = record_webhook(
            aws(stack), batch_id=busy, chunk_id="00000", attempt=1, job=finished.to_dict()
        )
        assert outcome == "done"
        assert state(stack).breaker == "open"
        # Open: nothing is sent before the cooldown; after it, one probe, which fails too. The
        # clock is set from when the breaker opened, not from now: waiting for the busy chunk
        # can take seconds on a loaded machine.
        opened_at = state(stack).opened_at
        tick(stack, skew=opened_at + PROFILE.breaker_cooldown_s - 5 - int(time.time()))
        assert state(stack).opened_at == opened_at  # no probe yet
        probe_at = opened_at + PROFILE.breaker_cooldown_s + 1
        tick(stack, skew=probe_at - int(time.time()))
        reopened = state(stack)
        assert reopened.breaker == "open" and reopened.opened_at >= probe_at
        assert {chunk_store.tries(c) for c in chunks(stack, batch_id).values()} == {0}
    finally:
        stack.endpoint.inject_fault(seconds=0)  # the endpoint recovers

    skew = 2 * (PROFILE.breaker_cooldown_s + 1)
    tick(stack, skew=skew)
    assert state(stack).breaker == "closed"
    assert endpoint_store.breaker_state(table) == "closed"
    assert len(jobs(stack, batch_id)) == 1  # half-open: a single probe
    assert run_until(stack, batch_id, "completed", skew=skew) == "completed"
    done = results(stack, batch_id)
    assert sorted(done.outputs) == sorted(custom_ids)
    assert {chunk_store.tries(c) for c in chunks(stack, batch_id).values()} == {1}
    assert len(jobs(stack, batch_id)) == 2
    assert batch_item(stack, busy)["status"] == "completed"
    assert sorted(results(stack, busy).outputs) == busy_ids


def test_concurrent_ticks_send_each_chunk_once_and_count_exactly(stack: LocalStack) -> None:
    custom_ids = [f"conc{i}" for i in range(10 * CHUNK)]
    batch_id = submit(stack, custom_ids)
    stop = threading.Event()
    crashes: list[BaseException] = []

    def ticking(poll_only: bool) -> None:
        while not stop.is_set():
            try:
                tick(stack, poll_only=poll_only)
            except Exception as exc:  # collected: the test fails on any
                crashes.append(exc)

    # Two polling ticks race on every result; a third sends webhooks that race with them.
    threads = [threading.Thread(target=ticking, args=(p,)) for p in (True, True, False)]
    for thread in threads:
        thread.start()
    try:
        wait_for(
            lambda: batch_item(stack, batch_id)["status"] == "completed", "the batch", timeout=60
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert crashes == []

    sent = collections.Counter(
        (job.input["chunk_id"], job.input["attempt"]) for job in jobs(stack, batch_id)
    )
    assert sent == {(f"{n:05d}", 1): 1 for n in range(10)}
    item = batch_item(stack, batch_id)
    assert (item["n_completed"], item["n_failed"], item["n_total"]) == (len(custom_ids), 0, 40)
    assert (item["chunks_in_flight"], item["chunks_open"]) == (0, 0)
    assert item["tok_input"] == 3 * len(custom_ids)
    done = results(stack, batch_id)
    assert sorted(done.outputs) == sorted(custom_ids)


def test_a_result_delivered_twice_or_by_webhook_and_poll_counts_once(stack: LocalStack) -> None:
    custom_ids = [f"dup{i}" for i in range(3 * CHUNK)]
    set_window(stack, 4)
    batch_id = submit(stack, custom_ids)
    tick(stack, poll_only=True)  # dispatched without webhooks: the test delivers them
    sent = {c: item for c, item in chunks(stack, batch_id).items() if item.get("job_id")}
    assert sorted(sent) == ["00000", "00001", "00002"]
    wait_for(lambda: all(job.status == "COMPLETED" for job in jobs(stack, batch_id)), "the chunks")
    ctx = dataclasses.replace(make_context(aws(stack)), webhook_secret="")
    job = {c: ctx.runpod.status(item["job_id"]) for c, item in sent.items()}

    def webhook(chunk_id: str) -> str:
        return record_webhook(
            aws(stack), batch_id=batch_id, chunk_id=chunk_id, attempt=1, job=job[chunk_id]
        )

    # The same webhook twice (RunPod retries a delivery it thinks failed).
    assert [webhook("00000"), webhook("00000")] == ["done", "stale"]
    # A webhook, then a poll by a tick that read the chunk before the webhook landed.
    assert webhook("00001") == "done"
    assert check_chunk(ctx, sent["00001"]) == "stale"
    # A poll, then the same result through the signed webhook route.
    assert check_chunk(ctx, sent["00002"]) == "done"
    secret = secrets.webhook_secret(aws(stack).settings)
    assert stack.api is not None
    url = f"{stack.api.url}/internal/runpod/webhook"
    query = {"batch_id": batch_id, "chunk_id": "00002", "attempt": "1"}
    signed = {**query, "sig": webhook_signature(secret, batch_id, "00002", 1)}
    reply = httpx.post(url, params=signed, json=job["00002"])
    assert (reply.status_code, reply.json()) == (200, {"outcome": "stale"})
    forged = httpx.post(url, params={**query, "sig": "0" * 64}, json=job["00002"])
    assert forged.status_code == 401

    item = batch_item(stack, batch_id)
    assert (item["n_completed"], item["n_failed"]) == (len(custom_ids), 0)
    assert (item["chunks_in_flight"], item["chunks_open"]) == (0, 0)
    assert item["tok_input"] == 3 * len(custom_ids)
    assert run_until(stack, batch_id, "completed") == "completed"
    assert sorted(results(stack, batch_id).outputs) == sorted(custom_ids)


def slow_batch(stack: LocalStack, prefix: str, chunk_count: int) -> tuple[str, list[str]]:
    """Chunks 0 and 1 fast, every later one three seconds long; dispatched, and back once the
    fast ones are recorded."""
    custom_ids = [f"{prefix}{i}" for i in range(chunk_count * CHUNK)]
    for n in range(2, chunk_count):
        custom_ids[n * CHUNK] += "-standin-sleep=3"
    batch_id = submit(stack, custom_ids)
    tick(stack)
    wait_for(
        lambda: (
            [chunks(stack, batch_id)[c]["state"] for c in ("00000", "00001")] == ["done", "done"]
        ),
        "the fast chunks",
    )
    return batch_id, custom_ids


def test_cancel_mid_batch_cancels_jobs_keeps_finished_output_and_sends_nothing_more(
    stack: LocalStack,
) -> None:
    batch_id, custom_ids = slow_batch(stack, "cncl", 6)
    sent = {job.input["chunk_id"] for job in jobs(stack, batch_id)}
    assert sent == {"00000", "00001", "00002"}  # the window is full; three chunks wait
    wait_for(lambda: running_job(stack, batch_id, "00002"), "a slow chunk on a worker")

    client = sdk(stack)
    assert client.batches.cancel(batch_id).status == "cancelling"
    tick(stack)
    assert client.batches.retrieve(batch_id).status == "cancelled"
    for _ in range(3):
        tick(stack)
    assert {job.input["chunk_id"] for job in jobs(stack, batch_id)} == sent
    states = {job.input["chunk_id"]: job.status for job in jobs(stack, batch_id)}
    assert states == {c: "COMPLETED" if c in ("00000", "00001") else "CANCELLED" for c in sent}
    items = chunks(stack, batch_id)
    assert {c: i["state"] for c, i in items.items()} == {
        c: "done" if c in ("00000", "00001") else "cancelled" for c in items
    }

    done = results(stack, batch_id, settled=False)
    assert sorted(done.outputs) == sorted(ids_of_chunks(custom_ids, 0, 1))
    assert done.errors == {} and done.total == len(custom_ids)
    item = batch_item(stack, batch_id)
    assert (item["chunks_in_flight"], item["chunks_open"]) == (0, 0)


def test_expiry_keeps_finished_output_and_fails_every_unfinished_request(
    stack: LocalStack,
) -> None:
    batch_id, custom_ids = slow_batch(stack, "expd", 5)
    expires_at = int(batch_item(stack, batch_id)["window_expires_at"])
    tick(stack, skew=expires_at + 1 - int(time.time()))
    assert sdk(stack).batches.retrieve(batch_id).status == "expired"

    done = results(stack, batch_id)
    assert sorted(done.outputs) == sorted(ids_of_chunks(custom_ids, 0, 1))
    assert sorted(done.errors) == sorted(ids_of_chunks(custom_ids, 2, 3, 4))
    assert {error_code(line) for line in done.errors.values()} == {"batch_expired"}
    assert (done.completed, done.failed, done.total) == (8, 12, 20)
    states = {c: i["state"] for c, i in chunks(stack, batch_id).items()}
    assert states == {c: "done" if c in ("00000", "00001") else "expired" for c in states}
    unfinished = [j for j in jobs(stack, batch_id) if j.input["chunk_id"] not in ("00000", "00001")]
    assert unfinished and {job.status for job in unfinished} == {"CANCELLED"}
    # Late results of the stopped jobs change nothing.
    time.sleep(0.5)
    assert results(stack, batch_id).completed == 8


def test_expiry_records_a_chunk_that_finished_while_its_webhook_was_on_the_way(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    custom_ids = [f"late{i}" for i in range(CHUNK)]
    # The webhook is lost: the result reaches RunPod, not the control plane.
    monkeypatch.setattr(webhook_results, "record_webhook", lambda *_, **__: "stale")
    batch_id = submit(stack, custom_ids)
    tick(stack)
    wait_for(lambda: job_in(stack, batch_id, "00000", "COMPLETED"), "the chunk's job")
    assert chunks(stack, batch_id)["00000"]["state"] == "dispatched"

    expires_at = int(batch_item(stack, batch_id)["window_expires_at"])
    tick(stack, skew=expires_at + 1 - int(time.time()))

    assert sdk(stack).batches.retrieve(batch_id).status == "expired"
    done = results(stack, batch_id)
    assert sorted(done.outputs) == sorted(custom_ids) and not done.errors
    assert (done.completed, done.failed) == (CHUNK, 0)


def test_a_tick_killed_while_finalizing_is_finished_by_the_next(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    custom_ids = [f"fin{i}" for i in range(2 * CHUNK)]
    batch_id = submit(stack, custom_ids)
    merged = finalize._merged_file

    def killed_after_output(ctx: Any, batch: BatchItem, kind: str, keys: list[str]) -> str | None:
        file_id = merged(ctx, batch, kind, keys)
        if kind == "output":
            raise TickKilled("tick killed after writing the output file")
        return file_id

    monkeypatch.setattr(finalize, "_merged_file", killed_after_output)
    # A killed run's event comes back once its visibility timeout passes (SQS); here, soon.
    monkeypatch.setattr(queues, "LOCAL_VISIBILITY_S", 1)

    def finalizing() -> bool:
        with contextlib.suppress(TickKilled):  # the killed tick
            tick(stack)
        return batch_item(stack, batch_id)["status"] == "finalizing"

    wait_for(finalizing, "a tick killed while finalizing", every=0.1)
    # The killed run's event comes back (and the sweep looks at a batch left finalizing again
    # soon in any case): that run is killed too.
    time.sleep(1.5)
    with pytest.raises(TickKilled):
        tick(stack, skew=settle.RETRY_S + 1)
    assert sdk(stack).batches.retrieve(batch_id).output_file_id is None

    monkeypatch.undo()
    time.sleep(1.5)
    tick(stack, skew=2 * settle.RETRY_S + 2)
    done = sdk(stack).batches.retrieve(batch_id)
    assert done.status == "completed"
    assert done.output_file_id == finalize.merged_file_id(batch_id, "output")
    assert sorted(results(stack, batch_id).outputs) == sorted(custom_ids)


def test_a_tick_killed_between_claim_and_run_is_recovered_after_a_minute(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    custom_ids = [f"clm{i}" for i in range(CHUNK)]
    batch_id = submit(stack, custom_ids)

    def killed(*args: Any, **kwargs: Any) -> str:
        raise TickKilled("tick killed before /run")

    monkeypatch.setattr(RunPodClient, "run", killed)
    monkeypatch.setattr(queues, "LOCAL_VISIBILITY_S", 1)  # the killed run's events, soon back
    with pytest.raises(TickKilled):
        tick(stack)
    monkeypatch.undo()
    chunk = chunks(stack, batch_id)["00000"]
    assert (chunk["state"], chunk["attempts"], chunk.get("job_id")) == ("dispatched", 1, None)
    assert batch_item(stack, batch_id)["chunks_in_flight"] == 1

    # No job id after a minute: the dispatching tick died. Webhooks or not, the attempt counts
    # as failed then, not only when the (half-hour) lease runs out.
    tick(stack, skew=30)
    assert chunks(stack, batch_id)["00000"]["state"] == "dispatched"
    tick(stack, skew=61)
    assert chunks(stack, batch_id)["00000"]["state"] == "pending"
    skew = 61 + PROFILE.backoff_max_s
    assert run_until(stack, batch_id, "completed", skew=skew) == "completed"
    assert chunks(stack, batch_id)["00000"]["attempts"] == 2
    assert [(j.input["attempt"], j.status) for j in jobs(stack, batch_id)] == [(2, "COMPLETED")]
    assert sorted(results(stack, batch_id).outputs) == sorted(custom_ids)


def test_a_tick_killed_after_run_still_records_the_result_from_the_webhook(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    custom_ids = [f"run{i}" for i in range(CHUNK)]
    batch_id = submit(stack, custom_ids)

    def killed(*args: Any, **kwargs: Any) -> None:
        raise TickKilled("tick killed after /run, before the job id was stored")

    monkeypatch.setattr(chunk_store, "set_job", killed)
    monkeypatch.setattr(queues, "LOCAL_VISIBILITY_S", 1)  # the killed run's events, soon back
    with pytest.raises(TickKilled):
        tick(stack)
    monkeypatch.undo()
    assert chunks(stack, batch_id)["00000"].get("job_id") is None
    wait_for(lambda: chunks(stack, batch_id)["00000"]["state"] == "done", "the webhook")
    assert run_until(stack, batch_id, "completed") == "completed"
    assert [(j.input["attempt"], j.status) for j in jobs(stack, batch_id)] == [(1, "COMPLETED")]
    assert sorted(results(stack, batch_id).outputs) == sorted(custom_ids)


def test_a_run_answered_too_late_never_reuses_an_attempt_number(stack: LocalStack) -> None:
    """A /run that times out at the client may still have queued the job: the chunk goes back
    without spending an attempt, but its next dispatch must not reuse the attempt number (it
    names the result objects and tells the orphan's late result from the real one)."""
    custom_ids = [f"late{i}" for i in range(CHUNK)]
    batch_id = submit(stack, custom_ids)
    ctx = make_context(aws(stack))
    impatient = RunPodClient(
        base_url=ctx.runpod.base_url,
        endpoint_id=ctx.runpod.endpoint_id,
        api_key=ctx.runpod.api_key,
        _http=urllib3.PoolManager(timeout=urllib3.Timeout(connect=1.0, read=0.3), retries=False),
    )
    assert stack.endpoint is not None
    stack.endpoint.inject_fault(seconds=60, delay_s=1.0)
    try:
        run_tick(dataclasses.replace(ctx, runpod=impatient))
    finally:
        stack.endpoint.inject_fault(seconds=0)
    orphan = wait_for(lambda: job_for(stack, batch_id, "00000"), "the late job")
    chunk = chunks(stack, batch_id)["00000"]
    assert chunk["state"] == "pending"
    assert (chunk["attempts"], chunk_store.tries(chunk)) == (1, 0)  # refunded

    assert run_until(stack, batch_id, "completed") == "completed"
    sent = collections.Counter(
        (job.input["chunk_id"], job.input["attempt"]) for job in jobs(stack, batch_id)
    )
    assert len(sent) == 2 and set(sent.values()) == {1}, sent
    assert orphan.input["attempt"] != chunks(stack, batch_id)["00000"]["attempts"]
    assert sorted(results(stack, batch_id).outputs) == sorted(custom_ids)
