"""Keep the local control plane off the cores vLLM's CPU build gives its engines.

vLLM's CPU build binds each engine's compute threads to all allowed cores but the last (the last
is reserved for its own frontend: `VLLM_CPU_NUM_OF_RESERVED_CPU`, default 1). A bound engine
cannot move away from a busy core, so every thread of the local stack that the kernel places on
one (moto, the API, the sweep, the local RunPod endpoint) stops the engine for as long as it runs:
on 2 cores, a 2,000-request batch took 25 % longer with the stack unpinned (bench/RESULTS.md,
like for like). In AWS the control plane never shares a machine with a worker; locally it stays on
the reserved core(s), beside the frontends.

Linux only (`os.sched_setaffinity`); elsewhere, and on a single core, nothing is pinned.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

# Restores the CPUs a worker may use, then becomes the worker: a child inherits the affinity of
# the thread that starts it, and a worker confined to the reserved core would bind its engine
# there (measured: twice as slow). `preexec_fn` would do the same but is unsafe in a process
# with threads.
_UNPIN = (
    "import os, sys; "
    "os.sched_setaffinity(0, {int(cpu) for cpu in sys.argv[1].split(',')}); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def allowed() -> frozenset[int]:
    """The CPUs this process may run on (every CPU where affinity is not supported)."""
    if not hasattr(os, "sched_getaffinity"):
        return frozenset(range(os.cpu_count() or 1))
    return frozenset(os.sched_getaffinity(0))


def reserved(cpus: Iterable[int], env: dict[str, str] | None = None) -> frozenset[int]:
    """The CPUs vLLM's CPU build leaves to frontends: the last N of `cpus`; none when that
    would leave the engines nothing."""
    ordered = sorted(cpus)
    value = (os.environ if env is None else env).get("VLLM_CPU_NUM_OF_RESERVED_CPU") or "1"
    count = max(1, int(value))
    if len(ordered) <= count:
        return frozenset()
    return frozenset(ordered[-count:])


def pin_process(cpus: frozenset[int]) -> bool:
    """Confine every thread of this process (and the threads it starts later) to `cpus`;
    False where that is not possible."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return False
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            continue  # a thread that ended meanwhile, or one we may not move
    return True


def spread(command: list[str], cpus: frozenset[int]) -> list[str]:
    """`command`, run on `cpus` whatever this process is confined to."""
    listed = ",".join(str(cpu) for cpu in sorted(cpus))
    return [sys.executable, "-c", _UNPIN, listed, *command]
