"""A real-process fleet shared by many tenants (issue 22): the local stack with `--workers`
worker processes, each the real runpod SDK worker loop and the real handler around the
stand-in engine (cheap processes: no vLLM), and `--tenants` tenants, each with its own API key,
submitting `--batches` batches of mixed sizes and priorities through the official `openai` SDK.

It waits for every batch to end, then checks that every batch completed and that every request
is answered exactly once (its output and error files hold each input custom_id once), and prints
the figures:

- busy share: the workers' engine-busy seconds (the handler's busy clock, summed over the chunk
  summaries) ÷ (workers × the seconds from the first chunk's start to the last one's end; the
  tail, where fewer chunks are left than workers, counts against it);
- Jain's index of each tenant's running chunks ÷ its max-min fair share given every tenant's
  demand, sampled every second while at least two tenants have work at a priority
  (`infra/sim/fairness.py`), per priority: fairness is between tenants of one priority (`high`
  goes before `normal`, and `backfill` only runs on what nothing else wants); `jain_fairness`
  is the `normal` class's, where most work is;
- first-chunk waits by priority, and the control plane's events.

    python bench/fleet.py --workers 32 --tenants 20 --batches 100 --json

The last line is one JSON object with at least `batches`, `completed_batches`, `lost`,
`duplicated`, `busy_share` and `jain_fairness`.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.sim.fairness import fair_index  # noqa: E402
from infra.stack import LocalStack, StackConfig  # noqa: E402
from tests.support.lines import request_line  # noqa: E402
from tests.support.stack import standin_pool  # noqa: E402

TERMINAL = ("completed", "failed", "expired", "cancelled")
CHAT = "/v1/chat/completions"


@dataclass
class Submitted:
    id: str
    tenant: str
    priority: str
    custom_ids: list[str]
    created: float
    chunks: int = 0  # as its split cut them (read once its first chunk runs)


@dataclass
class Sampler:
    """Every second: each tenant's running chunks (the endpoint's jobs in progress) and its
    demand (its batches' chunks not yet completed), both read off the local endpoint's jobs in
    memory: reading the table every second would load the control plane it measures."""

    stack: LocalStack
    batches: dict[str, Submitted]
    jain: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    first_start: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    log: list[dict[str, Any]] = field(default_factory=list)  # every sample, for --samples

    def run(self) -> None:
        from control_plane.store import batches as batch_store

        assert self.stack.aws is not None and self.stack.endpoint is not None
        backend = self.stack.endpoint.backend
        assert backend is not None
        while not self.stop.wait(1.0):
            running: dict[str, collections.Counter[str]] = collections.defaultdict(
                collections.Counter
            )
            done: dict[str, set[str]] = collections.defaultdict(set)
            queued = 0
            for job in list(backend.jobs.values()):
                batch_id = job.input.get("batch_id") if isinstance(job.input, dict) else None
                if batch_id not in self.batches:
                    continue
                if job.status == "IN_PROGRESS":
                    batch = self.batches[batch_id]
                    running[batch.priority][batch.tenant] += 1
                    self.first_start.setdefault(batch_id, time.monotonic())
                elif job.status == "COMPLETED":
                    done[batch_id].add(job.input["chunk_id"])
                elif job.status == "IN_QUEUE":
                    queued += 1
            demand: dict[str, collections.Counter[str]] = collections.defaultdict(
                collections.Counter
            )
            for batch in list(self.batches.values()):
                if not batch.chunks:  # how many chunks its split made: read until known
                    item = batch_store.get_batch(self.stack.aws.table, batch.id)
                    batch.chunks = int(item.get("chunk_count", 0)) if item is not None else 0
                left = batch.chunks - len(done[batch.id])
                if left > 0:
                    demand[batch.priority][batch.tenant] += left
            for priority, wanted in demand.items():
                index = fair_index(running[priority], wanted)
                if index is not None:
                    self.jain[priority].append(index)
                    self.log.append(
                        {
                            "t": round(time.monotonic(), 1),
                            "priority": priority,
                            "jain": round(index, 4),
                            "queued": queued,
                            "running": dict(running[priority]),
                            "demand": dict(wanted),
                        }
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--min-requests", type=int, default=20)
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=100)
    # 100 requests × 1 s over 8 slots: a 12.5 s chunk, so the local stack's per-chunk cost (one
    # process's moto and API, 2 cores for 32 workers) is small beside the work it feeds.
    parser.add_argument("--request-s", type=float, default=1.0, help="stand-in engine seconds")
    parser.add_argument("--engine-slots", type=int, default=8, help="MAX_REQUESTS_IN_FLIGHT")
    parser.add_argument("--submit-over-s", type=float, default=20.0)
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--json", action="store_true", help="the JSON object only")
    parser.add_argument(
        "--samples", type=Path, help="write every fairness sample (running, demand) as JSON lines"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(args, Path(tmp))
    if not args.json:
        for key in ("batches", "completed_batches", "lost", "duplicated", "busy_share"):
            print(f"{key:>20}: {figures[key]}")
        print(f"{'jain_fairness':>20}: {figures['jain_fairness']}")
    print(json.dumps(figures))


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from control_plane.store import apikeys

    pool = standin_pool(
        workdir,
        workers=args.workers,
        max_workers=args.workers,
        idle_timeout_s=3600,
        env={
            "STANDIN_DELAY_S": str(args.request_s),
            "MAX_REQUESTS_IN_FLIGHT": str(args.engine_slots),
            "MAX_CONCURRENCY": "2",
        },
    )
    settings = {
        "chunk_max_requests": args.chunk_size,
        "chunk_min_requests": 1,
        "chunk_target_s": 0,
        "keep_hot_schedule": "never",
        "max_active_batches": args.batches,
        "worker_concurrency": 2,
        "progress_poll_s": 5,
    }
    stack = LocalStack(StackConfig(pool=pool, tick_interval_s=1.0, settings=settings)).start()
    try:
        assert stack.aws is not None and stack.endpoint is not None
        backend = stack.endpoint.backend
        assert backend is not None
        _wait_ready(stack, args.workers)
        keys = {
            f"tenant-{n:02d}": apikeys.create_key(stack.aws.table, tenant_id=f"tenant-{n:02d}")
            for n in range(args.tenants)
        }
        batches: dict[str, Submitted] = {}
        sampler = Sampler(stack, batches)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        started = time.time()
        _submit_all(stack, args, keys, batches)
        ended = _wait_all(stack, keys, batches, args.timeout_s)
        sampler.stop.set()
        thread.join()
        if args.samples is not None:
            args.samples.write_text("".join(json.dumps(row) + "\n" for row in sampler.log))
        return _figures(stack, args, keys, batches, sampler, started, ended)
    finally:
        stack.stop()


def _wait_ready(stack: LocalStack, workers: int) -> None:
    from infra.wait import wait_for

    assert stack.endpoint is not None and stack.endpoint.backend is not None
    backend = stack.endpoint.backend
    wait_for(
        lambda: backend.health()["workers"]["idle"] >= workers,
        f"{workers} ready workers",
        timeout=600,
    )


def _client(stack: LocalStack, key: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=key, max_retries=3)


def _submit_all(
    stack: LocalStack,
    args: argparse.Namespace,
    keys: dict[str, str],
    batches: dict[str, Submitted],
) -> None:
    rng = random.Random(args.seed)
    tenants = sorted(keys)
    plan = []
    for n in range(args.batches):
        tenant = tenants[n % len(tenants)]
        # Mixed sizes (a few large ones, many small), and priorities.
        size = int(args.min_requests + (args.max_requests - args.min_requests) * rng.random() ** 3)
        priority = rng.choices(["normal", "high", "backfill"], weights=[8, 1, 1])[0]
        plan.append((n, tenant, size, priority, args.submit_over_s * n / args.batches))
    start = time.monotonic()

    def submit(entry: tuple[int, str, int, str, float]) -> Submitted:
        n, tenant, size, priority, at = entry
        time.sleep(max(0.0, start + at - time.monotonic()))
        client = _client(stack, keys[tenant])
        custom_ids = [f"b{n}-r{i}" for i in range(size)]
        content = "".join(request_line(custom_id) + "\n" for custom_id in custom_ids)
        file = client.files.create(file=(f"b{n}.jsonl", content.encode()), purpose="batch")
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint=CHAT,
            completion_window="24h",
            extra_body={"priority": priority},
        )
        return Submitted(batch.id, tenant, priority, custom_ids, time.monotonic())

    with ThreadPoolExecutor(max_workers=8) as pool:
        for submitted in pool.map(submit, plan):
            batches[submitted.id] = submitted


def _wait_all(
    stack: LocalStack, keys: dict[str, str], batches: dict[str, Submitted], timeout_s: float
) -> float:
    from control_plane.store import batches as batch_store

    assert stack.aws is not None
    deadline = time.monotonic() + timeout_s
    unfinished = set(batches)
    while unfinished and time.monotonic() < deadline:
        time.sleep(5.0)
        for batch_id in sorted(unfinished):
            item = batch_store.get_batch(stack.aws.table, batch_id)
            if item is None or item["status"] not in TERMINAL:
                break  # the oldest unfinished one: look again later
            unfinished.discard(batch_id)
    return time.time()


def _figures(
    stack: LocalStack,
    args: argparse.Namespace,
    keys: dict[str, str],
    batches: dict[str, Submitted],
    sampler: Sampler,
    started: float,
    ended: float,
) -> dict[str, Any]:
    from control_plane.store import chunks as chunk_store

    assert stack.aws is not None
    lost = duplicated = completed = 0
    busy = 0.0
    first, last = float("inf"), 0.0
    waits: dict[str, list[float]] = collections.defaultdict(list)
    for batch in batches.values():
        client = _client(stack, keys[batch.tenant])
        remote = client.batches.retrieve(batch.id)
        if remote.status == "completed":
            completed += 1
        seen: collections.Counter[str] = collections.Counter()
        for file_id in (remote.output_file_id, remote.error_file_id):
            if file_id:
                for raw in client.files.content(file_id).content.splitlines():
                    if raw.strip():
                        seen[json.loads(raw)["custom_id"]] += 1
        duplicated += sum(n - 1 for n in seen.values() if n > 1)
        lost += len(set(batch.custom_ids) - set(seen))
        for chunk in chunk_store.list_chunks(stack.aws.table, batch_id=batch.id):
            if chunk["state"] == "done":
                busy += float(chunk.get("engine_busy_s", 0.0))
                first = min(first, float(chunk.get("run_started_at", first)))
                last = max(last, float(chunk.get("run_finished_at", last)))
        if batch.id in sampler.first_start:
            waits[batch.priority].append(sampler.first_start[batch.id] - batch.created)
    span = max(1.0, last - first)
    return {
        "workers": args.workers,
        "tenants": args.tenants,
        "batches": len(batches),
        "completed_batches": completed,
        "requests": sum(len(b.custom_ids) for b in batches.values()),
        "lost": lost,
        "duplicated": duplicated,
        "busy_share": round(min(1.0, busy / (args.workers * span)), 4),
        "busy_span_s": round(span, 1),
        "jain_fairness": _mean(sampler.jain.get("normal", [])),
        "jain_by_priority": {p: _mean(values) for p, values in sampler.jain.items()},
        "jain_samples": {p: len(values) for p, values in sampler.jain.items()},
        "wall_s": round(ended - started, 1),
        "first_chunk_wait_s_p95": {
            priority: round(sorted(values)[int(0.95 * (len(values) - 1))], 2)
            for priority, values in waits.items()
            if values
        },
    }


def _mean(values: list[float]) -> float:
    return round(statistics.fmean(values), 4) if values else 1.0


if __name__ == "__main__":
    main()
