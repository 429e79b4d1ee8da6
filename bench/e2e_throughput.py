"""End-to-end throughput of hotbatch against raw vLLM on the same requests.

    (a) raw `LLM.chat` over the N requests, in a child process (bench/handler_overhead.py)
    (e) the whole local stack: upload through the openai SDK → split → tick → local RunPod
        endpoint → a real worker (`python -m handler`, vLLM's CPU build) → webhooks → merged
        output file, timed from `files.create` until the batch is `completed`

and the ratio a/e (target >= 0.8). Every request generates exactly `--max-tokens` tokens
(`ignore_eos`). The worker's summed engine time (`engine_s` of every chunk) is printed beside it:
e minus that is what the control plane and the transport cost.

    python bench/e2e_throughput.py [--requests 4000] [--max-tokens 64] [--chunk-size 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stack_runs import wait_for_idle_workers, wait_until_done, worker_env

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

BENCH = Path(__file__).resolve().parent


def request_file(path: Path, count: int, max_tokens: int) -> None:
    sys.path.insert(0, str(BENCH))
    from handler_overhead import messages

    with path.open("w") as out:
        for i, conversation in enumerate(messages(0, count)):
            body = {
                "model": "tiny",
                "messages": conversation,
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "temperature": 0.0,
            }
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")


def raw_seconds(model: str, count: int, max_tokens: int) -> float:
    child = subprocess.run(
        [
            sys.executable,
            str(BENCH / "handler_overhead.py"),
            "--raw-only",
            "--model",
            model,
            "--requests",
            str(count),
            "--max-tokens",
            str(max_tokens),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds: float = json.loads(child.stdout.strip().splitlines()[-1])["raw_s"]
    return seconds


def end_to_end(model: str, path: Path, chunk_size: int, workdir: Path) -> dict[str, float]:
    from openai import OpenAI

    from control_plane.store import chunks as chunk_store
    from infra.stack import LocalStack, StackConfig, worker_pool

    env = worker_env(model)
    pool = worker_pool(workers=1, env=env, workdir=workdir, idle_timeout_s=600)
    stack = LocalStack(
        StackConfig(pool=pool, tick_interval_s=1.0, settings={"chunk_max_requests": chunk_size})
    ).start()
    try:
        assert stack.endpoint is not None and stack.endpoint.backend is not None
        wait_for_idle_workers(stack.endpoint.backend)
        client = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
        started = time.perf_counter()
        with path.open("rb") as handle:
            file = client.files.create(file=("bench.jsonl", handle), purpose="batch")
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = wait_until_done(client, batch)
        elapsed = time.perf_counter() - started
        assert batch.status == "completed", batch.errors
        assert batch.request_counts is not None and batch.request_counts.failed == 0
        assert stack.aws is not None
        chunks = chunk_store.list_chunks(stack.aws.table, batch_id=batch.id)
        engine = sum(float(c.get("engine_s", 0)) for c in chunks)
        return {"seconds": elapsed, "engine_s": engine, "chunks": len(chunks)}
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--model", default=None, help="default: generate the tiny model")
    args = parser.parse_args()
    from infra.tiny_model import generate

    model = args.model or str(generate(Path(tempfile.gettempdir()) / "hotbatch-bench-tiny"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.jsonl"
        request_file(path, args.requests, args.max_tokens)
        raw = raw_seconds(model, args.requests, args.max_tokens)
        e2e = end_to_end(model, path, args.chunk_size, Path(tmp) / "stack")
    print(
        f"{args.requests} requests x {args.max_tokens} tokens, chunks of {args.chunk_size}: "
        f"raw LLM.chat {raw:.1f}s ({args.requests / raw:.0f} req/s); end to end "
        f"{e2e['seconds']:.1f}s ({args.requests / e2e['seconds']:.0f} req/s) over "
        f"{int(e2e['chunks'])} chunks, worker engine time {e2e['engine_s']:.1f}s; "
        f"ratio {raw / e2e['seconds']:.3f} (target >= 0.8)"
    )


if __name__ == "__main__":
    main()
