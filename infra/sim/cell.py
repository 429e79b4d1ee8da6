"""One cell of the sweep: build the world, run the workload, measure it.

The world is moto in process (with `infra.moto_speed` and the meter), the table and bucket from
template.yaml, the control plane's own Settings and code, and one virtual RunPod endpoint. The
figures follow the issue's definitions:

- busy share: engine-busy worker-seconds ÷ (W × seconds), over the window in which work waits;
- Jain's index: of each tenant's running chunks ÷ its max-min fair share of the running chunks
  given every tenant's demand (chunks left), sampled every 10 s (plain Jain when demands are
  equal; a tenant whose whole demand runs counts as served fairly);
- first chunk wait: a batch's creation to its first chunk starting on a worker;
- RunPod load: calls per second by route, the peak of a 10 s window ÷ the documented limit;
- DynamoDB: the peak units of any key in any second ÷ its partition limit;
- cost: list prices (us-east-1, arm64) of every call and Lambda second the control plane made,
  against W GPUs at `gpu_price_per_hour` over the same window.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from infra.sim.clock import Clock
from infra.sim.fairness import fair_index
from infra.sim.meter import Meter
from infra.sim.runpod import EndpointModel, SimJob, VirtualEndpoint, route_clients

ENDPOINT_ID = "sim"
BUCKET = "hotbatch-sim"
TABLE = "hotbatch-sim"
LAMBDA_GB = {"api": 1.0, "split": 1.769, "tick": 1.0, "dispatch": 1.0, "batch": 1.0}
PRICE = {
    "wru": 0.625e-6,
    "rru": 0.125e-6,
    "s3_put": 0.005e-3,
    "s3_get": 0.0004e-3,
    "lambda_gb_s": 0.0000133334,
    "lambda_request": 0.2e-6,
    "api_request": 1.0e-6,
    "sqs_request": 0.5e-6,
}
S3_PUT_CLASS = (
    "PutObject",
    "CopyObject",
    "UploadPartCopy",
    "UploadPart",
    "CreateMultipart",
    "CompleteMultipart",
    "ListObjects",
    "DeleteObject",
)


@dataclass
class CellConfig:
    workers: int = 10
    batches: int = 10
    tenants: int = 1
    scenario: str = "steady"  # steady | fairness
    minutes: float = 10.0
    chunk_requests: int = 100
    request_s: float = 1.2  # 100 requests: a 120 s chunk, HOTBATCH_CHUNK_TARGET_S
    concurrency: int = 2
    job_failure_rate: float = 0.001
    request_failure_rate: float = 0.001
    poll_s: float = 60.0
    drain_minutes: float = 20.0
    gpu_price_per_hour: float = 2.5
    big_requests: int = 1_000_000  # fairness: the first tenant's batch
    small_requests: int = 1000  # fairness: each other tenant's batch
    seed: int = 7
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Observed:
    """What the endpoint saw, by batch and tenant."""

    tenant_of: dict[str, str] = field(default_factory=dict)
    priority_of: dict[str, str] = field(default_factory=dict)
    split_at: dict[str, float] = field(default_factory=dict)
    first_start: dict[str, float] = field(default_factory=dict)
    running: Counter[str] = field(default_factory=Counter)  # tenant → chunk jobs running
    done_chunks: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    engine: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, tenant
    completed_requests: int = 0
    dispatches: list[tuple[float, str, str]] = field(default_factory=list)  # t, batch, prio
    jain: list[float] = field(default_factory=list)
    waiting_until: float = 0.0

    def event(self, job: SimJob, kind: str, start: float, end: float) -> None:
        if job.input.get("action") != "process_chunk":
            return
        batch_id, chunk_id = job.input["batch_id"], job.input["chunk_id"]
        tenant = self.tenant_of.get(batch_id, "?")
        if kind == "queued" and job.input.get("attempt") == 1:
            self.dispatches.append((start, batch_id, self.priority_of.get(batch_id, "?")))
        elif kind == "start":
            self.first_start.setdefault(batch_id, start)
            self.running[tenant] += 1
        elif kind == "engine":
            self.engine.append((start, end, tenant))
        elif kind == "end":
            self.running[tenant] -= 1
            if job.status == "COMPLETED":
                self.done_chunks[batch_id].add(chunk_id)
                output = job.output or {}
                self.completed_requests += int(output.get("counts", {}).get("total", 0))


def request_lines(batch_no: int, requests: int) -> bytes:
    rows = []
    for i in range(requests):
        rows.append(
            orjson.dumps(
                {
                    "custom_id": f"b{batch_no}-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "sim",
                        "messages": [{"role": "user", "content": f"q {i}"}],
                        "max_tokens": 8,
                    },
                }
            )
        )
    return b"\n".join(rows) + b"\n"


class SurfacedErrors(logging.Handler):
    """Counts the control plane's error-level log lines (a failed tick step, a failed batch)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.count: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("control_plane"):
            self.count[record.getMessage()[:80]] += 1


