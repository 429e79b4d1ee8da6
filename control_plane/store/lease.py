"""A lease item: whoever holds it (until it runs out) does a job alone; the sweep takes one so
that two sweeps never overlap (a sweep killed mid-way frees it when it runs out)."""

from __future__ import annotations

from control_plane.errors import StateConflict
from control_plane.store import keys
from control_plane.store.table import Table


def take(table: Table, *, token: str, now: int, hold_s: int) -> bool:
    try:
        table.put(
            {**keys.sweep_lease(), "token": token, "until": now + hold_s},
            condition="attribute_not_exists(pk) OR #until < :now",
            names={"#until": "until"},
            values={":now": now},
        )
    except StateConflict:
        return False
    return True


def release(table: Table, *, token: str) -> None:
    try:
        table.delete(
            keys.sweep_lease(),
            condition="#token = :token",
            names={"#token": "token"},
            values={":token": token},
        )
    except StateConflict:
        pass  # it ran out and another holder took it: that one releases its own
