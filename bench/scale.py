"""A batch at scale (200,000 requests by default) end to end on the local stack, beside vLLM's
own batch runner on the same requests in the same run.

The workload is issue 13's: chat requests over `--prompts` shared long system prompts, each with
a short user turn of its own, `--max-tokens` generated (`ignore_eos`, greedy). hotbatch runs as
`hotbatch local run` starts it (one worker, its defaults; the per-batch request limit raised to
fit), with the worker loaded first. It prints:

- the wall time: `files.create` (upload) apart, then `batches.create` → `completed`;
- `python -m vllm.entrypoints.openai.run_batch` on the same file with the worker's engine flags
  and environment, its whole command timed (engine start included), and the ratio;
- the engine-busy share: the worker's busy seconds (summed over the chunks) over the span from
  the first chunk's start to the last one's end, and over create → completed;
- the peak RSS of every process (this one: moto, the control plane and the local endpoint; the
  worker and its engine core; run_batch and its engine core), sampled every half second;
- DynamoDB and S3 calls per 1,000 requests, counted at moto's server (the control plane's own
  calls and the workers' presigned transfers alike), from `batches.create` to `completed`;
- the time per phase: upload, split (create → in_progress), dispatch (→ the first chunk starts
  on the worker), engine (first chunk start → last chunk end), merge (→ completed).

Every request must be answered exactly once on both sides.

    python bench/scale.py [--requests 200000] [--prompts 8] [--prompt-words 300]
        [--max-tokens 8] [--skip-run-batch] [-- extra `hotbatch local run` flags]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from stack_runs import (
    answered_once,
    load,
    machine,
    run_batch,
    write_shared_prefix_requests,
)


@dataclass
class RssPeaks:
    """Peak RSS per process of this process tree, sampled on a thread."""

    interval_s: float = 0.5
    peaks: dict[int, tuple[str, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> RssPeaks:
        threading.Thread(target=self._run, name="rss", daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval_s):
            for process in [me, *me.children(recursive=True)]:
                try:
                    rss = process.memory_info().rss
                    label = _label(process)
                except psutil.Error:
                    continue
                _, best = self.peaks.get(process.pid, (label, 0))
                self.peaks[process.pid] = (label, max(best, rss))

    def report(self) -> list[tuple[str, float]]:
        rows = [(f"{label} (pid {pid})", rss / 2**20) for pid, (label, rss) in self.peaks.items()]
        return sorted(rows, key=lambda row: -row[1])


def _label(process: psutil.Process) -> str:
    if process.pid == os.getpid():
        return "bench: moto, control plane, local RunPod endpoint"
    command = " ".join(process.cmdline())
    if "run_batch" in command:
        return "run_batch"
    if "-m handler" in command:
        return "worker (python -m handler)"
    return process.name() or command[:60]


class AwsCalls:
    """Requests moto's server answers, by service and operation (the DynamoDB target, or the
    S3 method, presigned or not)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.counting = False

    def install(self) -> None:
        from moto import server

        original = server.DomainDispatcherApplication.__call__
        calls = self

        def counted(app: Any, environ: dict[str, Any], start_response: Any) -> Any:
            if calls.counting:
                calls.counts[_operation(environ)] += 1
            return original(app, environ, start_response)

        server.DomainDispatcherApplication.__call__ = counted

    def total(self, service: str) -> int:
        return sum(n for op, n in self.counts.items() if op.startswith(service))


def _operation(environ: dict[str, Any]) -> str:
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target.startswith("DynamoDB"):
        return f"dynamodb:{target.split('.', 1)[-1]}"
    presigned = "X-Amz-Signature" in environ.get("QUERY_STRING", "")
    return f"s3:{environ.get('REQUEST_METHOD', '?')}{' presigned' if presigned else ''}"


