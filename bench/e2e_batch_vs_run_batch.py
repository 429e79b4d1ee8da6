"""Issue 13's must-show: hotbatch on the local stack against vLLM's own batch runner, one file.

The workload: `--requests` chat requests (20,000), each with one of `--prompts` (8) long system
prompts of `--prompt-words` words and a short user turn of its own, `--max-tokens` (8) generated
(`ignore_eos`, greedy).

    (b) `python -m vllm.entrypoints.openai.run_batch` on the file, with the engine flags and
        environment the local stack gives its worker (the tiny model, its max-model-len and
        KV cache), its whole command timed, engine start included: what a user of run_batch
        waits for
    (h) `hotbatch local run`'s stack with its defaults (one worker, `python -m handler` on
        vLLM's CPU build, default chunk size, the tick every second, webhooks), the worker
        loaded first as `local run` waits for it; timed from `batches.create` to the batch
        reading `completed` (the upload before it is printed apart)

It prints b/h (target >= 1.5), the engine-busy share (the worker's busy seconds summed over
the batch's chunks, over the span from the first chunk's start to the last one's end, and over
the whole create → completed time), and checks every request was answered exactly once on both
sides.

    python bench/e2e_batch_vs_run_batch.py [--requests 20000] [--prompts 8] [--prompt-words 300]
        [--max-tokens 8] [--order bh|hb] [-- extra `hotbatch local run` flags]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from stack_runs import (
    answered_once,
    load,
    machine,
    run_batch,
    wait_until_done,
    write_shared_prefix_requests,
)


def hotbatch(path: Path, requests: int, workdir: Path, flags: list[str]) -> dict[str, Any]:
    from openai import OpenAI

    from control_plane.metering.throughput import busy_share
    from control_plane.store import chunks as chunk_store
    from infra.cli import run_stack

    stack, _ = run_stack(path, "--workdir", str(workdir), *flags)
    stack.start()
    try:
        assert stack.endpoint is not None and stack.endpoint.backend is not None
        while stack.endpoint.backend.health()["workers"]["idle"] < 1:
            time.sleep(0.5)
        client = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
        uploading = time.perf_counter()
        with path.open("rb") as handle:
            file = client.files.create(file=(path.name, handle), purpose="batch")
        created = time.perf_counter()
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = wait_until_done(client, batch)
        completed = time.perf_counter()
        assert batch.status == "completed", (batch.status, batch.errors)
        assert batch.output_file_id is not None
        output = client.files.content(batch.output_file_id).content
        errors = client.files.content(batch.error_file_id).content if batch.error_file_id else b""
        tokens = answered_once(output, errors, requests)
        assert stack.aws is not None
        chunks = chunk_store.list_chunks(stack.aws.table, batch_id=batch.id)
        share = busy_share(chunks)
        wall = completed - created
        return {
            "seconds": wall,
            "upload_s": created - uploading,
            "completion_tokens": tokens,
            "chunks": len(chunks),
            "chunk_requests": max(int(c.get("requests", 0)) for c in chunks),
            "busy_s": share.busy_s,
            "engine_span_s": share.span_s,
            "busy_share_of_span": share.share,
            "busy_share_of_wall": share.busy_s / wall,
            "engine_s_summed": round(sum(float(c.get("engine_s", 0)) for c in chunks), 2),
        }
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-words", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--order", choices=("bh", "hb"), default="bh")
    parser.add_argument("flags", nargs="*", help="extra `hotbatch local run` flags (after --)")
    args = parser.parse_args()
    from infra.cli import run_stack

    print(f"machine: {machine()}; load average at start {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hotbatch-e2e-") as tmp:
        work = Path(tmp)
        path = work / "requests.jsonl"
        write_shared_prefix_requests(
            path,
            requests=args.requests,
            prompts=args.prompts,
            words=args.prompt_words,
            max_tokens=args.max_tokens,
        )
        # The worker environment the stack would give its worker (the tiny model generated
        # into the same workdir), so run_batch gets exactly the same engine.
        _, env = run_stack(path, "--workdir", str(work / "stack"), *args.flags)
        runs: dict[str, dict[str, Any]] = {}
        for side in args.order:
            if side == "b":
                runs["b"] = run_batch(path, work, env)
                output = (work / "run_batch_output.jsonl").read_bytes()
                runs["b"]["completion_tokens"] = answered_once(output, b"", args.requests)
                print(f"(b) run_batch: {json.dumps(runs['b'])}; load {load()}", flush=True)
            else:
                runs["h"] = hotbatch(path, args.requests, work / "stack", args.flags)
                print(f"(h) hotbatch: {json.dumps(runs['h'])}; load {load()}", flush=True)
    b, h = runs["b"], runs["h"]
    assert b["completion_tokens"] == h["completion_tokens"] == args.requests * args.max_tokens
    print(
        f"{args.requests} requests, {args.prompts} system prompts of {args.prompt_words} words, "
        f"{args.max_tokens} tokens out: run_batch {b['seconds']:.1f}s (engine start included; "
        f"{b['after_engine_start_s']:.1f}s after it), hotbatch create → completed "
        f"{h['seconds']:.1f}s over {h['chunks']} chunks of up to {h['chunk_requests']}; "
        f"b/h {b['seconds'] / h['seconds']:.2f}x (target >= 1.5); engine busy "
        f"{h['busy_s']:.1f}s = {h['busy_share_of_span']:.1%} of the engine span "
        f"({h['engine_span_s']:.1f}s), {h['busy_share_of_wall']:.1%} of create → completed "
        "(target >= 95%); every request answered exactly once on both sides"
    )


if __name__ == "__main__":
    main()
