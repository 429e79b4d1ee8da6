"""`bench/sim_scale.py`'s small twins: the real control-plane code on the virtual clock, a small
fleet, both scenarios, each in a process of its own (the simulation patches moto, the RunPod
client and the clock for its whole process). The full cells are in bench/RESULTS.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]


def cell(*flags: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sim_scale.py"), *flags, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def test_a_shared_fleet_stays_busy_fair_and_exact_within_runpods_limits() -> None:
    figures = cell(
        "--workers", "20", "--batches", "30", "--tenants", "6", "--minutes", "4",
        "--request-s", "0.3", "--drain-minutes", "15",
    )  # fmt: skip
    assert (figures["lost"], figures["duplicated"]) == (0, 0)
    assert figures["completed_batches"] == figures["total_batches"] == 30
    assert figures["surfaced_failures"] == 0, figures["surfaced_by_kind"]
    assert figures["busy_share"] >= 0.9
    assert figures["jain_fairness"] >= 0.9
    assert figures["runpod_429"] == 0
    assert figures["hottest_key_share"] < 0.5
    # Results come by webhook: /status is only the safety net for overdue chunks.
    assert figures["runpod"].get("status", {}).get("calls", 0) <= 5


def test_small_batches_beside_a_huge_one_start_at_once_and_high_goes_first() -> None:
    figures = cell(
        "--workers", "20", "--tenants", "8", "--scenario", "fairness", "--minutes", "5",
        "--big-requests", "20000", "--small-requests", "300", "--request-s", "0.3",
        "--drain-minutes", "0",
    )  # fmt: skip
    # Within two chunk-durations of its creation, whatever the huge batch queued before it.
    assert figures["max_first_chunk_wait_chunks"] <= 2
    assert figures["high_before_normal"] is True
    assert figures["surfaced_failures"] == 0
