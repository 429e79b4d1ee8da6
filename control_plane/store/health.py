"""The endpoint's last known state, written by the tick's circuit breaker, read at admission."""

from __future__ import annotations

from control_plane.ids import now_s
from control_plane.store import keys
from control_plane.store.table import Table

DOWN_STATES = frozenset({"down", "open"})


def endpoint_down_reason(table: Table) -> str | None:
    """Why new batches should wait, or None while the endpoint is not known to be down."""
    item = table.get(keys.endpoint_health(), consistent=False)
    if item is None or item.get("state") not in DOWN_STATES:
        return None
    return str(item.get("reason") or f"the GPU endpoint is {item['state']}")


def set_endpoint_state(table: Table, *, state: str, reason: str = "") -> None:
    table.put({**keys.endpoint_health(), "state": state, "reason": reason, "at": now_s()})