def hotbatch(
    path: Path, args: argparse.Namespace, workdir: Path, calls: AwsCalls
) -> dict[str, Any]:
    from openai import OpenAI

    from control_plane.metering.throughput import busy_share
    from control_plane.store import batches as batch_store
    from control_plane.store import chunks as chunk_store
    from infra.cli import run_stack

    stack, _ = run_stack(path, "--workdir", str(workdir), *args.flags)
    stack.config.settings["max_requests_per_batch"] = max(50_000, args.requests)
    stack.start()
    try:
        assert stack.endpoint is not None and stack.endpoint.backend is not None
        while stack.endpoint.backend.health()["workers"]["idle"] < 1:
            time.sleep(0.5)
        client = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
        marks = {"upload": time.time()}
        with path.open("rb") as handle:
            file = client.files.create(file=(path.name, handle), purpose="batch")
        calls.counting = True
        marks["create"] = time.time()
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
            marks.setdefault(batch.status, time.time())  # when each status was first seen
        marks["done"] = time.time()
        calls.counting = False
        assert batch.status == "completed", (batch.status, batch.errors)
        assert batch.output_file_id is not None
        output = client.files.content(batch.output_file_id).content
        errors = client.files.content(batch.error_file_id).content if batch.error_file_id else b""
        tokens = answered_once(output, errors, args.requests)
        assert stack.aws is not None
        chunks = chunk_store.list_chunks(stack.aws.table, batch_id=batch.id)
        item = batch_store.get_batch(stack.aws.table, batch.id)
        assert item is not None
        share = busy_share(chunks)
        first = min(float(c["run_started_at"]) for c in chunks)
        last = max(float(c["run_finished_at"]) for c in chunks)
        in_progress = marks.get("in_progress", first)
        wall = marks["done"] - marks["create"]
        return {
            "seconds": wall,
            "completion_tokens": tokens,
            "chunks": len(chunks),
            "chunk_requests": int(item.get("chunk_requests", 0)),
            "busy_s": share.busy_s,
            "engine_span_s": share.span_s,
            "busy_share_of_span": share.share,
            "busy_share_of_wall": share.busy_s / wall,
            "phases_s": {
                "upload": round(marks["create"] - marks["upload"], 2),
                "split": round(in_progress - marks["create"], 2),
                "dispatch": round(first - in_progress, 2),
                "engine": round(last - first, 2),
                "merge": round(marks["done"] - last, 2),
                # The batch's own stamps (whole seconds): finalizing → completed is the merge.
                "finalizing_to_completed": int(item.get("completed_at", 0))
                - int(item.get("finalizing_at", 0)),
            },
        }
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-words", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--skip-run-batch", action="store_true")
    parser.add_argument("flags", nargs="*", help="extra `hotbatch local run` flags (after --)")
    args = parser.parse_args()
    from infra.cli import run_stack

    print(f"machine: {machine()}; load average at start {load()}", flush=True)
    calls = AwsCalls()
    calls.install()
    with tempfile.TemporaryDirectory(prefix="hotbatch-scale-") as tmp, RssPeaks() as rss:
        work = Path(tmp)
        path = work / "requests.jsonl"
        write_shared_prefix_requests(
            path,
            requests=args.requests,
            prompts=args.prompts,
            words=args.prompt_words,
            max_tokens=args.max_tokens,
        )
        print(f"input: {path.stat().st_size / 2**20:.1f} MiB", flush=True)
        _, env = run_stack(path, "--workdir", str(work / "stack"), *args.flags)
        b: dict[str, Any] | None = None
        if not args.skip_run_batch:
            b = run_batch(path, work, env)
            output = (work / "run_batch_output.jsonl").read_bytes()
            b["completion_tokens"] = answered_once(output, b"", args.requests)
            del output
            print(f"(b) run_batch: {json.dumps(b)}; load {load()}", flush=True)
        h = hotbatch(path, args, work / "stack", calls)
        print(f"(h) hotbatch: {json.dumps(h)}; load {load()}", flush=True)
    per_k = 1000 / args.requests
    print(
        f"{args.requests} requests: hotbatch create → completed {h['seconds']:.1f}s over "
        f"{h['chunks']} chunks of up to {h['chunk_requests']}"
        + (f"; run_batch {b['seconds']:.1f}s, b/h {b['seconds'] / h['seconds']:.2f}x" if b else "")
        + f"; engine busy {h['busy_share_of_span']:.1%} of its span, "
        f"{h['busy_share_of_wall']:.1%} of create → completed"
    )
    print("phases (s): " + ", ".join(f"{k} {v}" for k, v in h["phases_s"].items()))
    print(
        f"DynamoDB calls per 1,000 requests: {calls.total('dynamodb') * per_k:.1f}; "
        f"S3 calls per 1,000 requests: {calls.total('s3') * per_k:.1f}"
    )
    for operation, n in sorted(calls.counts.items(), key=lambda item: -item[1]):
        print(f"  {operation}: {n} ({n * per_k:.2f} per 1,000)")
    print("peak RSS (MiB):")
    for label, mib in rss.report():
        if mib >= 20:
            print(f"  {mib:8.1f}  {label}")


if __name__ == "__main__":
    main()
