"""The keep-hot day (issue 15): a bursty day of batch arrivals, compressed, replayed against the
local stack for each keep-hot policy, with real `python -m handler` workers (the tiny model on
vLLM's CPU build; scale to zero, one worker at most, RunPod's 5 s idle timeout).

The day: a quiet night, a morning burst, scattered afternoon arrivals and an evening burst,
drawn from a fixed seed; one hour of the day lasts `--hour-s` seconds (10: the day in 4
minutes), and every policy gets the same arrivals. Policies: `never` (scale to zero), `pending`
(warm while work waits), a window (`--window`, e.g. 06:00-21:00) and `always`.

The tick runs on the real clock (leases, timeouts and the idle timeout stay real), so the
window cannot be given to the tick as a schedule of the compressed day: the bench evaluates it
itself (`control_plane.health.schedule.in_schedule` at the day's time) and switches the stack's
`keep_hot_schedule` between `always` and `never` as the compressed clock crosses its edges.
Note what compression does: an engine load (~15-20 s here) lasts hours of the compressed day,
and the idle timeout half an hour; the window opens early for that reason. `--window-lead-s`
says the same in real seconds: the window opens that long before its start on the compressed
clock (its end stays), as an operator opens a window one cold start ahead of the busy hours.

Figures per policy, from the local endpoint's own records, sampled every 0.25 s:
- warm starts: chunks taken by a worker that was ready when the chunk's job arrived;
- idle while work waits: of the time a chunk job sat queued, the share with no ready worker;
- keep-warm overhead: ready-worker seconds without a chunk (pings, idle timeout) over the
  seconds it ran chunks; engine loads are counted apart (seconds spent starting workers);
- extra over `never`: the GPU-seconds a policy pays beyond scale-to-zero's (ready without a
  chunk, plus starting), over the seconds of work — what keeping warm costs;
- each batch's latency (create -> completed).

Batches of 300-1,500 chat requests of 16 tokens (~20K requests in the day); `always` starts the
day with its worker already up (a deployment kept warm has been for days), the others cold.

    python bench/keephot_day.py [--hour-s 10] [--window 06:00-21:00] [--window-lead-s 0]
        [--cold-start 0] [--max-workers 1] [--chart bench/keephot_day.png] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stack_runs import load, machine

if TYPE_CHECKING:
    from infra.runpod_local.models import EndpointBackend
    from infra.stack import LocalStack

# Arrivals per hour of the day: the bursts and the scattered rest.
DAY = {3: 1, 8: 3, 9: 3, 10: 1, 12: 1, 13: 1, 14: 2, 15: 1, 16: 1, 18: 2, 19: 3, 20: 1, 23: 1}
MONDAY = datetime(2026, 12, 7, tzinfo=UTC)
SAMPLE_S = 0.25


@dataclass
class Arrival:
    at_h: float  # hour of the day
    requests: int


def the_day(seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    arrivals = [
        Arrival(hour + rng.random(), rng.randint(300, 1500))
        for hour, count in DAY.items()
        for _ in range(count)
    ]
    return sorted(arrivals, key=lambda a: a.at_h)


@dataclass
class Samples:
    """What the sampler saw: seconds in each state, and a timeline for the chart."""

    busy_s: float = 0.0  # a ready worker running a chunk
    warm_idle_s: float = 0.0  # a ready worker without a chunk (pings, idle timeout)
    starting_s: float = 0.0  # a worker loading its engine
    waiting_s: float = 0.0  # a chunk job queued
    waiting_cold_s: float = 0.0  # ... with no ready worker
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (t, ready, queued)
    starts: dict[str, bool] = field(default_factory=dict)  # chunk job id -> warm start


def _values(mapping: dict[str, Any]) -> list[Any]:
    while True:
        try:  # the endpoint's loop changes it meanwhile
            return list(mapping.values())
        except RuntimeError:
            continue


def _is_chunk(job: Any) -> bool:
    return isinstance(job.input, dict) and job.input.get("action") == "process_chunk"


def sample(
    backend: EndpointBackend, samples: Samples, started: float, stop: threading.Event
) -> None:
    last = time.monotonic()
    while not stop.wait(SAMPLE_S):
        now = time.monotonic()
        dt, last = now - last, now
        jobs = {job.id: job for job in _values(backend.jobs)}
        workers = [w for w in _values(backend.workers) if w.alive]
        ready = [w for w in workers if w.ready_at is not None]
        for worker in workers:
            if worker.ready_at is None:
                samples.starting_s += dt
            elif any(j in jobs and _is_chunk(jobs[j]) for j in list(worker.jobs)):
                samples.busy_s += dt
            else:
                samples.warm_idle_s += dt
        queued = sum(1 for j in jobs.values() if _is_chunk(j) and j.status == "IN_QUEUE")
        if queued:
            samples.waiting_s += dt
            if not ready:
                samples.waiting_cold_s += dt
        samples.timeline.append((now - started, len(ready), queued))
        all_workers = {w.id: w for w in _values(backend.workers)}
        for job in jobs.values():
            if job.id in samples.starts or not _is_chunk(job) or job.worker_id is None:
                continue
            worker = all_workers.get(job.worker_id)
            ready_at = worker.ready_at if worker is not None else None
            samples.starts[job.id] = ready_at is not None and ready_at <= job.created_at


def request_lines(batch: int, requests: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"b{batch}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": f"batch {batch} item {i}"}],
                    "max_tokens": 16,
                },
            }
        ).encode()
        + b"\n"
        for i in range(requests)
    )


def day_stack(workdir: Path, schedule: str, cold_start_s: float, max_workers: int) -> LocalStack:
    from infra.local_stack import LocalOptions, planned

    options = LocalOptions(
        workers=0,
        max_workers=max_workers,
        cold_start_delay=cold_start_s,
        workdir=workdir.resolve(),
    )
    stack, _ = planned(options)
    stack.config.embed_model, stack.config.embed_pool = None, None
    stack.config.settings.update({"keep_hot_schedule": schedule, "keep_hot_workers": 1})
    return stack


def set_schedule(stack: LocalStack, schedule: str) -> None:
    assert stack.aws is not None
    if stack.aws.settings.keep_hot_schedule != schedule:
        settings = stack.aws.settings.model_copy(update={"keep_hot_schedule": schedule})
        stack.aws.settings = settings


def replay(
    policy: str, arrivals: list[Arrival], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    from openai import OpenAI

    from control_plane.health.schedule import in_schedule

    window = f"Mon-Sun {args.window}"
    schedule = "never" if policy == "window" else policy
    stack = day_stack(workdir, schedule, args.cold_start, args.max_workers)
    stack.start()
    samples = Samples()
    stop = threading.Event()
    try:
        assert stack.endpoint is not None and stack.endpoint.backend is not None
        client = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
        if policy == "always":
            # Steady state: a deployment kept warm has its worker up when the day begins.
            backend = stack.endpoint.backend
            while not any(w.ready_at is not None for w in _values(backend.workers)):
                time.sleep(0.5)
        time.sleep(3)  # the stack settles
        started = time.monotonic()
        sampler = threading.Thread(
            target=sample, args=(stack.endpoint.backend, samples, started, stop), daemon=True
        )
        sampler.start()
        batch_ids: list[str] = []
        pending = list(arrivals)
        day_s = 24 * args.hour_s
        while time.monotonic() - started < day_s:
            hour = (time.monotonic() - started) / args.hour_s
            if policy == "window":
                lead = args.window_lead_s / args.hour_s
                inside = any(
                    in_schedule(window, MONDAY + timedelta(hours=at), False)
                    for at in (hour, hour + lead)
                )
                set_schedule(stack, "always" if inside else "never")
            while pending and pending[0].at_h <= hour:
                arrival = pending.pop(0)
                content = request_lines(len(batch_ids), arrival.requests)
                file = client.files.create(file=("day.jsonl", content), purpose="batch")
                batch = client.batches.create(
                    input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                batch_ids.append(batch.id)
            time.sleep(0.1)
        latencies = []
        for batch_id in batch_ids:
            while (batch := client.batches.retrieve(batch_id)).status not in (
                "completed",
                "failed",
                "expired",
                "cancelled",
            ):
                time.sleep(0.5)
            assert batch.status == "completed", (batch_id, batch.status)
            assert batch.completed_at is not None
            latencies.append(batch.completed_at - batch.created_at)
    finally:
        stop.set()
        stack.stop()
    warm = sum(samples.starts.values())
    chunks = len(samples.starts)
    return {
        "policy": policy,
        "batches": len(latencies),
        "chunks": chunks,
        "warm_starts": warm / chunks if chunks else 0.0,
        "idle_while_waiting": samples.waiting_cold_s / samples.waiting_s
        if samples.waiting_s
        else 0.0,
        "keep_warm_overhead": samples.warm_idle_s / samples.busy_s if samples.busy_s else 0.0,
        "busy_s": round(samples.busy_s, 1),
        "warm_idle_s": round(samples.warm_idle_s, 1),
        "starting_s": round(samples.starting_s, 1),
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": sorted(latencies)[max(0, round(0.95 * len(latencies)) - 1)],
        "timeline": samples.timeline,
    }


def chart(
    results: list[dict[str, Any]], arrivals: list[Arrival], hour_s: float, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(results) + 1, 1, figsize=(10, 2.0 * (len(results) + 1) + 1), sharex=False
    )
    names = [r["policy"] for r in results]
    x = range(len(results))
    bars = axes[0]
    width = 0.27
    for offset, key, label in (
        (-width, "warm_starts", "warm starts"),
        (0.0, "idle_while_waiting", "idle while work waits"),
        (width, "keep_warm_overhead", "keep-warm overhead"),
    ):
        values = [100 * min(r[key], 3.0) for r in results]
        bars.bar([i + offset for i in x], values, width, label=label)
    bars.set_xticks(list(x), names)
    bars.set_ylabel("%")
    bars.axhline(90, color="grey", linewidth=0.5, linestyle="--")
    bars.legend(fontsize=8, ncols=3)
    bars.set_title("keep-hot day: the three figures per policy (overhead capped at 300 %)")
    for axis, result in zip(axes[1:], results, strict=True):
        times = [t / hour_s for t, _, _ in result["timeline"]]
        axis.step(times, [r for _, r, _ in result["timeline"]], where="post", label="ready workers")
        axis.fill_between(
            times,
            [min(q, 1) for _, _, q in result["timeline"]],
            step="post",
            alpha=0.3,
            color="tab:red",
            label="work queued",
        )
        axis.scatter([a.at_h for a in arrivals], [1.1] * len(arrivals), marker="v", s=12)
        axis.set_xlim(0, 24)
        axis.set_ylim(0, 1.3)
        axis.set_ylabel(result["policy"])
        axis.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("hour of the compressed day (arrivals marked)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def table(results: list[dict[str, Any]]) -> None:
    """The figures as a markdown table; `extra over never` and `p50 vs never` against the
    scale-to-zero run of the same day."""
    never = next((r for r in results if r["policy"] == "never"), None)
    print(
        "| policy | warm starts | idle while work waits | keep-warm overhead | extra over "
        "never | busy s | warm idle s | starting s | latency p50 / p95 | p50 vs never |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        extra = faster = "—"
        if never is not None and r["busy_s"]:
            paid = r["warm_idle_s"] + r["starting_s"]
            extra = (
                f"{100 * (paid - never['warm_idle_s'] - never['starting_s']) / r['busy_s']:.0f} %"
            )
        if never is not None and r["latency_p50_s"]:
            faster = f"{never['latency_p50_s'] / r['latency_p50_s']:.2f}x"
        print(
            f"| {r['policy']} | {100 * r['warm_starts']:.0f} % ({r['chunks']} chunks) | "
            f"{100 * r['idle_while_waiting']:.1f} % | {100 * r['keep_warm_overhead']:.0f} % | "
            f"{extra} | {r['busy_s']} | {r['warm_idle_s']} | {r['starting_s']} | "
            f"{r['latency_p50_s']} s / {r['latency_p95_s']} s | {faster} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hour-s", type=float, default=10.0)
    parser.add_argument("--window", default="06:00-21:00")
    parser.add_argument(
        "--window-lead-s", type=float, default=0.0, help="real seconds the window opens early"
    )
    parser.add_argument("--cold-start", type=float, default=0.0, help="extra seconds per start")
    parser.add_argument("--max-workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--policies", default="never,pending,window,always")
    parser.add_argument("--chart", type=Path, default=Path(__file__).with_name("keephot_day.png"))
    parser.add_argument("--json", type=Path, help="also write the figures and timelines here")
    parser.add_argument(
        "--from-json", type=Path, help="no run: the table and chart from an earlier --json"
    )
    args = parser.parse_args()
    arrivals = the_day(args.seed)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        table(saved["results"])
        chart(saved["results"], arrivals, saved["hour_s"], args.chart)
        print(f"chart: {args.chart}")
        return
    print(f"machine: {machine()}; load before: {load()}")
    print(
        f"day: {len(arrivals)} batches, {sum(a.requests for a in arrivals)} requests; one hour "
        f"= {args.hour_s:g} s; window {args.window} opening {args.window_lead_s:g} s early; "
        f"extra cold start {args.cold_start:g} s; max workers {args.max_workers}",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="keephot-day-") as tmp:
        for policy in args.policies.split(","):
            result = replay(policy, arrivals, args, Path(tmp) / policy)
            results.append(result)
            shown = {k: v for k, v in result.items() if k != "timeline"}
            print(json.dumps(shown), f"load {load()}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"hour_s": args.hour_s, "results": results}))
    table(results)
    chart(results, arrivals, args.hour_s, args.chart)
    print(f"chart: {args.chart}")


if __name__ == "__main__":
    main()