def run_cell(config: CellConfig) -> dict[str, Any]:
    from moto import mock_aws

    from infra import moto_speed
    from infra.local_control_plane import use_local_credentials

    use_local_credentials()
    moto_speed.enable()
    clock = Clock().start()
    try:
        with mock_aws():
            return _run(config, clock)
    finally:
        clock.stop()


def _settings(config: CellConfig) -> Any:
    from control_plane.settings import Settings

    return Settings(
        table_name=TABLE,
        bucket_name=BUCKET,
        split_mode="inline",
        runpod_base_url="https://runpod.sim/v2",
        runpod_endpoint_id=ENDPOINT_ID,
        runpod_api_key="sim",
        public_url="https://api.sim",
        webhook_secret_value="sim-secret",
        worker_concurrency=config.concurrency,
        max_requests_per_batch=max(config.big_requests, 1_000_000),
        max_active_batches=max(100, config.batches),
        max_queued_requests=100_000_000,
        chunk_max_requests=config.chunk_requests,
        chunk_min_requests=1,
        chunk_target_s=0,
        split_group_by_prefix=False,
        keep_hot_schedule="pending",
        **config.settings,
    )


def _world(config: CellConfig, clock: Clock) -> tuple[Any, Meter, VirtualEndpoint, Observed]:
    import boto3

    from control_plane.clients.aws import Aws
    from infra.aws_resources import create_resources

    meter = Meter(clock).install()
    create_resources(
        dynamodb=boto3.client("dynamodb", region_name="us-east-1"),
        s3=boto3.client("s3", region_name="us-east-1"),
        sqs=boto3.client("sqs", region_name="us-east-1"),
        table_name=TABLE,
        bucket_name=BUCKET,
    )
    aws = Aws(_settings(config))
    # The workers' presigned transfers go to moto's S3 directly: they are not the control
    # plane's calls (counted apart), and the boto3 round trip would only slow the simulation.
    s3 = _s3_backend()

    def read_object(key: str) -> bytes:
        meter.worker_calls["s3.GetObject"] += 1
        return bytes(s3.get_object(BUCKET, key).value)

    def write_object(key: str, body: bytes) -> None:
        meter.worker_calls["s3.PutObject"] += 1
        s3.put_object(BUCKET, key, body)

    observed = Observed()
    endpoint = VirtualEndpoint(
        endpoint_id=ENDPOINT_ID,
        model=EndpointModel(
            workers=config.workers,
            concurrency=config.concurrency,
            request_s=config.request_s,
            job_failure_rate=config.job_failure_rate,
            request_failure_rate=config.request_failure_rate,
            seed=config.seed,
        ),
        clock=clock,
        read_object=read_object,
        write_object=write_object,
        deliver_webhook=lambda url, job: False,  # set once the driver exists
        bucket=BUCKET,
        on_event=observed.event,
    )
    route_clients({ENDPOINT_ID: endpoint})
    return aws, meter, endpoint, observed


def _s3_backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["global"]


