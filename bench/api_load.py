"""API load: concurrent clients against the local control plane (the app under uvicorn in one
child process, moto's server in another; no workers and no tick, so batches stay in progress)
mixing upload + create, retrieve, list and file content, for a while.

Prints p50 / p99 latency per operation, first for one client alone (the baseline, measured in
the same run) and then under load, with the ratio; the count of 5xx answers (must be 0); and
whether every tenant's admission limits held exactly: a monitor reads each tenant's counters and
counts its unfinished batches all along (never above `max_active_batches` /
`max_queued_requests`), and at the end the counters must equal what the batches hold.

    PYTHONPATH=$PWD .venv/bin/python bench/api_load.py [--clients 32] [--duration 60]

Exits non-zero on a 5xx or a limit that did not hold.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

CHAT = "/v1/chat/completions"
TABLE, BUCKET = "hotbatch-load", "hotbatch-load"
WEIGHTS = {"create": 2, "retrieve": 4, "list": 3, "content": 2}


# --- the server (child process) ---------------------------------------------------------------


def serve_aws() -> None:
    """moto's server with the template's table and bucket: its own process, as DynamoDB and S3
    are not in the API's process in AWS either."""
    from infra.local_control_plane import LocalAws

    local_aws = LocalAws(table_name=TABLE, bucket_name=BUCKET).start()
    print(json.dumps({"aws": local_aws.url}), flush=True)
    _wait_for_sigterm()
    local_aws.stop()


def serve_api(args: argparse.Namespace) -> None:
    """The app under uvicorn (one process, as `hotbatch local up` runs it), tenants and keys."""
    from control_plane.api import create_app
    from control_plane.clients.aws import Aws
    from control_plane.settings import Settings
    from control_plane.store import apikeys
    from infra.local_control_plane import LocalApi, use_local_credentials

    use_local_credentials()
    settings = Settings(
        aws_endpoint_url=args.aws_url,
        table_name=TABLE,
        bucket_name=BUCKET,
        split_mode="inline",
        max_active_batches=args.max_active,
        max_queued_requests=args.max_queued,
    )
    aws = Aws(settings)
    tenants = [f"tenant-{n}" for n in range(args.tenants)] + ["baseline"]
    keys = {tenant: apikeys.create_key(aws.table, tenant_id=tenant) for tenant in tenants}
    api = LocalApi(app=create_app(settings, aws=aws)).start()
    print(json.dumps({"api": api.url, "keys": keys}), flush=True)
    _wait_for_sigterm()
    api.stop()


def _wait_for_sigterm() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


def start_child(*flags: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    child = subprocess.Popen([sys.executable, __file__, *flags], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    announced: dict[str, Any] = json.loads(child.stdout.readline())
    return child, announced


# --- the clients --------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: str, seconds: float, status: int) -> None:
        with self.lock:
            self.latencies[op].append(seconds)
            self.statuses[(op, status)] += 1


def batch_file(rng: random.Random, client_id: int) -> bytes:
    lines = []
    for n in range(rng.randint(1, 6)):
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"hi {n}"}]}
        line = {"custom_id": f"c{client_id}-{n}", "method": "POST", "url": CHAT, "body": body}
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


