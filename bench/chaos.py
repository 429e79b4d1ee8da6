"""The chaos soak (issue 12): 20,000 requests in one batch through the local stack with real
`python -m handler` workers (the tiny model on vLLM's CPU build, up to two workers), while a
seeded driver kills busy workers, makes the RunPod client API answer 5xx and stall, kills
ticks mid-way and delivers finished jobs' webhooks again (`infra/chaos.py`). Prints the batch's
figures: 0 lost and 0 duplicated `custom_id`s and exact counts are the pass mark.

    python bench/chaos.py [--requests 20000] [--chunk-size 500] [--worker-kills 4] ...
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from stack_runs import load, machine


def main() -> None:
    from openai import OpenAI

    from infra.chaos import ChaosPlan, chat_stack, soak, wait_warm

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--worker-kills", type=int, default=4)
    parser.add_argument("--error-bursts", type=int, default=4)
    parser.add_argument("--stall-bursts", type=int, default=3)
    parser.add_argument("--tick-kills", type=int, default=6)
    parser.add_argument("--duplicate-webhooks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=20261204)
    args = parser.parse_args()
    plan = ChaosPlan(
        worker_kills=args.worker_kills,
        error_bursts=args.error_bursts,
        stall_bursts=args.stall_bursts,
        tick_kills=args.tick_kills,
        duplicate_webhooks=args.duplicate_webhooks,
        gap_s=(1.0, 4.0),
        seed=args.seed,
    )
    print(f"machine: {machine()}; load before: {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        stack = chat_stack(Path(tmp), chunk_size=args.chunk_size).start()
        try:
            wait_warm(stack)
            exports = stack.exports()
            client = OpenAI(base_url=exports["HOTBATCH_API_URL"], api_key=stack.api_key)
            report = soak(
                stack, client, requests=args.requests, plan=plan, max_tokens=args.max_tokens
            )
        finally:
            stack.stop()
    print(json.dumps(report.summary(), indent=2))
    ok = report.status == "completed" and report.lost == report.duplicated == 0
    print("PASS" if ok and report.counts_exact else "FAIL")


if __name__ == "__main__":
    main()
