"""The keep-hot day (issue 15): a bursty day of batch arrivals, compressed, replayed against the
local stack for each keep-hot policy, with real `python -m handler` workers (the tiny model on
vLLM's CPU build; scale to zero, one worker at most, RunPod's 5 s idle timeout).

The day: a quiet night, a morning burst, scattered afternoon arrivals and an evening burst,
drawn from a fixed seed; one hour of the day lasts `--hour-s` seconds (10: the day in 4
minutes), and every policy gets the same arrivals. The team's pipelines recur: the day replayed
is the eighth of a week in which each batch comes back at its time of day give or take
`--jitter-min`, with `--ad-hoc` batches a day at random times besides (0 and 0: the same day
every day). `--scale` multiplies every batch's requests. Policies: `never` (scale to zero),
`pending` (warm while work waits), a window (`--window`, e.g. 06:00-21:00), `learned` (the
control plane's forecast, `control_plane.health.forecast`, from the seven days before, warming
`--learned-lead-s` real seconds ahead of each recurring batch, or with `auto` by the lead the
tick measured: the slowest of the last five cold starts its cold ping rounds waited, plus 2 s)
and `always`.

The tick runs on the real clock (leases, timeouts and the idle timeout stay real), so the
window and the forecast cannot be given to the tick on the compressed day: the bench evaluates
them itself (`in_schedule` and `expects_work` at the day's time) and switches the stack's
`keep_hot_schedule` between `always` and `never` as the compressed clock crosses their edges.
Note what compression does: an engine load (~15-20 s here) lasts hours of the compressed day,
and the idle timeout half an hour; the window opens early for that reason. `--window-lead-s`
says the same in real seconds: the window opens that long before its start on the compressed
clock (its end stays), as an operator opens a window one cold start ahead of the busy hours.

Figures per policy, from the local endpoint's own records, sampled every 0.25 s:
- warm starts: chunks taken by a worker that was ready when the chunk's job arrived (the
  goal: >= 90 %);
- GPU idle while work waits: of the ready-worker seconds while a chunk job was queued or
  running, the share without a chunk — a warm GPU that work waits for and that sits idle, as
  `GET /v1/health` rates it (the goal: < 5 %);
- cold waits: of the time a chunk job sat queued, the share with no ready worker (cold starts
  seen from the queue; time-weighted, so one long cold wait outweighs many warm ones);
- keep-warm overhead: ready-worker seconds without a chunk (pings, idle timeout) over the
  seconds it ran chunks; engine loads are counted apart (seconds spent starting workers);
- extra over `never`: the GPU-seconds a policy pays beyond scale-to-zero's (ready without a
  chunk, plus starting), over the seconds of work — what keeping warm costs (the goal's
  keep-hot overhead: <= 10 %);
- each batch's latency (create -> completed).

Batches of 300-1,500 chat requests of 16 tokens (~20K requests in the day); `always` starts the
day with its worker already up (a deployment kept warm has been for days), the others cold,
after one engine load before the day (`--prewarm`, on by default: the caches a host that has run
the image before has filled; runs recorded before 2026-12-04 09:00 UTC had none).

    python bench/keephot_day.py [--hour-s 10] [--window 06:00-21:00] [--window-lead-s 0]
        [--learned-lead-s 25] [--tolerance-min 15] [--jitter-min 0] [--ad-hoc 0] [--scale 1]
        [--cold-start 0] [--max-workers 1] [--no-prewarm] [--policies never,...] [--chart FILE]
        [--json FILE]
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
# `--learned-lead-s auto`: the control plane's measured lead on the real clock, its margin the
# local tick and the bench's own loop; 30 s until a cold start has been measured.
AUTO_LEAD_MARGIN_S = 2
AUTO_LEAD_FALLBACK_S = 30


@dataclass
class Arrival:
    at_h: float  # hour of the day
    requests: int


def the_day(
    seed: int, day: int = 7, *, jitter_h: float = 0.0, ad_hoc: int = 0, scale: float = 1.0
) -> list[Arrival]:
    """Day `day` of the team's week: the seed's pipelines, each shifted by up to `jitter_h`
    that day, and `ad_hoc` batches at random times."""
    rng = random.Random(seed)
    pipelines = [
        Arrival(hour + rng.random(), rng.randint(300, 1500))
        for hour, count in DAY.items()
        for _ in range(count)
    ]
    today = random.Random(f"{seed}-{day}")
    arrivals = [
        Arrival(min(23.99, max(0.0, a.at_h + today.uniform(-jitter_h, jitter_h))), a.requests)
        for a in pipelines
    ]
    arrivals += [Arrival(today.uniform(0, 24), today.randint(300, 1500)) for _ in range(ad_hoc)]
    return sorted(
        (Arrival(a.at_h, round(a.requests * scale)) for a in arrivals), key=lambda a: a.at_h
    )


def history(args: argparse.Namespace) -> list[int]:
    """The week before the replayed day, as batch creation times on the day's calendar."""
    return [
        int((MONDAY - timedelta(days=7 - day) + timedelta(hours=a.at_h)).timestamp())
        for day in range(7)
        for a in the_day(args.seed, day, jitter_h=args.jitter_min / 60, ad_hoc=args.ad_hoc)
    ]