def client_loop(
    base_url: str, key: str, client_id: int, until: float, tally: Tally, seed: int
) -> None:
    rng = random.Random(seed)
    batches: list[str] = []
    files: list[str] = []
    ops, weights = list(WEIGHTS), list(WEIGHTS.values())
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as http:

        def call(op: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
            started = time.perf_counter()
            try:
                reply = http.request(method, url, **kwargs)
            except httpx.HTTPError:
                # No answer at all (a timeout, a dropped connection): counted as status 0,
                # a failure like a 5xx.
                tally.add(op, time.perf_counter() - started, 0)
                return httpx.Response(599)
            tally.add(op, time.perf_counter() - started, reply.status_code)
            return reply

        while time.monotonic() < until:
            op = rng.choices(ops, weights)[0]
            if op == "create" or not batches:
                content = batch_file(rng, client_id)
                uploaded = call(
                    "upload",
                    "POST",
                    "/v1/files",
                    files={"file": ("in.jsonl", content, "application/jsonl")},
                    data={"purpose": "batch"},
                )
                if uploaded.status_code != 200:
                    continue
                files.append(uploaded.json()["id"])
                body = {
                    "input_file_id": files[-1],
                    "endpoint": CHAT,
                    "completion_window": "24h",
                    "metadata": {"client": str(client_id)},
                }
                created = call("create", "POST", "/v1/batches", json=body)
                if created.status_code == 200:
                    batches.append(created.json()["id"])
            elif op == "retrieve":
                call("retrieve", "GET", f"/v1/batches/{rng.choice(batches)}")
            elif op == "list":
                call("list", "GET", "/v1/batches", params={"limit": 20})
            elif op == "content" and files:
                call("content", "GET", f"/v1/files/{rng.choice(files)}/content")


def run_clients(
    api: str, keys: dict[str, str], clients: int, seconds: float, seed: int
) -> tuple[Tally, float]:
    tally = Tally()
    tenants = list(keys)
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=client_loop,
            args=(api, keys[tenants[n % len(tenants)]], n, until, tally, seed * 1000 + n),
        )
        for n in range(clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally, time.monotonic() - started


# --- the limits -----------------------------------------------------------------------------------


@dataclass
class LimitWatch:
    """Reads every tenant's counters and counts its unfinished batches, over and over."""

    aws_url: str
    tenants: list[str]
    max_active: int
    max_queued: int
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def table(self) -> Any:
        from control_plane.clients.aws import Aws
        from control_plane.settings import Settings

        return Aws(Settings(aws_endpoint_url=self.aws_url, table_name=TABLE)).table

    def measure(self, table: Any, tenant: str) -> dict[str, int]:
        from control_plane.models import TERMINAL_STATUSES
        from control_plane.store import batches as batch_store
        from control_plane.store import keys

        stats = batch_store.tenant_stats(table, tenant)
        items, _ = table.query_page(
            index="gsi1",
            key_name="gsi1pk",
            key_value=keys.tenant_listing(tenant, keys.BATCH_LISTING),
            limit=100_000,
            attributes=["status", "queued"],
        )
        open_items = [i for i in items if i["status"] not in TERMINAL_STATUSES]
        return {
            "active_counter": int(stats.get("active_batches", 0)),
            "queued_counter": int(stats.get("queued_requests", 0)),
            "unfinished": len(open_items),
            "unfinished_queued": sum(int(i.get("queued", 0)) for i in open_items),
            "batches": len(items),
        }

    def check(self, tenant: str, figures: dict[str, int]) -> None:
        for name, limit in (
            ("active_counter", self.max_active),
            ("unfinished", self.max_active),
            ("queued_counter", self.max_queued),
        ):
            if figures[name] > limit:
                self.violations.append(f"{tenant}: {name} {figures[name]} > {limit}")
        peak = self.peaks.setdefault(tenant, dict.fromkeys(figures, 0))
        for name, value in figures.items():
            peak[name] = max(peak[name], value)

    def watch(self) -> None:
        table = self.table()
        while not self.stop.is_set():
            for tenant in self.tenants:
                self.check(tenant, self.measure(table, tenant))
            self.samples += 1
            time.sleep(0.2)

    def final(self) -> dict[str, dict[str, int]]:
        """Once nothing is in flight: the counters must be exactly what the batches hold."""
        table = self.table()
        figures = {tenant: self.measure(table, tenant) for tenant in self.tenants}
        for tenant, f in figures.items():
            self.check(tenant, f)
            held = (f["active_counter"], f["queued_counter"])
            if held != (f["unfinished"], f["unfinished_queued"]):
                self.violations.append(f"{tenant}: counters {f} do not match its batches")
        return figures


# --- the report ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(tally: Tally) -> dict[str, tuple[int, float, float]]:
    return {
        op: (len(v), statistics.median(v) * 1000, percentile(v, 0.99) * 1000)
        for op, v in sorted(tally.latencies.items())
    }


def report(base: Tally, load: Tally, load_s: float, args: argparse.Namespace) -> int:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(
        f"{args.clients} clients over {args.tenants} tenants for {args.duration:.0f} s "
        f"(baseline: 1 client for {args.baseline:.0f} s); limits max_active_batches="
        f"{args.max_active}, max_queued_requests={args.max_queued}"
    )
    one, many = summary(base), summary(load)
    print(
        f"{'op':<9} {'n (1)':>6} {'p50 (1)':>9} {'n (load)':>9} {'p50':>8} {'p99':>8} {'ratio':>7}"
    )
    for op, (n, p50, p99) in many.items():
        n1, p50_1, _ = one.get(op, (0, float("nan"), 0.0))
        print(
            f"{op:<9} {n1:>6} {p50_1:>7.1f}ms {n:>9} {p50:>6.1f}ms {p99:>6.1f}ms "
            f"{p50 / p50_1:>8.1f}x"
        )
    total = sum(load.statuses.values())
    print(f"requests under load: {total} ({total / load_s:.0f}/s)")
    by_status: collections.Counter[int] = collections.Counter()
    for (_, status), n in load.statuses.items():
        by_status[status] += n
    print("statuses:", dict(sorted(by_status.items())))
    print("by operation:", {f"{op} {s}": n for (op, s), n in sorted(load.statuses.items())})
    failed = [(s, n) for (_, s), n in (base.statuses + load.statuses).items() if s >= 500 or s == 0]
    errors = sum(n for _, n in failed)
    print(f"5xx (or no answer): {errors}")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", choices=["aws", "api"], help=argparse.SUPPRESS)
    parser.add_argument("--aws-url", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--baseline", type=float, default=10.0)
    parser.add_argument("--max-active", type=int, default=16)
    parser.add_argument("--max-queued", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.serve == "aws":
        serve_aws()
        return
    if args.serve == "api":
        serve_api(args)
        return

    from infra.local_control_plane import use_local_credentials

    use_local_credentials()  # the monitor reads moto's server with the same fake credentials
    aws_server, aws_at = start_child("--serve=aws")
    children = [aws_server]
    try:
        api_server, where = start_child(
            "--serve=api",
            f"--aws-url={aws_at['aws']}",
            f"--tenants={args.tenants}",
            f"--max-active={args.max_active}",
            f"--max-queued={args.max_queued}",
        )
        children.append(api_server)
        keys: dict[str, str] = where["keys"]
        # The baseline runs as a tenant of its own, so its batches use none of the load's limits.
        baseline = {"baseline": keys.pop("baseline")}
        base, _ = run_clients(where["api"], baseline, 1, args.baseline, args.seed)
        watch = LimitWatch(aws_at["aws"], list(keys), args.max_active, args.max_queued)
        watcher = threading.Thread(target=watch.watch, daemon=True)
        watcher.start()
        load, load_s = run_clients(where["api"], keys, args.clients, args.duration, args.seed)
        watch.stop.set()
        watcher.join()
        final = watch.final()
    finally:
        for child in reversed(children):
            child.terminate()
            child.wait(timeout=30)
    errors = report(base, load, load_s, args)
    print(f"limit samples: {watch.samples} rounds over {len(watch.tenants)} tenants")
    for tenant in sorted(final):
        print(f"  {tenant}: peak {watch.peaks[tenant]}, final {final[tenant]}")
    print("limits held exactly" if not watch.violations else f"LIMITS BROKEN: {watch.violations}")
    sys.exit(1 if errors or watch.violations else 0)


if __name__ == "__main__":
    main()
