"""The local stack keeps off the cores vLLM's CPU build binds its engines to, and its workers
still get every CPU (`infra.cpu_share`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infra import cpu_share


def test_the_reserved_cpus_are_the_last_ones_vllm_leaves_to_frontends() -> None:
    assert cpu_share.reserved({0, 1}, env={}) == {1}
    assert cpu_share.reserved({2, 5, 3, 4}, env={}) == {5}
    assert cpu_share.reserved(range(8), env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "2"}) == {6, 7}
    # One CPU: the engine needs it, so nothing is set apart (and nothing pinned).
    assert cpu_share.reserved({0}, env={}) == frozenset()
    assert cpu_share.pin_process(frozenset()) is False


@pytest.mark.stack
def test_a_pinned_process_starts_its_workers_on_every_cpu() -> None:
    """In a child process (pinning this one would slow the rest of the suite): pin it to one
    CPU, start a worker through `spread`, and read both affinities."""
    script = """
import json, os, subprocess, sys, threading
from infra import cpu_share
everything = cpu_share.allowed()
one = frozenset({max(everything)})
assert cpu_share.pin_process(one)
later = []
thread = threading.Thread(target=lambda: later.append(sorted(os.sched_getaffinity(0))))
thread.start(); thread.join()
probe = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
child = subprocess.run(cpu_share.spread(probe, everything), capture_output=True, text=True)
plain = subprocess.run(probe, capture_output=True, text=True)
print(json.dumps({"everything": sorted(everything), "self": sorted(os.sched_getaffinity(0)),
    "thread": later[0], "child": json.loads(child.stdout), "plain": json.loads(plain.stdout)}))
"""
    found = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
    )
    last = [max(found["everything"])]
    assert found["self"] == found["thread"] == last  # threads started later inherit it
    assert found["plain"] == last  # what a worker started without `spread` would get
    assert found["child"] == found["everything"]