def _run(config: CellConfig, clock: Clock) -> dict[str, Any]:
    from infra.sim.driver import ControlPlane

    aws, meter, endpoint, observed = _world(config, clock)
    errors = SurfacedErrors()
    logging.getLogger().addHandler(errors)
    logging.getLogger("control_plane").setLevel(logging.ERROR)
    plane = ControlPlane(aws=aws, clock=clock, poll_s=config.poll_s)
    endpoint.deliver_webhook = plane.webhook
    endpoint.post_progress = plane.progress

    def split_done(batch: Any) -> None:
        observed.tenant_of[batch.id] = batch.tenant
        observed.priority_of[batch.id] = batch.priority
        observed.split_at[batch.id] = clock.now

    plane.on_split = split_done
    start = clock.now
    _workload(config, plane, clock, start)
    plane.start()
    end = start + config.minutes * 60
    _sample_every(clock, plane, observed, config, end)
    clock.run_until(end, report=lambda now: _progress(now, start, "run"))
    window = _measure_window(config, observed, start, end)
    figures = _figures(config, plane, endpoint, meter, observed, window, errors)
    clock.run_until(
        end + config.drain_minutes * 60,
        report=lambda now: _progress(now, start, "drain"),
        stop=lambda: all(
            b.status in ("completed", "failed", "expired", "cancelled")
            for b in plane.batches.values()
        ),
    )
    figures.update(_exactness(aws, plane, meter))
    logging.getLogger().removeHandler(errors)
    return figures


def _progress(now: float, start: float, phase: str) -> None:
    # Straight to stderr: the run's own logging is turned down to the control plane's errors.
    sys.stderr.write(f"sim {phase}: {now - start:.0f} virtual s\n")
    sys.stderr.flush()


def _workload(config: CellConfig, plane: Any, clock: Clock, start: float) -> None:
    if config.scenario == "fairness":
        clock.at(
            start + 1,
            lambda: plane.submit(
                "tenant-0", request_lines(0, config.big_requests), config.big_requests, "normal"
            ),
        )
        for n in range(1, config.tenants):
            when = start + 120 + n * 0.2
            clock.at(when, _submit(plane, f"tenant-{n}", n, config.small_requests, "normal"))
        clock.at(
            start + 180, _submit(plane, "tenant-1", config.tenants, config.small_requests, "high")
        )
        return
    # 1.2× what the workers can run in the window, plus what fills their slots at its end, so
    # that work waits throughout.
    capacity = config.workers * config.minutes * 60 / config.request_s
    slots = config.workers * config.concurrency * config.chunk_requests
    per_batch = max(1, math.ceil((1.2 * capacity + slots) / config.batches))
    for n in range(config.batches):
        tenant = f"tenant-{n % config.tenants}"
        when = start + 1 + 30 * n / config.batches
        clock.at(when, _submit(plane, tenant, n, per_batch, "normal"))


def _submit(plane: Any, tenant: str, n: int, requests: int, priority: str) -> Any:
    return lambda: plane.submit(tenant, request_lines(n, requests), requests, priority)


def _sample_every(
    clock: Clock, plane: Any, observed: Observed, config: CellConfig, end: float
) -> None:
    def sample() -> None:
        demand: Counter[str] = Counter()
        for batch in plane.batches.values():
            if batch.chunks:
                left = batch.chunks - len(observed.done_chunks.get(batch.id, ()))
                if left > 0:
                    demand[batch.tenant] += left
        running = {t: n for t, n in observed.running.items() if n > 0}
        if sum(demand.values()) > sum(running.values()):
            observed.waiting_until = clock.now
        index = fair_index(running, demand)
        if index is not None:
            observed.jain.append(index)
        if clock.now + 10 <= end:
            clock.after(10.0, sample)

    clock.at(clock.now + 10, sample)


def _measure_window(
    config: CellConfig, observed: Observed, start: float, end: float
) -> tuple[float, float]:
    """From the first chunk start to the end, or to when work stopped waiting."""
    first = min(observed.first_start.values(), default=end)
    until = min(end, observed.waiting_until or end)
    return first, max(first + 1, until)


def _busy(observed: Observed, window: tuple[float, float]) -> float:
    lo, hi = window
    return sum(max(0.0, min(e, hi) - max(s, lo)) for s, e, _ in observed.engine)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(math.ceil(q * len(values))) - 1)]


