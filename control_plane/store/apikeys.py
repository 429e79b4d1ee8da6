"""API keys: stored as SHA-256 digests with their tenant; the key itself is shown once.

Each key also gets a public id (`key_…`, sorted by creation time) that names it in listings and
revokes it without its plaintext, and may expire. Every key item sits in one gsi1 partition
(`APIKEYS`): a deployment has a handful of keys, so listing them (all, or one tenant's) and
finding one by id are each a query of that partition, never a scan of the table.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from pydantic import BaseModel

from control_plane.errors import StateConflict
from control_plane.ids import now_s
from control_plane.store import keys
from control_plane.store.table import Item, Table

KEY_PREFIX = "hb-"
ID_PREFIX = "key_"
# gsi1pk of every key item (beside the tenants' `TENANT#{t}#…` listings).
LISTING = "APIKEYS"
LIST_PAGE = 100


class ApiKeyInfo(BaseModel):
    """What an operator may see of a key: never the key, nor its digest."""

    id: str
    tenant_id: str
    name: str
    hint: str
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None


def digest(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast unsalted hash is enough (nothing to brute-force).
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """`key_` + 12 hex digits of Unix milliseconds + 12 random ones (as `ids.new_id`)."""
    return f"{ID_PREFIX}{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def issue_key(
    table: Table,
    *,
    tenant_id: str,
    name: str = "",
    key: str | None = None,
    expires_at: int | None = None,
) -> tuple[str, ApiKeyInfo]:
    """Store a key for `tenant_id`; return it and what may be shown of it. A fixed `key` (local
    stack, scripts) that already exists for another tenant is refused; for the same tenant it
    is stored afresh (a new id, no longer revoked)."""
    key = key or new_key()
    info = ApiKeyInfo(
        id=new_key_id(),
        tenant_id=tenant_id,
        name=name,
        hint=key[:7] + "…" + key[-4:],
        created_at=now_s(),
        expires_at=expires_at,
    )
    item = {
        **keys.api_key(digest(key)),
        "key_id": info.id,
        "tenant_id": tenant_id,
        "name": name,
        "hint": info.hint,
        "created_at": info.created_at,
        "gsi1pk": LISTING,
        "gsi1sk": info.id,
    }
    if expires_at is not None:
        # Also the table's TTL attribute: DynamoDB deletes the item some time (up to days)
        # after it expires; `tenant_for` refuses it from the second it expires.
        item["expires_at"] = expires_at
    try:
        table.put(
            item, condition="attribute_not_exists(pk) OR tenant_id = :t", values={":t": tenant_id}
        )
    except StateConflict as exc:
        raise ValueError("that key already belongs to another tenant") from exc
    return key, info


def create_key(
    table: Table,
    *,
    tenant_id: str,
    name: str = "",
    key: str | None = None,
    expires_at: int | None = None,
) -> str:
    """Store a key for `tenant_id` and return it (`issue_key` without what it shows)."""
    return issue_key(table, tenant_id=tenant_id, name=name, key=key, expires_at=expires_at)[0]


def tenant_for(table: Table, key: str, *, now: int | None = None) -> str | None:
    """The tenant of `key`; None for a key that is unknown, revoked or expired."""
    item = table.get(keys.api_key(digest(key)), consistent=False)
    if item is None or item.get("revoked_at"):
        return None
    expires_at = item.get("expires_at")
    if expires_at is not None and int(expires_at) <= (now_s() if now is None else now):
        return None
    return str(item["tenant_id"])


def list_keys(table: Table, *, tenant_id: str | None = None) -> list[ApiKeyInfo]:
    """Every key (or `tenant_id`'s), newest first. Keys stored before they had ids are not in
    the listing (revoke those with the key itself)."""
    found: list[ApiKeyInfo] = []
    start: dict[str, str] | None = None
    while True:
        items, more = table.query_page(
            index="gsi1",
            key_name="gsi1pk",
            key_value=LISTING,
            limit=LIST_PAGE,
            start_key=start,
        )
        found.extend(
            _info(item) for item in items if tenant_id is None or item["tenant_id"] == tenant_id
        )
        if not more or not items:
            return found
        last = items[-1]
        start = {name: str(last[name]) for name in ("pk", "sk", "gsi1pk", "gsi1sk")}


def revoke_key(table: Table, key: str) -> bool:
    """Revoke `key`; False when no such key exists."""
    return _revoke(table, keys.api_key(digest(key)))


def revoke_key_id(table: Table, key_id: str) -> bool:
    """Revoke the key whose id is `key_id` (`list_keys`); False when no key has it."""
    items, _ = table.query_page(
        index="gsi1",
        key_name="gsi1pk",
        key_value=LISTING,
        limit=1,
        sort_condition=("gsi1sk", "=", key_id),
    )
    if not items:
        return False
    item = items[0]
    return _revoke(table, {"pk": item["pk"], "sk": item["sk"]}, key_id=key_id)


def _revoke(table: Table, key: dict[str, str], *, key_id: str | None = None) -> bool:
    condition = "attribute_exists(pk)"
    values: dict[str, Any] = {":now": now_s()}
    if key_id is not None:
        # The index is read eventually: the item must still be the one it named.
        condition += " AND key_id = :id"
        values[":id"] = key_id
    try:
        table.update(
            key,
            # The first revocation's time stays: it is when the key stopped working.
            "SET revoked_at = if_not_exists(revoked_at, :now)",
            condition=condition,
            values=values,
        )
    except StateConflict:
        return False
    return True


def _info(item: Item) -> ApiKeyInfo:
    fields: dict[str, Any] = {
        "id": item["key_id"],
        "tenant_id": item["tenant_id"],
        "name": item.get("name", ""),
        "hint": item.get("hint", ""),
        "created_at": item.get("created_at", 0),
        "expires_at": item.get("expires_at"),
        "revoked_at": item.get("revoked_at"),
    }
    return ApiKeyInfo.model_validate(fields)
