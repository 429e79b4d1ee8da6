"""The control plane at fleet scale, simulated on a virtual clock (issue 22).

The real control-plane code (the split, dispatch, result recording, finalize and merge, event
webhooks, the API reads tenants make) runs against a RunPod endpoint of W virtual workers that
keeps RunPod's documented per-route limits, and moto with a meter that bills DynamoDB's read and
write units per partition key per second and raises `TransactionConflict` as DynamoDB would
(`infra/sim/`). One cell per run:

    python bench/sim_scale.py --workers 1000 --batches 1000 --tenants 100 --scenario steady --json
    python bench/sim_scale.py --workers 1000 --tenants 100 --scenario fairness --json

`steady`: A batches from T tenants (round robin) arrive over 30 s, holding 1.2× what W workers
can do in `--minutes` plus a chunk for each of their slots, so work waits throughout.
`fairness`: one tenant's `--big-requests` batch, then at +2 min each of the other T−1 tenants'
`--small-requests` batch, and at +3 min a `high` batch. The last line of
output is one JSON object (its keys are listed in infra/sim/cell.py and bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.sim.cell import CellConfig, run_cell  # noqa: E402

SUMMARY_KEYS = (
    "busy_share",
    "jain_fairness",
    "requests_per_s",
    "p95_first_chunk_wait_s",
    "runpod_429",
    "status_peak_share",
    "hottest_key_share",
    "throttles",
    "conflicts",
    "surfaced_failures",
    "p95_handler_s",
    "control_plane_cost_share",
    "lost",
    "duplicated",
    "completed_batches",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--tenants", type=int, default=1)
    parser.add_argument("--scenario", choices=("steady", "fairness"), default="steady")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--chunk-requests", type=int, default=100)
    parser.add_argument("--request-s", type=float, default=1.2, help="engine s per request")
    parser.add_argument("--job-failure-rate", type=float, default=0.001)
    parser.add_argument("--request-failure-rate", type=float, default=0.001)
    parser.add_argument("--poll-s", type=float, default=60.0)
    parser.add_argument("--drain-minutes", type=float, default=20.0)
    parser.add_argument("--big-requests", type=int, default=1_000_000)
    parser.add_argument("--small-requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="the JSON object only")
    args = parser.parse_args()
    config = CellConfig(
        workers=args.workers,
        batches=args.tenants if args.scenario == "fairness" else args.batches,
        tenants=args.tenants,
        scenario=args.scenario,
        minutes=args.minutes,
        chunk_requests=args.chunk_requests,
        request_s=args.request_s,
        job_failure_rate=args.job_failure_rate,
        request_failure_rate=args.request_failure_rate,
        poll_s=args.poll_s,
        drain_minutes=args.drain_minutes,
        big_requests=args.big_requests,
        small_requests=args.small_requests,
        seed=args.seed,
    )
    started = time.monotonic()
    figures = run_cell(config)
    figures["real_seconds"] = round(time.monotonic() - started, 1)
    if not args.json:
        for key in SUMMARY_KEYS:
            print(f"{key:>28}: {figures.get(key)}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