def _figures(
    config: CellConfig,
    plane: Any,
    endpoint: VirtualEndpoint,
    meter: Meter,
    observed: Observed,
    window: tuple[float, float],
    errors: SurfacedErrors,
) -> dict[str, Any]:
    lo, hi = window
    seconds = hi - lo
    busy = _busy(observed, window) / (config.workers * seconds)
    waits = {
        b.id: observed.first_start[b.id] - b.created_at
        for b in plane.batches.values()
        if b.id in observed.first_start
    }
    per_tenant: dict[str, list[float]] = defaultdict(list)
    for batch_id, wait in waits.items():
        per_tenant[plane.batches[batch_id].tenant].append(wait)
    routes = {}
    for route, per_second in endpoint.route_calls.items():
        peak10 = max(
            (sum(per_second.get(s, 0) for s in range(t, t + 10)) for t in per_second), default=0
        )
        limit = {"run": 100.0, "status": 200.0, "cancel": 10.0}.get(route)
        routes[route] = {
            "calls": sum(per_second.values()),
            "peak_per_s": peak10 / 10,
            "limit_per_s": limit,
            "share": (peak10 / 10 / limit) if limit else None,
            "rejected_429": endpoint.rejected.get(route, 0),
        }
    durations: dict[str, list[float]] = defaultdict(list)
    for run in meter.clock.invocations:
        durations[run.kind].append(run.duration)
    handlers = {
        kind: {
            "count": len(values),
            "p50_s": round(statistics.median(values), 3),
            "p95_s": round(_percentile(values, 0.95), 3),
            "max_s": round(max(values), 3),
            "max_overlap": _max_overlap(meter.clock, kind),
        }
        for kind, values in durations.items()
    }
    top = meter.top_keys()
    cost = _cost(config, meter, plane, seconds)
    requests = max(1, observed.completed_requests)
    ddb_calls = sum(n for name, n in meter.calls.items() if name.startswith("dynamodb."))
    s3_calls = sum(n for name, n in meter.calls.items() if name.startswith("s3."))
    figures: dict[str, Any] = {
        "workers": config.workers,
        "batches": config.batches,
        "tenants": config.tenants,
        "scenario": config.scenario,
        "window_s": round(seconds, 1),
        "requests_per_s": round(observed.completed_requests / max(1.0, hi - lo), 2),
        "busy_share": round(busy, 4),
        "jain_fairness": round(statistics.fmean(observed.jain), 4) if observed.jain else 1.0,
        "p95_first_chunk_wait_s": round(_percentile(list(waits.values()), 0.95), 1),
        "p95_first_chunk_wait_s_worst_tenant": round(
            max((_percentile(v, 0.95) for v in per_tenant.values()), default=0.0), 1
        ),
        "runpod": routes,
        "runpod_429": sum(endpoint.rejected.values()),
        "status_peak_share": round(float(routes.get("status", {}).get("share") or 0.0), 4),
        "top_keys": top,
        "hottest_key_share": round(float(top[0]["share"]) if top else 0.0, 4),
        "throttles": meter.throttles(),
        "conflicts": meter.conflicts,
        "max_item_bytes": meter.max_item_bytes,
        "handlers": handlers,
        "p95_handler_s": max((h["p95_s"] for h in handlers.values()), default=0.0),
        "surfaced_failures": sum(plane.failures.values()) + sum(errors.count.values()),
        "surfaced_by_kind": dict(plane.failures) | dict(errors.count),
        "dynamodb_calls_per_1k_requests": round(1000 * ddb_calls / requests, 2),
        "s3_calls_per_1k_requests": round(1000 * s3_calls / requests, 2),
        "cost_usd": cost,
        # The control plane's dollars per million requests answered, by AWS service.
        "cost_usd_per_1m_requests": {
            service: round(dollars * 1e6 / requests, 4)
            for service, dollars in cost.items()
            if service not in ("gpu", "control_plane_share_of_gpu")
        },
        "control_plane_cost_share": cost["control_plane_share_of_gpu"],
    }
    if config.scenario == "fairness":
        figures.update(_fairness(config, plane, observed))
    return figures


