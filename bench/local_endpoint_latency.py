"""Cold-start and warm job latency through the local RunPod endpoint with real workers
(`python -m handler`, vLLM CPU build, tiny model), measured with the runpod SDK as a client.

    python bench/local_endpoint_latency.py [--warm-runs 5]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import runpod

from infra.runpod_local import EndpointConfig, LocalEndpoint, PoolConfig
from infra.tiny_model import generate
from infra.wait import wait_for


def timed_health(endpoint: runpod.Endpoint) -> float:
    started = time.monotonic()
    report = endpoint.run_sync({"action": "health"}, timeout=900)
    assert report["status"] == "ok", report
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm-runs", type=int, default=5)
    parser.add_argument("--idle-timeout", type=float, default=3.0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hotbatch-latency-"))
    model = generate(Path(tempfile.gettempdir()) / "hotbatch-bench-tiny")
    pool = PoolConfig(
        min_workers=0,
        max_workers=1,
        idle_timeout_s=args.idle_timeout,
        log_dir=root / "logs",
        work_dir=root / "workers",
        env={
            "MODEL_NAME": str(model),
            "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny",
            "MAX_MODEL_LEN": "512",
            "VLLM_CPU_KVCACHE_SPACE": "1",
        },
    )
    local = LocalEndpoint(config=EndpointConfig(take_poll_s=2), pool_config=pool).start()
    runpod.endpoint_url_base = local.client_base_url
    endpoint = runpod.Endpoint("local", api_key=local.api_key)
    try:
        cold = [timed_health(endpoint)]
        back_to_back = [timed_health(endpoint) for _ in range(args.warm_runs)]
        warm = []
        for _ in range(args.warm_runs):
            time.sleep(1.5)  # let the worker finish its post-job pause and long-poll again
            warm.append(timed_health(endpoint))
        workers = local.pool
        assert workers is not None
        wait_for(lambda: not workers.processes, "scale to zero", timeout=math.inf, every=0.5)
        cold.append(timed_health(endpoint))
        engine_starts = workers.cold_starts_s
    finally:
        local.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(f"cold job latency (scale from zero, engine load included): {_fmt(cold)} s")
    print(f"worker start to first job-take (engine ready): {_fmt(engine_starts)} s")
    print(
        f"warm job latency, idle worker (health action, run_sync): "
        f"median {statistics.median(warm):.3f} s, runs {_fmt(warm)}"
    )
    print(
        f"warm job latency, back to back: median {statistics.median(back_to_back):.3f} s, "
        f"runs {_fmt(back_to_back)} (at concurrency 1 the runpod SDK sleeps 1 s after taking "
        "a job before it polls again)"
    )
    print(f"cold/warm: {statistics.median(cold) / statistics.median(warm):.0f}x")


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


if __name__ == "__main__":
    main()
