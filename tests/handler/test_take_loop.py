"""The runpod SDK's own take and run loops (`JobScaler.get_jobs` / `run_jobs`), fed by a
recording fetcher: with `count_taken_jobs_once` a worker of MAX_CONCURRENCY 2 that took one job
asks for the next at once, as it has a slot free; as shipped it sleeps a second first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runpod.serverless.modules import rp_scale
from runpod.serverless.modules.worker_state import JobsProgress

from handler import take_loop


@pytest.fixture
def scaler_class(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[type[Any]]:
    """`JobScaler` with its method restored afterwards, in local-test mode (so the fetcher and
    handler can be given), its job-state file kept out of the repository."""
    monkeypatch.setattr(rp_scale, "IS_LOCAL_TEST", True)
    # runpod 1.10 keeps job state in a file; later releases do not (raising=False: both run).
    monkeypatch.setattr(
        JobsProgress, "_STATE_FILE", str(tmp_path / ".runpod_jobs.pkl"), raising=False
    )
    monkeypatch.setattr(JobsProgress, "_STATE_DIR", str(tmp_path), raising=False)
    monkeypatch.setattr(
        rp_scale.JobScaler, "current_occupancy", rp_scale.JobScaler.current_occupancy
    )
    JobsProgress().clear()
    yield rp_scale.JobScaler
    JobsProgress().clear()


def _fetch_times(scaler_class: type[Any], jobs: list[list[dict[str, Any]]]) -> list[float]:
    """Run the SDK's loops (concurrency 2) until the fetcher was asked len(jobs)+1 times or
    3 s passed; the seconds at which it was asked."""
    asked: list[float] = []
    started = time.monotonic()

    async def fetch(_session: Any, _wanted: int) -> list[dict[str, Any]]:
        asked.append(time.monotonic() - started)
        if len(asked) > len(jobs):
            scaler.kill_worker()
            return []
        await asyncio.sleep(0.01)
        return jobs[len(asked) - 1]

    async def handle(_session: Any, _config: Any, _job: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)  # a keep-hot ping: done at once

    scaler = scaler_class(
        {
            "concurrency_modifier": lambda _current: 2,
            "jobs_fetcher": fetch,
            "jobs_handler": handle,
        }
    )

    async def run() -> None:
        loops = asyncio.gather(scaler.get_jobs(None), scaler.run_jobs(None))
        try:
            await asyncio.wait_for(loops, timeout=3)
        except TimeoutError:
            pass

    asyncio.run(run())
    return asked


def test_a_worker_with_a_slot_free_asks_for_the_next_job_at_once(scaler_class: type[Any]) -> None:
    assert take_loop.count_taken_jobs_once()
    asked = _fetch_times(scaler_class, [[{"id": "ping", "input": {}}]])
    assert len(asked) == 2, asked
    assert asked[1] - asked[0] < 0.5, asked  # not the SDK's one-second sleep


def test_as_shipped_the_sdk_sleeps_a_second_after_one_take(scaler_class: type[Any]) -> None:
    """The control: what `count_taken_jobs_once` removes (if the SDK stops doing this, the
    patch is no longer needed and FIXED_VERSIONS should not name the new version)."""
    asked = _fetch_times(scaler_class, [[{"id": "ping", "input": {}}]])
    assert len(asked) == 2, asked
    assert asked[1] - asked[0] >= 0.9, asked


def test_a_full_worker_still_waits(scaler_class: type[Any]) -> None:
    """Two jobs taken fill both slots: no third is asked for while they run."""
    assert take_loop.count_taken_jobs_once()
    slow: list[float] = []

    async def handle(_session: Any, _config: Any, _job: dict[str, Any]) -> None:
        await asyncio.sleep(0.6)
        slow.append(time.monotonic())

    asked: list[float] = []

    async def fetch(_session: Any, wanted: int) -> list[dict[str, Any]]:
        asked.append(time.monotonic())
        if len(asked) == 1:
            return [{"id": "a", "input": {}}, {"id": "b", "input": {}}][:wanted]
        scaler.kill_worker()
        return []

    scaler = scaler_class(
        {"concurrency_modifier": lambda _current: 2, "jobs_fetcher": fetch, "jobs_handler": handle}
    )

    async def run() -> None:
        await asyncio.wait_for(
            asyncio.gather(scaler.get_jobs(None), scaler.run_jobs(None)), timeout=5
        )

    asyncio.run(run())
    assert len(asked) == 2 and len(slow) == 2
    assert asked[1] >= min(slow), "asked for a third job while two ran"


def test_another_sdk_version_is_left_alone(
    scaler_class: type[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = scaler_class.current_occupancy
    monkeypatch.setattr("importlib.metadata.version", lambda _name: "9.9.9")
    assert not take_loop.count_taken_jobs_once()
    assert scaler_class.current_occupancy is shipped
