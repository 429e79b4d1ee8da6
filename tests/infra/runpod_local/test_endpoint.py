"""The local RunPod endpoint driven by the real runpod SDK on both faces: `runpod.Endpoint` as
the client, the SDK's worker loop (the echo worker: a trivial handler around the stand-in
engine, for speed) as the workers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import runpod

from infra.runpod_local import EndpointConfig, LocalEndpoint, PoolConfig
from infra.wait import wait_for
from tests.support.stack import ECHO_WORKER, worker_env

pytestmark = pytest.mark.stack


def make_endpoint(tmp_path: Path, **pool: Any) -> LocalEndpoint:
    config = EndpointConfig(take_poll_s=1.0, stop_poll_s=1.0, webhook_retry_delay_s=0.2)
    pool_config = PoolConfig(
        command=ECHO_WORKER,
        log_dir=tmp_path / "logs",
        work_dir=tmp_path / "workers",
        stop_grace_s=3.0,
        env=worker_env(**pool.pop("env", {})),
        **pool,
    )
    return LocalEndpoint(config=config, pool_config=pool_config).start()


@pytest.fixture()
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalEndpoint]:
    local = make_endpoint(tmp_path, max_workers=2, idle_timeout_s=30)
    monkeypatch.setattr(runpod, "endpoint_url_base", local.client_base_url)
    yield local
    local.stop()


def client(local: LocalEndpoint) -> runpod.Endpoint:
    return runpod.Endpoint("local", api_key=local.api_key)


def test_run_sync_returns_the_handlers_output(endpoint: LocalEndpoint) -> None:
    output = client(endpoint).run_sync({"hello": "world"}, timeout=60)
    assert output["echo"] == {"hello": "world"}
    assert output["worker"].startswith("local-worker-")
    health = client(endpoint).health()
    assert health["jobs"]["completed"] == 1 and health["jobs"]["inQueue"] == 0


def test_run_status_output_walk_the_job_states(endpoint: LocalEndpoint) -> None:
    slow = {"text": "standin-sleep=1.5"}
    job = client(endpoint).run(slow)
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS")
    wait_for(lambda: job.status() == "IN_PROGRESS", "the job to start")
    assert client(endpoint).health()["jobs"]["inProgress"] == 1
    assert job.output(timeout=30)["echo"] == slow
    state = job._fetch_job()
    assert state["status"] == "COMPLETED"
    assert state["executionTime"] >= 1500 and state["delayTime"] >= 0


def test_handler_error_string_fails_the_job(endpoint: LocalEndpoint) -> None:
    job = client(endpoint).run({"text": "standin-fail"})
    wait_for(lambda: job.status() == "FAILED", "the job to fail")
    assert job._fetch_job()["error"] == "upstream hiccup"  # the stand-in engine's message
    assert client(endpoint).health()["jobs"]["failed"] == 1


def test_cancel_stops_the_running_job_and_the_worker_keeps_serving(
    endpoint: LocalEndpoint,
) -> None:
    job = client(endpoint).run({"text": "standin-sleep=60"})
    wait_for(lambda: job.status() == "IN_PROGRESS", "the job to start")
    assert job.cancel()["status"] == "CANCELLED"
    assert job.status() == "CANCELLED"
    # The worker got the stop signal: it is idle again and takes the next job at once.
    backend = endpoint.backend
    assert backend is not None
    wait_for(lambda: backend.health()["workers"]["idle"] >= 1, "an idle worker")
    assert client(endpoint).run_sync({"after": "cancel"}, timeout=30)["echo"] == {"after": "cancel"}


def test_execution_timeout_times_the_job_out(endpoint: LocalEndpoint) -> None:
    response = requests.post(
        f"{endpoint.client_base_url}/local/run",
        json={"input": {"text": "standin-sleep=60"}, "policy": {"executionTimeout": 1500}},
        headers={"Authorization": f"Bearer {endpoint.api_key}"},
        timeout=10,
    )
    job = runpod.endpoint.Job("local", response.json()["id"], client(endpoint).rp_client)
    wait_for(lambda: job.status() == "TIMED_OUT", "the job to time out", timeout=15)
    assert client(endpoint).health()["jobs"]["failed"] == 1
    # The worker was told to stop the job: it is free again well before the 60 s sleep ends.
    assert client(endpoint).run_sync({"after": "timeout"}, timeout=30)["echo"] == {
        "after": "timeout"
    }


def test_a_killed_worker_gets_its_job_retried_then_failed(endpoint: LocalEndpoint) -> None:
    assert endpoint.pool is not None and endpoint.backend is not None
    pool, backend = endpoint.pool, endpoint.backend
    job = client(endpoint).run({"text": "standin-sleep=60"})
    wait_for(lambda: job.status() == "IN_PROGRESS", "the job to start")
    first = job._fetch_job()["workerId"]
    pool.kill(first)

    def on_another_worker() -> bool:
        state = job._fetch_job()  # one read: on its way back it is queued, with no worker
        return state["status"] == "IN_PROGRESS" and state.get("workerId") not in (None, first)

    wait_for(on_another_worker, "the job to run again on another worker")
    assert job._fetch_job()["retries"] == 1
    assert client(endpoint).health()["jobs"]["retried"] == 1
    pool.kill(job._fetch_job()["workerId"])
    wait_for(lambda: job.status() == "FAILED", "the job to fail")
    assert "exited while running the job" in job._fetch_job()["error"]
    assert backend.jobs[job.job_id].status == "FAILED"  # never left IN_PROGRESS


def test_refresh_worker_retires_the_worker_after_its_job(endpoint: LocalEndpoint) -> None:
    output = client(endpoint).run_sync({"refresh": True}, timeout=30)
    pool = endpoint.pool
    assert pool is not None
    wait_for(lambda: output["worker"] not in pool.processes, "the worker to retire")


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append(body)
        status = 500 if type(self).fail_first > 0 else 200
        type(self).fail_first -= 1
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def test_webhook_gets_the_final_job_once_and_is_retried_on_failure(
    endpoint: LocalEndpoint,
) -> None:
    _Receiver.received, _Receiver.fail_first = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    try:
        for payload in ({"n": 1}, {"n": 2}):
            requests.post(
                f"{endpoint.client_base_url}/local/run",
                json={"input": payload, "webhook": url},
                headers=headers,
                timeout=10,
            )
        wait_for(lambda: len(_Receiver.received) == 2, "two webhooks")
        time.sleep(1.0)
        assert len(_Receiver.received) == 2  # once per job
        assert {hook["output"]["echo"]["n"] for hook in _Receiver.received} == {1, 2}
        assert all(hook["status"] == "COMPLETED" for hook in _Receiver.received)

        _Receiver.received, _Receiver.fail_first = [], 1
        requests.post(
            f"{endpoint.client_base_url}/local/run",
            json={"input": {"n": 3}, "webhook": url},
            headers=headers,
            timeout=10,
        )
        wait_for(lambda: len(_Receiver.received) == 2, "a webhook and its retry")  # 500, retry
        assert _Receiver.received[0]["id"] == _Receiver.received[1]["id"]
    finally:
        server.shutdown()


def test_scale_out_is_bounded_by_max_workers(endpoint: LocalEndpoint) -> None:
    jobs = [client(endpoint).run({"text": "standin-sleep=2", "i": i}) for i in range(4)]
    pool = endpoint.pool
    assert pool is not None
    wait_for(lambda: len(pool.processes) == 2, "two workers")
    time.sleep(1.0)
    assert len(pool.processes) == 2
    assert sorted(job.output(timeout=60)["echo"]["i"] for job in jobs) == [0, 1, 2, 3]


def test_purge_queue_and_bad_requests(endpoint: LocalEndpoint) -> None:
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    base = endpoint.client_base_url
    for i in range(3):
        requests.post(
            f"{base}/local/run",
            json={"input": {"i": i}, "policy": {"lowPriority": True}},
            headers=headers,
            timeout=10,
        )
    purged = requests.post(f"{base}/local/purge-queue", headers=headers, timeout=10).json()
    assert purged == {"removed": 3, "status": "completed"}
    assert requests.get(f"{base}/local/health", timeout=10).status_code == 401
    assert requests.get(f"{base}/other/health", headers=headers, timeout=10).status_code == 404
    missing = requests.get(f"{base}/local/status/nope", headers=headers, timeout=10)
    assert missing.status_code == 404
    no_input = requests.post(f"{base}/local/run", json={"x": 1}, headers=headers, timeout=10)
    assert no_input.status_code == 400 and "input" in no_input.json()["error"]


def test_scale_to_zero_after_idle_timeout_then_a_cold_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = make_endpoint(tmp_path, max_workers=1, idle_timeout_s=1.0, cold_start_delay_s=1.0)
    monkeypatch.setattr(runpod, "endpoint_url_base", local.client_base_url)
    try:
        pool = local.pool
        assert pool is not None
        started = time.monotonic()
        client(local).run_sync({"first": 1}, timeout=60)
        first_latency = time.monotonic() - started
        wait_for(lambda: not pool.processes, "scale to zero", timeout=20)
        assert client(local).health()["workers"]["idle"] == 0
        client(local).run_sync({"second": 1}, timeout=60)
        assert len(pool.cold_starts_s) == 2
        assert all(cold >= 1.0 for cold in pool.cold_starts_s)
        assert first_latency >= 1.0
    finally:
        local.stop()


def test_injected_faults_and_rate_limit_answer_like_a_struggling_endpoint(
    endpoint: LocalEndpoint, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    health_url = f"{endpoint.client_base_url}/local/health"
    endpoint.inject_fault(seconds=1.0, status=502)
    assert requests.get(health_url, headers=headers, timeout=10).status_code == 502
    time.sleep(1.1)
    assert requests.get(health_url, headers=headers, timeout=10).status_code == 200

    endpoint.inject_fault(seconds=5.0, delay_s=1.0)
    with pytest.raises(requests.Timeout):
        requests.get(health_url, headers=headers, timeout=0.5)
    endpoint.inject_fault(seconds=0)

    limited = LocalEndpoint(config=EndpointConfig(rate_limit_per_s=3)).start()
    try:
        url = f"{limited.client_base_url}/local/health"
        auth = {"Authorization": f"Bearer {limited.api_key}"}
        codes = [requests.get(url, headers=auth, timeout=10).status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    finally:
        limited.stop()


def test_batch_job_take_hands_out_a_list() -> None:
    local = LocalEndpoint(config=EndpointConfig(take_poll_s=0.5)).start()
    try:
        auth = {"Authorization": f"Bearer {local.api_key}"}
        for n in range(3):
            requests.post(
                f"{local.client_base_url}/local/run",
                json={"input": {"n": n}},
                headers=auth,
                timeout=10,
            )
        take = local.worker_urls()["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "w1")
        batch = take.replace("/job-take/", "/job-take-batch/") + "&batch_size=2"
        jobs = requests.get(batch, timeout=10).json()
        assert [job["input"]["n"] for job in jobs] == [0, 1]
        single = requests.get(take, timeout=10).json()
        assert single["input"] == {"n": 2}
        assert requests.get(take, timeout=10).status_code == 204
    finally:
        local.stop()


@pytest.mark.stack
def test_a_worker_at_concurrency_two_takes_the_next_job_while_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK at `concurrency_modifier` 2 asks for two jobs at once (the batch job-take) and
    then one more each time a job ends; the endpoint must hand them out while the worker still
    holds a job, as RunPod does, so one worker runs two at a time."""
    local = make_endpoint(
        tmp_path, min_workers=1, max_workers=1, env={"ECHO_CONCURRENCY": "2"}, idle_timeout_s=30
    )
    try:
        backend = local.backend
        assert backend is not None
        wait_for(lambda: backend.health()["workers"]["idle"] == 1, timeout=60)
        monkeypatch.setattr(runpod, "endpoint_url_base", local.client_base_url)
        sdk = client(local)
        jobs = [sdk.run({"text": "standin-sleep=1.5", "n": n}) for n in range(4)]
        wait_for(lambda: backend.health()["jobs"]["inProgress"] == 2, timeout=10)
        outputs = [job.output(timeout=30) for job in jobs]
        assert [output["echo"]["n"] for output in outputs] == [0, 1, 2, 3]
        assert {output["worker"] for output in outputs} == {"local-worker-1"}
        states = [backend.get(job.job_id) for job in jobs]
        starts = [state.started_at or 0.0 for state in states]
        ends = [state.completed_at or 0.0 for state in states]
        assert starts[1] < ends[0]  # the second job ran beside the first
        # Two at a time: two rounds of 1.5 s (plus the SDK's 1 s pauses between takes), where
        # one at a time needs four rounds and three pauses.
        assert max(ends) - min(starts) < 5.5
    finally:
        local.stop()
