"""RunPod's policies in the local endpoint's backend, without HTTP or processes."""

from __future__ import annotations

import asyncio
import time

import pytest

from infra.runpod_local import models
from infra.runpod_local.exceptions import JobNotFound
from infra.runpod_local.models import EndpointBackend


async def test_queued_job_past_its_ttl_times_out_and_then_is_gone() -> None:
    backend = EndpointBackend()
    job = await backend.submit({"input": {}, "policy": {"ttl": 100}})
    await asyncio.sleep(0.15)
    await backend.enforce()
    assert job.status == "TIMED_OUT"
    with pytest.raises(JobNotFound):
        backend.get(job.id)


async def test_a_late_result_for_a_cancelled_job_is_dropped() -> None:
    backend = EndpointBackend()
    job = await backend.submit({"input": {"x": 1}})
    [taken] = await backend.take("w1", 1, timeout=0.1)
    assert taken.id == job.id and backend.get(job.id).status == "IN_PROGRESS"
    await backend.cancel(job.id)
    await backend.done("w1", job.id, {"output": {"late": True}})
    assert backend.get(job.id).status == "CANCELLED" and backend.get(job.id).output is None
    assert backend.health()["jobs"]["completed"] == 0


class SkippingClock:
    """Stands in for the `time` module inside the backend: the monotonic clock, moved ahead
    by the test where it would otherwise sleep."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped


async def test_stop_signal_is_resent_until_the_worker_lets_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = SkippingClock()
    monkeypatch.setattr(models, "time", clock)
    backend = EndpointBackend()
    job = await backend.submit({"input": {}})
    await backend.take("w1", 1, timeout=0.1)
    await backend.cancel(job.id)
    assert await backend.stop_signals("w1", timeout=0.1) == [job.id]
    # Not re-sent within a second, then re-sent while the worker still reports the job...
    assert await backend.stop_signals("w1", timeout=0.2) == []
    clock.skipped += models.STOP_RESEND_S
    backend.ping("w1", [job.id])
    assert await backend.stop_signals("w1", timeout=0.1) == [job.id]
    # ...and dropped once its heartbeat no longer lists it.
    backend.ping("w1", [])
    clock.skipped += models.STOP_RESEND_S
    assert await backend.stop_signals("w1", timeout=0.1) == []


async def test_take_long_polls_until_a_job_arrives() -> None:
    backend = EndpointBackend()
    waiting = asyncio.ensure_future(backend.take("w1", 2, timeout=5))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    job = await backend.submit({"input": {"n": 1}})
    assert [taken.id for taken in await asyncio.wait_for(waiting, 1)] == [job.id]
    assert backend.health()["workers"]["running"] == 1


async def test_a_progress_update_shows_as_the_running_jobs_output_and_finishes_nothing() -> None:
    backend = EndpointBackend()
    job = await backend.submit({"input": {}, "webhook": "http://127.0.0.1:9/hook"})
    await backend.take("w1", 1, timeout=0.1)
    # What the runpod SDK's progress_update posts to job-done.
    await backend.done("w1", job.id, {"status": "IN_PROGRESS", "output": {"completed": 3}})
    status = backend.get(job.id).to_dict()
    assert status["status"] == "IN_PROGRESS" and status["output"] == {"completed": 3}
    assert backend.workers["w1"].jobs == {job.id}  # still the worker's job
    assert backend.webhooks.empty() and backend.health()["jobs"]["completed"] == 0
    # Another worker's report (the job was taken from a dead one) is not this job's progress.
    await backend.done("w2", job.id, {"status": "IN_PROGRESS", "output": {"completed": 9}})
    assert backend.get(job.id).output == {"completed": 3}
    await backend.done("w1", job.id, {"output": {"done": True}})
    assert backend.get(job.id).status == "COMPLETED"
    assert backend.get(job.id).output == {"done": True}


async def test_a_worker_being_retired_takes_no_new_job() -> None:
    # The pool marks an idle worker not alive and sends it SIGTERM; its long-poll may still be
    # open. A job that arrives then must wait for another worker, not go to the dying one (it
    # would die with the engine mid-chunk), as RunPod sends nothing to a worker scaling down.
    backend = EndpointBackend()
    waiting = asyncio.ensure_future(backend.take("w1", 2, timeout=5))
    await asyncio.sleep(0.1)
    backend.workers["w1"].alive = False
    job = await backend.submit({"input": {"n": 1}})
    assert await asyncio.wait_for(waiting, 1) == []
    assert backend.get(job.id).status == "IN_QUEUE"
    [taken] = await backend.take("w2", 2, timeout=0.1)
    assert taken.id == job.id and taken.worker_id == "w2"
