"""Waiting for something the local stack does in its own time (a worker loading its engine, a
batch finishing): the one polling loop that the tests and the benchmarks share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None],
    what: str | Callable[[], str] = "the condition",
    *,
    timeout: float = 30.0,
    every: float = 0.05,
) -> T:
    """Call `predicate` every `every` seconds until it returns something truthy, and return
    that. After `timeout` seconds raise TimeoutError naming `what` (a callable: worded when
    the time is up, so it can say where things stand)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise TimeoutError(f"{described}: not reached after {timeout:g} s")
        time.sleep(every)
