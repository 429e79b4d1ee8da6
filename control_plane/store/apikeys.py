"""API keys: stored as SHA-256 digests with their tenant; the key itself is shown once."""

from __future__ import annotations

import hashlib
import secrets

from control_plane.errors import StateConflict
from control_plane.ids import now_s
from control_plane.store import keys
from control_plane.store.table import Table

KEY_PREFIX = "hb-"


def digest(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast unsalted hash is enough (nothing to brute-force).
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(table: Table, *, tenant_id: str, name: str = "", key: str | None = None) -> str:
    """Store a key for `tenant_id` and return it. A fixed `key` (local stack, scripts) that
    already exists for another tenant is refused."""
    key = key or new_key()
    item = {
        **keys.api_key(digest(key)),
        "tenant_id": tenant_id,
        "name": name,
        "hint": key[:7] + "…" + key[-4:],
        "created_at": now_s(),
    }
    try:
        table.put(
            item, condition="attribute_not_exists(pk) OR tenant_id = :t", values={":t": tenant_id}
        )
    except StateConflict as exc:
        raise ValueError("that key already belongs to another tenant") from exc
    return key


def tenant_for(table: Table, key: str) -> str | None:
    item = table.get(keys.api_key(digest(key)), consistent=False)
    if item is None or item.get("revoked_at"):
        return None
    return str(item["tenant_id"])


def revoke_key(table: Table, key: str) -> bool:
    try:
        table.update(
            keys.api_key(digest(key)),
            "SET revoked_at = :now",
            condition="attribute_exists(pk)",
            values={":now": now_s()},
        )
    except StateConflict:
        return False
    return True
