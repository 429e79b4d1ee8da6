"""A GPU endpoint's dispatch state: the dispatcher's window, circuit breaker, throughput and
fair-queue clock (`SCHED#{endpoint}` / `STATE`, read and written once per dispatcher run,
conditioned on the version it read: one dispatcher runs per endpoint at a time), and the
breaker's mirror that admission and `GET /v1/health` read (`HEALTH` / `ENDPOINT`: closed,
half_open or open)."""

from __future__ import annotations

from control_plane.ids import now_s
from control_plane.store import keys
from control_plane.store.table import Item, Table

DOWN_STATES = frozenset({"down", "open"})


def endpoint_down_reason(table: Table) -> str | None:
    """Why new batches should wait, or None while the endpoint is not known to be down."""
    item = table.get(keys.endpoint_health(), consistent=False)
    if item is None or item.get("state") not in DOWN_STATES:
        return None
    return str(item.get("reason") or f"the GPU endpoint is {item['state']}")


def set_endpoint_state(table: Table, *, state: str, reason: str = "") -> None:
    table.put({**keys.endpoint_health(), "state": state, "reason": reason, "at": now_s()})


def breaker_state(table: Table) -> str:
    """The breaker as the tick last left it (`closed` before any tick ran)."""
    item = table.get(keys.endpoint_health(), consistent=False)
    return "closed" if item is None else str(item.get("state", "closed"))


def load_scheduler_state(table: Table, endpoint_id: str) -> Item | None:
    return table.get(keys.scheduler_state(endpoint_id))


def save_scheduler_state(
    table: Table, endpoint_id: str, state: Item, *, seen: int, now: int
) -> bool:
    """Write `state` if the stored one is still at version `seen`; False if another writer got
    there first (its changes stand)."""
    return table.put_versioned(
        {**keys.scheduler_state(endpoint_id), **state, "updated_at": now}, seen=seen
    )
