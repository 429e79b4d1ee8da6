"""What the worker adds on top of vLLM: the same N chat requests through

    (a) raw `LLM.chat`                          vLLM's offline batch path
    (b) vLLM's OpenAI serving layer, in process  what `vllm run-batch` does
    (c) hotbatch `process_chunk`                  (b) + download, JSON lines, upload

and the ratios c/b (target >= 0.97) and c/a. (a) runs in a child process so its engine does not
share the machine with the other one; (b) and (c) share one engine and alternate, best of
`--repeats`. Every request generates exactly `--max-tokens` tokens (`ignore_eos`), and each run
uses fresh prompts so no mode profits from another's prefix cache.

    python bench/handler_overhead.py [--requests 2000] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")

MAX_MODEL_LEN = 512


def messages(run: int, count: int) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": f"run {run} request {i}: evaluate candidate {i * 7 % 13}"}]
        for i in range(count)
    ]


def bench_raw(model: str, count: int, max_tokens: int) -> float:
    """(a) Seconds for `LLM.chat` over the requests (called in a child process)."""
    # The baseline is vLLM itself, so this benchmark (not product code) imports it directly.
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    # The same engine configuration the worker uses: on the CPU build it turns chunked prefill
    # off (handler/engine.py explains why).
    llm = LLM(
        model=model,
        served_model_name="tiny",
        max_model_len=MAX_MODEL_LEN,
        seed=0,
        enable_chunked_prefill=False if current_platform.is_cpu() else None,
    )
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    llm.chat(messages(-1, 16), params, use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outputs = llm.chat(messages(0, count), params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    assert sum(len(o.outputs[0].token_ids) for o in outputs) == count * max_tokens
    return elapsed


async def bench_serving(engine: Any, run: int, count: int, max_tokens: int) -> float:
    """(b) Seconds for vLLM's serving layer alone: validate, create_chat_completion, gather."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    async def one(conversation: list[dict[str, str]]) -> Any:
        request = ChatCompletionRequest.model_validate(
            {
                "model": "tiny",
                "messages": conversation,
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "temperature": 0.0,
            }
        )
        return await engine._routes["/v1/chat/completions"].call(request, None)

    started = time.perf_counter()
    responses = await asyncio.gather(*(one(c) for c in messages(run, count)))
    elapsed = time.perf_counter() - started
    assert sum(r.usage.completion_tokens for r in responses) == count * max_tokens
    return elapsed


async def _stage(store: Any, run: int, count: int, max_tokens: int) -> Any:
    from handler.contract import ProcessChunkInput

    lines = [
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "tiny",
                    "messages": conversation,
                    "max_tokens": max_tokens,
                    "ignore_eos": True,
                    "temperature": 0.0,
                },
            }
        )
        for i, conversation in enumerate(messages(run, count))
    ]
    key = f"bench/{run}"
    store.put(f"{key}/input.jsonl", ("\n".join(lines) + "\n").encode())
    job = ProcessChunkInput(
        action="process_chunk",
        batch_id="batch_bench",
        chunk_id=str(run),
        endpoint="/v1/chat/completions",
        input_url=store.presign("GET", f"{key}/input.jsonl"),
        output_url=store.presign("PUT", f"{key}/output.jsonl"),
        error_url=store.presign("PUT", f"{key}/errors.jsonl"),
    )
    return job


async def bench_chunk(
    runtime: Any, store: Any, run: int, count: int, max_tokens: int
) -> tuple[float, dict[str, float]]:
    """(c) Seconds for `process_chunk`, including the download, JSON lines and the upload."""
    job = await _stage(store, run, count, max_tokens)
    started = time.perf_counter()
    summary = await runtime.process(job)  # what the handler calls: the loop hop included
    elapsed = time.perf_counter() - started
    assert summary.counts.completed == count, summary.failures[:3]
    assert summary.usage.completion_tokens == count * max_tokens
    return elapsed, summary.timings.model_dump()


