"""Event webhook endpoint items: a tenant's URLs, the event types each takes, and the signing
secret (the tick signs with it, so it is kept as it is, encrypted at rest like the whole table).

The tenant's `webhook_endpoints` counter moves with every create and delete in one transaction,
so the per-tenant limit holds under concurrent creates.
"""

from __future__ import annotations

from typing import Any

from control_plane.errors import LimitExceeded, NotFound, StateConflict
from control_plane.store import keys
from control_plane.store.table import Item, Table, TransactionConflict, to_attrs

MAX_PER_TENANT = 20


def create_endpoint(table: Table, *, tenant_id: str, item: Item, max_per_tenant: int) -> None:
    """Store `item` (the endpoint's fields, `id` among them) and count it for the tenant."""
    full: dict[str, Any] = {
        **keys.webhook_endpoint(item["id"]),
        "gsi1pk": keys.tenant_listing(tenant_id, keys.WEBHOOK_ENDPOINT_LISTING),
        "gsi1sk": item["id"],
        "tenant_id": tenant_id,
        **item,
    }
    count = {
        "Update": {
            "TableName": table.name,
            "Key": to_attrs(keys.tenant(tenant_id)),
            "UpdateExpression": "ADD webhook_endpoints :one",
            "ConditionExpression": (
                "attribute_not_exists(webhook_endpoints) OR webhook_endpoints < :max"
            ),
            "ExpressionAttributeValues": to_attrs({":one": 1, ":max": max_per_tenant}),
        }
    }
    put = {
        "Put": {
            "TableName": table.name,
            "Item": to_attrs(full),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }
    try:
        table.transact([put, count])
    except TransactionConflict as exc:
        if 1 in exc.failed_parts:
            raise LimitExceeded(
                "max_webhook_endpoints",
                max_per_tenant,
                "This tenant has as many webhook endpoints as it may; delete one first",
                status_code=400,
            ) from exc
        raise


def get_endpoint(table: Table, endpoint_id: str) -> Item | None:
    return table.get(keys.webhook_endpoint(endpoint_id))


def get_endpoint_item(table: Table, *, endpoint_id: str, tenant_id: str) -> Item:
    """The endpoint's item; another tenant's endpoint is as absent as a missing one."""
    item = get_endpoint(table, endpoint_id)
    if item is None or item["tenant_id"] != tenant_id:
        raise NotFound("webhook endpoint", endpoint_id, param="webhook_endpoint_id")
    return item


def list_endpoints(
    table: Table, *, tenant_id: str, limit: int, after: str | None
) -> tuple[list[Item], bool]:
    """One page of the tenant's endpoints, newest first, after the id `after`."""
    start = None
    if after:
        start = keys.listing_start(
            keys.webhook_endpoint(after), tenant_id, keys.WEBHOOK_ENDPOINT_LISTING, after
        )
    return table.query_page(
        index="gsi1",
        key_name="gsi1pk",
        key_value=keys.tenant_listing(tenant_id, keys.WEBHOOK_ENDPOINT_LISTING),
        limit=limit,
        start_key=start,
    )


def update_endpoint(
    table: Table, endpoint_id: str, sets: dict[str, Any], *, remove: tuple[str, ...] = ()
) -> Item:
    """Set `sets` (and drop `remove`) on an endpoint that still exists; return it after.
    Raises NotFound when it was deleted meanwhile."""
    names = {f"#f{i}": name for i, name in enumerate(sets)}
    values = {f":v{i}": value for i, value in enumerate(sets.values())}
    expression = "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(sets)))
    if remove:
        names.update({f"#r{i}": name for i, name in enumerate(remove)})
        expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(remove)))
    try:
        return table.update(
            keys.webhook_endpoint(endpoint_id),
            expression,
            condition="attribute_exists(pk)",
            names=names,
            values=values,
        )
    except StateConflict as exc:
        raise NotFound("webhook endpoint", endpoint_id, param="webhook_endpoint_id") from exc


def delete_endpoint(table: Table, *, endpoint_id: str, tenant_id: str) -> None:
    """Delete the endpoint and give the tenant its slot back, once."""
    delete = {
        "Delete": {
            "TableName": table.name,
            "Key": to_attrs(keys.webhook_endpoint(endpoint_id)),
            "ConditionExpression": "attribute_exists(pk)",
        }
    }
    count = {
        "Update": {
            "TableName": table.name,
            "Key": to_attrs(keys.tenant(tenant_id)),
            "UpdateExpression": "ADD webhook_endpoints :minus",
            "ExpressionAttributeValues": to_attrs({":minus": -1}),
        }
    }
    try:
        table.transact([delete, count])
    except TransactionConflict as exc:
        raise NotFound("webhook endpoint", endpoint_id, param="webhook_endpoint_id") from exc


def tenant_endpoints(table: Table, tenant_id: str, *, limit: int) -> list[Item]:
    """Every endpoint of the tenant (there are at most `limit`)."""
    items, _ = list_endpoints(table, tenant_id=tenant_id, limit=limit, after=None)
    return items
