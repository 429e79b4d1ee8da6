"""Prefix-grouped chunking against vLLM's batch runner, with prefixes that overflow the KV cache.

The workload: `--groups` long system prompts (distinct from their first tokens) and `--requests`
chat requests, each with one of them picked at random (seeded) and a short user turn of its own,
`--max-tokens` generated (`ignore_eos`, greedy). Both sides run the same engine: the same `vllm
serve` flags (built by `handler/settings.py`, as the worker builds them) with an explicit KV cache
of `--kv-cache-bytes`, so only a few of the prefixes stay cached at once.

    (b) `python -m vllm.entrypoints.openai.run_batch` on the file in its given order, timed from
        its "Reading batch" log line (engine loaded) to its exit; its wall time with the engine
        start is printed too
    (g) hotbatch end to end on the local stack with one warm worker (`python -m handler`):
        `files.create` → `completed`, chunks cut by prefix group (the default)
    (u) the same with `split_group_by_prefix` off (chunks in file order): the control that shows
        what grouping itself buys

It prints b/g (target >= 1.10) and u/g, and each run's prefix-cache hit rate: cached prompt
tokens over prompt tokens (vLLM's `prompt_tokens_details.cached_tokens`, summed; for hotbatch
the batch's `usage`). Every request must be answered exactly once on every side.

    python bench/prefix.py [--requests 4000] [--groups 64] [--prefix-words 900] \\
        [--kv-cache-bytes 8388608] [--chunk-size 1000] [--max-tokens 8] [--skip-control]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stack_runs import wait_until_done, worker_env

# The legacy variable overrides `--kv-cache-memory-bytes` in vLLM's CPU platform (whole GiB);
# the benchmark sizes the cache in bytes on both sides.
os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)

WORDS = (
    "the a batch request model token worker chunk engine answer question json score candidate "
    "evaluate summary output input yes no true false one two three four five six seven eight "
    "nine ten hello world system user assistant role content name value key list item data"
).split()
MAX_MODEL_LEN = 2048


def system_prompt(group: int, words: int) -> str:
    pick = random.Random(group)
    return f"grader {group}: " + " ".join(pick.choice(WORDS) for _ in range(words))


def write_requests(path: Path, args: argparse.Namespace) -> None:
    order = random.Random(1234)
    with path.open("w") as out:
        for i in range(args.requests):
            group = order.randrange(args.groups)
            body = {
                "model": "tiny",
                "messages": [
                    {"role": "system", "content": system_prompt(group, args.prefix_words)},
                    {"role": "user", "content": f"request {i}: evaluate candidate {i * 7 % 13}"},
                ],
                "max_tokens": args.max_tokens,
                "ignore_eos": True,
                "temperature": 0.0,
            }
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")


def engine_env(model: str, kv_cache_bytes: int) -> dict[str, str]:
    return {
        **worker_env(model),
        "MAX_MODEL_LEN": str(MAX_MODEL_LEN),
        "ENABLE_CHUNKED_PREFILL": "false",
        "VLLM_EXTRA_ARGS": f"--kv-cache-memory-bytes {kv_cache_bytes}",
    }


def hit_rate(prompt_tokens: int, cached_tokens: int) -> float:
    return cached_tokens / prompt_tokens if prompt_tokens else 0.0


def run_batch(model: str, path: Path, kv_cache_bytes: int, workdir: Path) -> dict[str, float]:
    """(b): vLLM's batch runner in a child process, with the worker's own engine flags."""
    from handler.settings import WorkerSettings

    env = engine_env(model, kv_cache_bytes)
    settings = WorkerSettings(
        model_name=model,
        openai_served_model_name_override="tiny",
        max_model_len=MAX_MODEL_LEN,
        enable_chunked_prefill=False,
        vllm_extra_args=env["VLLM_EXTRA_ARGS"],
    )
    output = workdir / "run_batch_output.jsonl"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch"]
    command += [*settings.serve_argv(), "-i", str(path), "-o", str(output)]
    child_env = {**os.environ, "VLLM_LOGGING_LEVEL": "INFO"}
    started = time.perf_counter()
    marks: dict[str, float] = {}
    log = workdir / "run_batch.log"
    with log.open("w") as sink:
        child = subprocess.Popen(
            command, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert child.stdout is not None
        for line in child.stdout:  # timestamps as lines arrive: the engine start is not timed
            sink.write(line)
            if "Reading batch from" in line and "reading" not in marks:
                marks["reading"] = time.perf_counter()
        child.wait()
    ended = time.perf_counter()
    if child.returncode != 0 or "reading" not in marks:
        raise RuntimeError(f"run_batch failed ({child.returncode}); see {log}")
    prompt = cached = 0
    answered: list[str] = []
    for line in output.read_text().splitlines():
        result = json.loads(line)
        assert result["error"] is None and result["response"]["status_code"] == 200, line[:300]
        usage = result["response"]["body"]["usage"]
        prompt += usage["prompt_tokens"]
        cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        answered.append(result["custom_id"])
    return {
        "seconds": ended - marks["reading"],
        "wall_with_start": ended - started,
        "hit_rate": hit_rate(prompt, cached),
        "answered": float(len(answered)),
        "unique": float(len(set(answered))),
    }


def hotbatch(
    model: str, path: Path, args: argparse.Namespace, workdir: Path, *, grouped: bool
) -> dict[str, float]:
    """(g) or (u): the whole local stack, one warm worker, timed from the upload."""
    from openai import OpenAI

    from control_plane.store import chunks as chunk_store
    from infra.stack import LocalStack, StackConfig, worker_pool

    pool = worker_pool(
        workers=1,
        env=engine_env(model, args.kv_cache_bytes),
        workdir=workdir,
        idle_timeout_s=600,
    )
    settings = {"chunk_max_requests": args.chunk_size, "split_group_by_prefix": grouped}
    stack = LocalStack(StackConfig(pool=pool, tick_interval_s=1.0, settings=settings)).start()
    try:
        assert stack.endpoint is not None and stack.endpoint.backend is not None
        while stack.endpoint.backend.health()["workers"]["idle"] < 1:
            time.sleep(0.5)
        client = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
        started = time.perf_counter()
        with path.open("rb") as handle:
            file = client.files.create(file=("prefix.jsonl", handle), purpose="batch")
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = wait_until_done(client, batch)
        elapsed = time.perf_counter() - started
        assert batch.status == "completed", batch.errors
        assert batch.output_file_id is not None and batch.usage is not None
        answered = [
            json.loads(line)["custom_id"]
            for line in client.files.content(batch.output_file_id).text.splitlines()
        ]
        assert stack.aws is not None
        chunks = chunk_store.list_chunks(stack.aws.table, batch_id=batch.id)
        usage = batch.usage
        grouping = (
            {"groups_per_chunk": sum(int(c.get("groups", 1)) for c in chunks) / len(chunks)}
            if grouped
            else {}  # the split computes no groups with grouping off
        )
        return {
            "seconds": elapsed,
            "hit_rate": hit_rate(usage.input_tokens, usage.input_tokens_details.cached_tokens),
            "prompt_tokens": float(usage.input_tokens),
            "answered": float(len(answered)),
            "unique": float(len(set(answered))),
            "failed": float(batch.request_counts.failed if batch.request_counts else -1),
            "chunks": float(len(chunks)),
            "engine_s": sum(float(c.get("engine_s", 0)) for c in chunks),
            **grouping,
        }
    finally:
        stack.stop()


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--prefix-words", type=int, default=900)
    parser.add_argument("--kv-cache-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--skip-control", action="store_true", help="skip (u)")
    parser.add_argument("--model", default=None, help="default: generate the tiny model")
    args = parser.parse_args()
    from infra.tiny_model import generate

    model = args.model or str(generate(Path(tempfile.gettempdir()) / "hotbatch-bench-tiny"))
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "requests.jsonl"
        write_requests(path, args)
        runs: dict[str, dict[str, float]] = {}
        runs["b"] = run_batch(model, path, args.kv_cache_bytes, work)
        print(f"(b) run_batch: {json.dumps(runs['b'])}", flush=True)
        runs["g"] = hotbatch(model, path, args, work / "grouped", grouped=True)
        print(f"(g) hotbatch, grouped: {json.dumps(runs['g'])}", flush=True)
        if not args.skip_control:
            runs["u"] = hotbatch(model, path, args, work / "ungrouped", grouped=False)
            print(f"(u) hotbatch, file order: {json.dumps(runs['u'])}", flush=True)
    for name, run in runs.items():
        assert run["answered"] == run["unique"] == args.requests, (name, run)
    summary = (
        f"{args.requests} requests, {args.groups} system prompts of {args.prefix_words} words, "
        f"{args.max_tokens} tokens out, KV cache {args.kv_cache_bytes} bytes, chunks of "
        f"{args.chunk_size}: run_batch {runs['b']['seconds']:.1f}s (hit "
        f"{runs['b']['hit_rate']:.1%}), hotbatch grouped {runs['g']['seconds']:.1f}s (hit "
        f"{runs['g']['hit_rate']:.1%}); b/g {runs['b']['seconds'] / runs['g']['seconds']:.3f} "
        "(target >= 1.10)"
    )
    if "u" in runs:
        summary += (
            f"; hotbatch file order {runs['u']['seconds']:.1f}s (hit {runs['u']['hit_rate']:.1%}),"
            f" u/g {runs['u']['seconds'] / runs['g']['seconds']:.3f}"
        )
    print(summary)


if __name__ == "__main__":
    main()