async def bench_overhead_only(
    runtime: Any, store: Any, count: int, max_tokens: int, reply_body: dict[str, Any]
) -> float:
    """Seconds hotbatch's own code takes for a chunk when the engine answers instantly.

    The engine is replaced by one that returns a real response body (taken from a (c) run) at
    once, so what is left is download, parsing, the per-request wrapper, the output lines and
    the upload: a stable figure where (b) and (c) vary by ±15 % from run to run on 2 cores.
    """
    from handler.chunk import process_chunk
    from handler.engine import Reply
    from handler.pipeline import EngineGate

    class Replay:
        async def run(self, endpoint: str, body: dict[str, Any]) -> Reply:
            return Reply(200, reply_body)

    job = await _stage(store, 999, count, max_tokens)
    started = time.perf_counter()
    await runtime.submit(
        process_chunk(
            job,
            gate=EngineGate(Replay(), runtime.settings.max_requests_in_flight),
            session=runtime.session,
            worker=runtime.identity,
            transfer_retries=1,
        )
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="default: generate the tiny model")
    parser.add_argument("--raw-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    model = args.model
    if model is None:
        from infra.tiny_model import generate

        model = str(generate(Path(tempfile.gettempdir()) / "hotbatch-bench-tiny"))
    if args.raw_only:
        print(json.dumps({"raw_s": bench_raw(model, args.requests, args.max_tokens)}))
        return

    raw_runs = []
    for _ in range(args.repeats):
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--raw-only",
                "--model",
                model,
                "--requests",
                str(args.requests),
                "--max-tokens",
                str(args.max_tokens),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        raw_runs.append(json.loads(child.stdout.strip().splitlines()[-1])["raw_s"])

    from handler.runtime import start_runtime
    from handler.settings import WorkerSettings
    from infra.blob_server import BlobServer

    store = BlobServer().start()
    runtime = start_runtime(
        WorkerSettings(
            model_name=model, openai_served_model_name_override="tiny", max_model_len=MAX_MODEL_LEN
        )
    )
    serving_runs: list[float] = []
    chunk_runs: list[float] = []
    phases: list[dict[str, float]] = []
    overhead_runs: list[float] = []
    try:

        async def both() -> None:
            await runtime.submit(bench_serving(runtime.engine, 900, 16, args.max_tokens))
            for repeat in range(args.repeats):
                # Alternate the order so neither mode always runs on a freshly idle engine.
                order = ("b", "c") if repeat % 2 == 0 else ("c", "b")
                for mode in order:
                    run = 2 * repeat + (1 if mode == "b" else 2)
                    if mode == "b":
                        serving_runs.append(
                            await runtime.submit(
                                bench_serving(runtime.engine, run, args.requests, args.max_tokens)
                            )
                        )
                    else:
                        seconds, timing = await bench_chunk(
                            runtime, store, run, args.requests, args.max_tokens
                        )
                        chunk_runs.append(seconds)
                        phases.append(timing)

            output = (store.get(f"bench/{2 * args.repeats}/output.jsonl") or b"").splitlines()[0]
            reply_body = json.loads(output)["response"]["body"]
            overhead_runs.extend(
                [
                    await bench_overhead_only(
                        runtime, store, args.requests, args.max_tokens, reply_body
                    )
                    for _ in range(3)
                ]
            )

        asyncio.run(both())
    finally:
        runtime.stop()
        store.stop()

    n = args.requests
    a, b, c = n / min(raw_runs), n / min(serving_runs), n / min(chunk_runs)
    b_median, c_median = n / statistics.median(serving_runs), n / statistics.median(chunk_runs)
    best = phases[chunk_runs.index(min(chunk_runs))]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(f"requests: {n} chat x {args.max_tokens} tokens, best of {args.repeats}")
    print(f"(a) raw LLM.chat           {a:8.1f} req/s  runs(s)={_fmt(raw_runs)}")
    print(f"(b) vLLM serving layer     {b:8.1f} req/s  runs(s)={_fmt(serving_runs)}")
    print(f"(c) hotbatch process_chunk {c:8.1f} req/s  runs(s)={_fmt(chunk_runs)}")
    print(
        "    (c) phases: download {download_s}s, parse {parse_s}s, engine {engine_s}s, "
        "upload {upload_s}s".format(**best)
    )
    print(f"c/b = {c / b:.3f}   (target >= 0.97); on medians {c_median / b_median:.3f}")
    pairs = [b_s / c_s for b_s, c_s in zip(serving_runs, chunk_runs, strict=True)]
    median_pair = statistics.median(pairs)
    print(f"c/b per repeat (back to back, same engine): {_fmt(pairs)}, median {median_pair:.3f}")
    overhead = min(overhead_runs)
    print(
        f"hotbatch code alone (instant engine): {overhead:.3f}s per chunk = "
        f"{1e6 * overhead / n:.0f} us/request -> bound c/b >= "
        f"{min(serving_runs) / (min(serving_runs) + overhead):.3f}"
    )
    print(f"c/a = {c / a:.3f}")
    print(f"b/a = {b / a:.3f}")


def _fmt(runs: list[float]) -> str:
    return "[" + ", ".join(f"{r:.2f}" for r in runs) + "]"


if __name__ == "__main__":
    main()
