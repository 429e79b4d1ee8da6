"""Request counters for the API's per-tenant rate limits (`api/ratelimit.py`): one item per
tenant, scope and window, to which each request adds its cost with a plain `ADD`.

One UpdateItem a request and no read: concurrent Lambdas never conflict on an `ADD`, and the
new count comes back with the write. The TTL drops each window's item soon after it ends.
"""

from __future__ import annotations

from control_plane.store import keys
from control_plane.store.table import Table

# Past its window's end an item is never read again; TTL deletes it within a day or two.
TTL_AFTER_WINDOW_S = 120


def add_request(
    table: Table, *, tenant_id: str, scope: str, start: int, window_s: int, cost: int = 1
) -> int:
    """Add `cost` to the tenant's counter of the window starting at `start`; return the new
    count (this request included)."""
    item = table.update(
        keys.rate_window(tenant_id, scope, start),
        "ADD #n :cost SET expires_at = :ttl",
        names={"#n": "requests"},
        values={":cost": cost, ":ttl": start + window_s + TTL_AFTER_WINDOW_S},
        returns="UPDATED_NEW",
    )
    return int(item["requests"])