@dataclass
class Samples:
    """What the sampler saw: seconds in each state, and a timeline for the chart."""

    busy_s: float = 0.0  # a ready worker running a chunk
    warm_idle_s: float = 0.0  # a ready worker without a chunk (pings, idle timeout)
    starting_s: float = 0.0  # a worker loading its engine
    waiting_s: float = 0.0  # a chunk job queued
    waiting_cold_s: float = 0.0  # ... with no ready worker
    ready_while_work_s: float = 0.0  # ready-worker seconds while a chunk is queued or running
    idle_while_work_s: float = 0.0  # ... of which without a chunk
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
        queued = sum(1 for j in jobs.values() if _is_chunk(j) and j.status == "IN_QUEUE")
        running = any(_is_chunk(j) and j.status == "IN_PROGRESS" for j in jobs.values())
        for worker in workers:
            if worker.ready_at is None:
                samples.starting_s += dt
                continue
            if queued or running:
                samples.ready_while_work_s += dt
            if any(j in jobs and _is_chunk(jobs[j]) for j in list(worker.jobs)):
                samples.busy_s += dt
            else:
                samples.warm_idle_s += dt
                if queued or running:
                    samples.idle_while_work_s += dt
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

    from control_plane.health.forecast import Forecast, expects_work, lead_s
    from control_plane.health.schedule import in_schedule
    from control_plane.store.health import load_pings

    window = f"Mon-Sun {args.window}"
    schedule = "never" if policy in ("window", "learned") else policy
    # The forecast on the day's calendar: an hour of the day is `hour_s` real seconds.
    day_s_per_real_s = 3600 / args.hour_s
    fixed_lead = None if args.learned_lead_s == "auto" else float(args.learned_lead_s)
    lead = fixed_lead if fixed_lead is not None else AUTO_LEAD_FALLBACK_S
    leads: list[float] = []  # the lead each time it changed
    lead_read = 0.0
    arrived = history(args)
    stack = day_stack(workdir, schedule, args.cold_start, args.max_workers)
    stack.start()
    samples = Samples()
    stop = threading.Event()
    try:
        assert stack.endpoint is not None and stack.endpoint.backend is not None
        client = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
        backend = stack.endpoint.backend
        if args.prewarm or policy == "always":
            # One engine load before the day, for every policy: a fresh stack's first load
            # fills the page and compile caches (~45 s here against 20-29 s after), which a
            # host that has run the image before has done. `always` keeps that worker up (a
            # deployment kept warm has been for days); the others let it go.
            set_schedule(stack, "always")
            while not any(w.ready_at is not None for w in _values(backend.workers)):
                time.sleep(0.5)
            set_schedule(stack, schedule)
            while policy != "always" and any(w.alive for w in _values(backend.workers)):
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
            if policy == "learned":
                if fixed_lead is None and time.monotonic() - lead_read >= 1.0:
                    # As the tick does: the cold starts its cold ping rounds measured.
                    assert stack.aws is not None
                    lead_read = time.monotonic()
                    measured = load_pings(stack.aws.table).cold_starts_s
                    lead = lead_s(
                        measured, margin_s=AUTO_LEAD_MARGIN_S, fallback_s=AUTO_LEAD_FALLBACK_S
                    )
                if not leads or leads[-1] != lead:
                    leads.append(lead)
                forecast = Forecast(
                    lead_s=round(lead * day_s_per_real_s), tolerance_s=args.tolerance_min * 60
                )
                now = int((MONDAY + timedelta(hours=hour)).timestamp())
                expected = expects_work(arrived, now=now, forecast=forecast)
                set_schedule(stack, "always" if expected else "never")
            while pending and pending[0].at_h <= hour:
                arrival = pending.pop(0)
                arrived.append(int((MONDAY + timedelta(hours=arrival.at_h)).timestamp()))
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
        "idle_while_working": samples.idle_while_work_s / samples.ready_while_work_s
        if samples.ready_while_work_s
        else 0.0,
        "cold_waits": samples.waiting_cold_s / samples.waiting_s if samples.waiting_s else 0.0,
        "keep_warm_overhead": samples.warm_idle_s / samples.busy_s if samples.busy_s else 0.0,
        "busy_s": round(samples.busy_s, 1),
        "warm_idle_s": round(samples.warm_idle_s, 1),
        "starting_s": round(samples.starting_s, 1),
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": sorted(latencies)[max(0, round(0.95 * len(latencies)) - 1)],
        "leads_s": leads,
        "timeline": samples.timeline,
    }


