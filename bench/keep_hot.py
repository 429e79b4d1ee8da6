"""Keep-hot on real parts: how long a small batch takes when it arrives after the workers' idle
timeout, with keep-hot (`always`, one worker) against without (`never`, scale to zero).

Both runs use the whole local stack with real `python -m handler` workers on vLLM's CPU build
(the tiny model), min workers 0, RunPod's default idle timeout (5 s); the batch arrives after
three idle timeouts. Without keep-hot it pays a cold start (process start and engine load);
with it, a worker kept warm by health pings takes it at once.

    python bench/keep_hot.py [--requests 20] [--idle-timeout 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from stack_runs import wait_for_idle_workers, wait_until_done, worker_env

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def run(schedule: str, model: str, requests: int, idle_timeout: float, workdir: Path) -> float:
    from openai import OpenAI

    from infra.stack import LocalStack, StackConfig, worker_pool

    env = worker_env(model)
    pool = worker_pool(
        workers=0, max_workers=1, env=env, workdir=workdir, idle_timeout_s=idle_timeout
    )
    settings = {"keep_hot_schedule": schedule, "keep_hot_workers": 1}
    stack = LocalStack(StackConfig(pool=pool, tick_interval_s=1.0, settings=settings)).start()
    try:
        assert stack.endpoint is not None and stack.endpoint.backend is not None
        backend = stack.endpoint.backend
        if schedule != "never":
            wait_for_idle_workers(backend, busy_too=True)  # keep-hot brings the first worker up
        time.sleep(3 * idle_timeout)
        warm = backend.health()["workers"]
        lines = "".join(
            json.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "tiny",
                        "messages": [{"role": "user", "content": f"hello {i}"}],
                        "max_tokens": 8,
                    },
                }
            )
            + "\n"
            for i in range(requests)
        )
        client = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
        started = time.perf_counter()
        file = client.files.create(file=("kh.jsonl", lines.encode()), purpose="batch")
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = wait_until_done(client, batch)
        elapsed = time.perf_counter() - started
        assert batch.status == "completed", batch.status
        print(f"  {schedule:<6} workers before the batch: {warm}; batch done in {elapsed:.1f}s")
        return elapsed
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    args = parser.parse_args()
    from infra.tiny_model import generate

    model = str(generate(Path(tempfile.gettempdir()) / "hotbatch-bench-tiny"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        cold = run("never", model, args.requests, args.idle_timeout, Path(tmp) / "cold")
        hot = run("always", model, args.requests, args.idle_timeout, Path(tmp) / "hot")
    print(
        f"{args.requests} requests arriving after {3 * args.idle_timeout:.0f}s idle: without "
        f"keep-hot {cold:.1f}s, with keep-hot {hot:.1f}s ({cold / hot:.1f}x faster)"
    )


if __name__ == "__main__":
    main()