def _max_overlap(clock: Clock, kind: str) -> int:
    edges = []
    for run in clock.invocations:
        if run.kind == kind:
            edges += [(run.start, 1), (run.end, -1)]
    edges.sort()
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def _cost(config: CellConfig, meter: Meter, plane: Any, seconds: float) -> dict[str, Any]:
    s3_put = sum(
        n
        for k, n in meter.calls.items()
        if k.startswith("s3.") and k.split(".", 1)[1].startswith(S3_PUT_CLASS)
    )
    s3_get = sum(n for k, n in meter.calls.items() if k.startswith("s3.")) - s3_put
    gb_s = 0.0
    invocations = 0
    api_requests = 0
    for run in meter.clock.invocations:
        family = run.kind.split(".", 1)[0]
        gb_s += max(run.duration, 0.001) * LAMBDA_GB.get(family, 1.0)
        invocations += 1
        api_requests += family == "api"
    sqs = sum(n for k, n in meter.calls.items() if k.startswith("sqs."))
    dollars = {
        "dynamodb": meter.wru * PRICE["wru"] + meter.rru * PRICE["rru"],
        "s3": s3_put * PRICE["s3_put"] + s3_get * PRICE["s3_get"],
        "lambda": gb_s * PRICE["lambda_gb_s"] + invocations * PRICE["lambda_request"],
        "api_gateway": api_requests * PRICE["api_request"],
        "sqs": sqs * PRICE["sqs_request"],
    }
    control_plane = sum(dollars.values())
    gpu = config.workers * seconds / 3600 * config.gpu_price_per_hour
    return {
        **{k: round(v, 6) for k, v in dollars.items()},
        "control_plane": round(control_plane, 6),
        "gpu": round(gpu, 4),
        "control_plane_share_of_gpu": round(control_plane / gpu, 6) if gpu else 0.0,
    }


def _fairness(config: CellConfig, plane: Any, observed: Observed) -> dict[str, Any]:
    chunk_s = config.chunk_requests * config.request_s + 2.0
    small = [b for b in plane.batches.values() if b.tenant != "tenant-0" and b.priority == "normal"]
    waits = [(observed.first_start.get(b.id, float("inf")) - b.created_at) / chunk_s for b in small]
    high = [b for b in plane.batches.values() if b.priority == "high"]
    high_first = bool(high)
    for batch in high:
        # Once the high batch's chunks exist, none of a normal batch is sent before its last.
        ready = observed.split_at.get(batch.id)
        sent = [t for t, b, _ in observed.dispatches if b == batch.id]
        if ready is None or len(sent) < batch.chunks:
            high_first = False
            continue
        normal = [t for t, _, prio in observed.dispatches if prio == "normal"]
        high_first = high_first and not any(ready < t < max(sent) for t in normal)
    return {
        "max_first_chunk_wait_chunks": round(max(waits, default=0.0), 3),
        "high_before_normal": high_first,
        "chunk_duration_s": chunk_s,
    }


def _exactness(aws: Any, plane: Any, meter: Meter) -> dict[str, Any]:
    """Every request of every completed batch answered exactly once: the merged output and
    error files hold each input custom_id once, and no other."""
    from control_plane import layout
    from control_plane.store import batches as batch_store

    meter.actor = "sim"
    lost = duplicated = completed = 0
    try:
        for batch in plane.batches.values():
            item = batch_store.get_batch(aws.table, batch.id)
            if item is None or item["status"] != "completed":
                continue
            completed += 1
            seen: Counter[str] = Counter()
            for kind in ("output_file_id", "error_file_id"):
                file_id = item.get(kind)
                if not file_id:
                    continue
                body = aws.s3.get_object(
                    Bucket=aws.settings.bucket_name, Key=layout.file_key(str(file_id))
                )["Body"].read()
                for raw in body.splitlines():
                    if raw.strip():
                        seen[str(orjson.loads(raw)["custom_id"])] += 1
            expected = int(item.get("n_total", batch.requests))
            duplicated += sum(n - 1 for n in seen.values() if n > 1)
            lost += max(0, expected - len(seen))
    finally:
        meter.actor = "control_plane"
    return {
        "completed_batches": completed,
        "total_batches": len(plane.batches),
        "lost": lost,
        "duplicated": duplicated,
    }
