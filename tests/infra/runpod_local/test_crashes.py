"""Crash-looping workers on the local endpoint: restart backoff, `unhealthy` in /health until a
worker starts again, and a start failure's own error lines (what `hotbatch local up` prints)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
import runpod

from infra.runpod_local import EndpointConfig, LocalEndpoint, PoolConfig
from infra.runpod_local.crashes import RestartBackoff, StartFailure, error_lines, read_log
from infra.runpod_local.models import EndpointBackend
from infra.wait import wait_for
from tests.infra.runpod_local.test_endpoint import client
from tests.support.stack import ECHO_WORKER, worker_env

# What a worker whose engine could not reserve memory leaves in its log (vLLM 0.32, CPU build):
# the root cause in the engine core's process, then the chain up to `python -m handler`.
VLLM_MEMORY_LOG = """\
{"level": "INFO", "logger": "handler.worker", "message": "worker starting"}
(EngineCore pid=29100) INFO 12-03 10:08:20 [core.py:101] Initializing a V1 LLM engine
(VllmWorker-0 pid=29139) ERROR 12-03 10:08:23 [executor.py:953] Traceback (most recent call):
(VllmWorker-0 pid=29139) ERROR 12-03 10:08:23 [executor.py:953]     raise ValueError(
(VllmWorker-0 pid=29139) ERROR 12-03 10:08:23 [executor.py:953] ValueError: Available memory
Traceback (most recent call last):
  File "/repo/handler/runtime.py", line 169, in start_runtime
    raise RuntimeError(f"engine failed to start: {ready['error']}") from ready["error"]
RuntimeError: Engine core initialization failed. See root cause above.
RuntimeError: Engine core initialization failed. See root cause above.
huggingface_hub.errors.HFValidationError: Repo id must be 'name': '/nope'.
"""


# --- the backoff -----------------------------------------------------------------------------


def test_restart_delay_doubles_per_crash_up_to_the_cap() -> None:
    backoff = RestartBackoff(base_s=1.0, max_s=10.0)
    delays = [backoff.crashed(now=100.0 + n) for n in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert not backoff.allows_start(105.0 + 9.9) and backoff.allows_start(105.0 + 10.0)


def test_a_worker_ready_after_the_last_crash_resets_the_backoff() -> None:
    backoff = RestartBackoff(base_s=1.0, max_s=60.0)
    backoff.crashed(now=50.0)
    backoff.crashed(now=60.0)
    assert not backoff.started(ready_at=55.0)  # a worker that was up before the crash
    assert backoff.crashes == 2 and not backoff.allows_start(61.0)
    assert backoff.started(ready_at=70.0)
    assert backoff.crashes == 0 and backoff.allows_start(70.0)
    assert backoff.crashed(now=80.0) == 1.0  # starts over
    assert not RestartBackoff().started(ready_at=1.0)  # nothing to clear


# --- what a start failure reports -------------------------------------------------------------


def test_error_lines_are_the_distinct_exception_lines_without_prefixes() -> None:
    assert error_lines(VLLM_MEMORY_LOG) == [
        "ValueError: Available memory",
        "RuntimeError: Engine core initialization failed. See root cause above.",
        "huggingface_hub.errors.HFValidationError: Repo id must be 'name': '/nope'.",
    ]
    assert error_lines(VLLM_MEMORY_LOG, limit=1) == [
        "huggingface_hub.errors.HFValidationError: Repo id must be 'name': '/nope'."
    ]


def test_error_records_of_the_json_logs_are_opened_up() -> None:
    record = (
        '{"level": "ERROR", "logger": "handler.worker", "message": "engine load failed", '
        '"exception": "Traceback (most recent call last):\\n  File \\"x.py\\"\\n'
        'OSError: no such file: /models/m/config.json"}'
    )
    info = '{"level": "INFO", "logger": "handler.worker", "message": "worker starting"}'
    assert error_lines(f"{info}\n{record}\n") == [
        "handler.worker: engine load failed",
        "OSError: no such file: /models/m/config.json",
    ]


def test_without_exception_lines_the_tail_of_the_log_is_shown() -> None:
    log = "\n".join(f"line {n}" for n in range(50)) + "\n\n"
    assert error_lines(log) == [f"line {n}" for n in range(30, 50)]


def test_only_this_runs_part_of_an_appended_log_is_read(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.write_text("ValueError: the previous run\n")
    offset = path.stat().st_size
    with path.open("a") as handle:
        handle.write("KeyError: this run\n")
    assert error_lines(read_log(path, offset)) == ["KeyError: this run"]
    assert read_log(tmp_path / "missing.log") == ""


def test_a_start_failure_names_the_worker_the_exit_and_the_log() -> None:
    failure = StartFailure("w-1", 1, Path("/logs/w-1.log"), ["ValueError: boom"])
    assert failure.report() == (
        "worker w-1 exited with code 1 before its engine loaded:\n"
        "  ValueError: boom\n"
        "full log: /logs/w-1.log"
    )
    killed = StartFailure("w-2", -signal.SIGKILL)
    assert (
        killed.report()
        == "worker w-2 was killed by SIGKILL (out of memory?) before its engine loaded"
    )


# --- /health ---------------------------------------------------------------------------------


async def test_a_crashed_worker_is_unhealthy_and_a_retired_one_is_not() -> None:
    backend = EndpointBackend()
    backend.worker("crashed")
    backend.worker("retired")
    await backend.worker_died("crashed", retired=False)
    await backend.worker_died("retired", retired=True)
    assert backend.health()["workers"]["unhealthy"] == 1
    assert backend.health()["workers"]["idle"] == 0


# --- real processes ---------------------------------------------------------------------------


def crash_endpoint(tmp_path: Path, command: list[str], **pool: float) -> LocalEndpoint:
    pool_config = PoolConfig(
        command=command,
        min_workers=1,
        max_workers=1,
        idle_timeout_s=30,
        log_dir=tmp_path / "logs",
        work_dir=tmp_path / "workers",
        stop_grace_s=3.0,
        env=worker_env(),  # the echo worker imports this checkout from the worker's own cwd
        **pool,  # type: ignore[arg-type]
    )
    config = EndpointConfig(take_poll_s=1.0, stop_poll_s=1.0)
    return LocalEndpoint(config=config, pool_config=pool_config).start()


@pytest.mark.stack
def test_a_worker_that_cannot_start_is_backed_off_unhealthy_and_explained(
    tmp_path: Path,
) -> None:
    failing = [sys.executable, "-c", "raise SystemExit('ValueError: no model at /nope')"]
    local = crash_endpoint(tmp_path, failing, restart_backoff_s=0.5, restart_backoff_max_s=2.0)
    try:
        assert local.pool is not None and local.backend is not None
        pool, backend = local.pool, local.backend
        wait_for(lambda: pool.failed_starts >= 1, timeout=30)
        assert backend.health()["workers"]["unhealthy"] == 1
        time.sleep(4.0)
        # Without the backoff a new worker would start every housekeeping step (0.2 s): ~20
        # in 4 s. With 0.5, 1, 2, 2… s between starts, at most 4 more.
        assert 2 <= pool.failed_starts <= 6, pool.failed_starts
        assert backend.health()["workers"]["unhealthy"] == 1  # one slot, not one per restart
        failure = pool.start_failures[-1]
        assert failure.code == 1
        assert failure.lines == ["ValueError: no model at /nope"]
        assert failure.log_path is not None and failure.log_path.is_file()
    finally:
        local.stop()


@pytest.mark.stack
def test_a_worker_that_starts_after_crashes_clears_unhealthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Crashes twice at start, then runs the echo worker, as a worker would once memory frees up.
    counter = tmp_path / "starts"
    script = (
        f'n=$(cat "{counter}" 2>/dev/null || echo 0); echo $((n + 1)) > "{counter}"; '
        f'if [ "$n" -lt 2 ]; then echo "MemoryError: start $n" >&2; exit 3; fi; '
        f'exec "$0" "$@"'
    )
    command = ["/bin/sh", "-c", script, *ECHO_WORKER]
    local = crash_endpoint(tmp_path, command, restart_backoff_s=0.2, restart_backoff_max_s=1.0)
    try:
        assert local.pool is not None and local.backend is not None
        pool, backend = local.pool, local.backend
        wait_for(lambda: pool.failed_starts == 2, timeout=30)
        assert [f.lines for f in pool.start_failures] == [
            ["MemoryError: start 0"],
            ["MemoryError: start 1"],
        ]
        wait_for(lambda: backend.health()["workers"]["idle"] == 1, timeout=60)
        wait_for(lambda: backend.health()["workers"]["unhealthy"] == 0, timeout=5)
        assert pool.backoff.crashes == 0
        monkeypatch.setattr(runpod, "endpoint_url_base", local.client_base_url)
        assert client(local).run_sync({"after": "crashes"}, timeout=30)["echo"] == {
            "after": "crashes"
        }
    finally:
        local.stop()