def extra_over_never(result: dict[str, Any], results: list[dict[str, Any]]) -> float | None:
    """GPU-seconds paid beyond scale-to-zero's (ready without a chunk, plus starting) over the
    seconds of work; None without a `never` run of the same day."""
    never = next((r for r in results if r["policy"] == "never"), None)
    if never is None or not result["busy_s"]:
        return None
    paid = result["warm_idle_s"] + result["starting_s"]
    return float((paid - never["warm_idle_s"] - never["starting_s"]) / result["busy_s"])


def meets_goal(result: dict[str, Any], results: list[dict[str, Any]]) -> bool | None:
    """>= 90 % warm starts, < 5 % GPU idle while work waits, <= 10 % keep-hot overhead."""
    extra, idle = extra_over_never(result, results), result.get("idle_while_working")
    if extra is None or idle is None:
        return None
    return bool(result["warm_starts"] >= 0.90 and idle < 0.05 and extra <= 0.10)


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
    figures = {
        "warm starts (goal >= 90 %)": [r["warm_starts"] for r in results],
        "GPU idle while work waits (< 5 %)": [r.get("idle_while_working") or 0.0 for r in results],
        "extra over never (<= 10 %)": [
            max(0.0, extra_over_never(r, results) or 0.0) for r in results
        ],
    }
    for offset, (label, values) in zip((-width, 0.0, width), figures.items(), strict=True):
        bars.bar([i + offset for i in x], [100 * min(v, 3.0) for v in values], width, label=label)
    bars.set_xticks(list(x), names)
    bars.set_ylabel("%")
    bars.axhline(90, color="grey", linewidth=0.5, linestyle="--")
    bars.axhline(10, color="grey", linewidth=0.5, linestyle=":")
    bars.set_ylim(0, 135)  # room above the 100 % bars for the legend
    bars.legend(fontsize=8, ncols=3, loc="upper center")
    bars.set_title("keep-hot day: the goal's three figures per policy (capped at 300 %)")
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
        "| policy | warm starts | GPU idle while work waits | extra over never | goal | cold "
        "waits | keep-warm overhead | busy s | warm idle s | starting s | latency p50 / p95 | "
        "p50 vs never |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        extra = extra_over_never(r, results)
        idle = r.get("idle_while_working")
        # Runs recorded before the GPU-idle figure named the cold-wait share `idle_while_waiting`.
        cold = r.get("cold_waits", r.get("idle_while_waiting", 0.0))
        goal = {None: "—", True: "met", False: "not met"}[meets_goal(r, results)]
        faster = "—"
        if never is not None and r["latency_p50_s"]:
            faster = f"{never['latency_p50_s'] / r['latency_p50_s']:.2f}x"
        print(
            f"| {r['policy']} | {100 * r['warm_starts']:.0f} % ({r['chunks']} chunks) | "
            f"{'—' if idle is None else f'{100 * idle:.1f} %'} | "
            f"{'—' if extra is None else f'{round(100 * extra)} %'} | {goal} | "
            f"{100 * cold:.1f} % | {100 * r['keep_warm_overhead']:.0f} % | "
            f"{r['busy_s']} | {r['warm_idle_s']} | {r['starting_s']} | "
            f"{r['latency_p50_s']} s / {r['latency_p95_s']} s | {faster} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hour-s", type=float, default=10.0)
    parser.add_argument("--window", default="06:00-21:00")
    parser.add_argument(
        "--window-lead-s", type=float, default=0.0, help="real seconds the window opens early"
    )
    parser.add_argument(
        "--learned-lead-s",
        default="25",
        help="real seconds `learned` warms ahead, or `auto`: measured as the tick measures it",
    )
    parser.add_argument("--tolerance-min", type=int, default=15, help="`learned`: minutes of day")
    parser.add_argument("--jitter-min", type=float, default=0.0, help="a pipeline's daily drift")
    parser.add_argument("--ad-hoc", type=int, default=0, help="unforecast batches a day")
    parser.add_argument("--scale", type=float, default=1.0, help="times each batch's requests")
    parser.add_argument("--cold-start", type=float, default=0.0, help="extra seconds per start")
    parser.add_argument("--max-workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument(
        "--prewarm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one engine load before the day for every policy (off: only `always`)",
    )
    parser.add_argument("--policies", default="never,pending,window,learned,always")
    parser.add_argument("--chart", type=Path, default=Path(__file__).with_name("keephot_day.png"))
    parser.add_argument("--json", type=Path, help="also write the figures and timelines here")
    parser.add_argument(
        "--from-json", type=Path, help="no run: the table and chart from an earlier --json"
    )
    args = parser.parse_args()
    arrivals = the_day(
        args.seed, jitter_h=args.jitter_min / 60, ad_hoc=args.ad_hoc, scale=args.scale
    )
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
        f"extra cold start {args.cold_start:g} s; max workers {args.max_workers}; pipelines "
        f"drift {args.jitter_min:g} min a day, {args.ad_hoc} ad hoc a day, scale "
        f"{args.scale:g}; learned leads {args.learned_lead_s} s, tolerance "
        f"{args.tolerance_min} min; prewarm {args.prewarm}",
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
