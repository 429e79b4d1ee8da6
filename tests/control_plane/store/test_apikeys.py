"""API keys under moto: stored only as digests, one tenant per key, revocable."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.aws import Aws
from control_plane.store import apikeys
from tests.support.api import TABLE

TENANT = "tenant-s"


def scan(aws: Aws) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": TABLE}
    while True:
        reply = aws.dynamodb.scan(**kwargs)
        items.extend(reply["Items"])
        if "LastEvaluatedKey" not in reply:
            return items
        kwargs["ExclusiveStartKey"] = reply["LastEvaluatedKey"]


def test_api_keys_are_stored_only_as_digests(aws: Aws) -> None:
    key = apikeys.create_key(aws.table, tenant_id=TENANT, name="ci")

    items = scan(aws)

    assert key.startswith(apikeys.KEY_PREFIX)
    assert len(items) == 1
    assert all(key not in str(item) for item in items)
    assert items[0]["pk"]["S"] == f"APIKEY#{apikeys.digest(key)}"
    assert apikeys.tenant_for(aws.table, key) == TENANT


def test_a_fixed_key_cannot_be_registered_for_a_second_tenant(aws: Aws) -> None:
    key = "hb-local-development-key"
    assert apikeys.create_key(aws.table, tenant_id="first", key=key) == key
    assert apikeys.create_key(aws.table, tenant_id="first", key=key) == key  # same tenant: fine

    with pytest.raises(ValueError, match="another tenant"):
        apikeys.create_key(aws.table, tenant_id="second", key=key)

    assert apikeys.tenant_for(aws.table, key) == "first"


def test_unknown_and_revoked_keys_have_no_tenant(aws: Aws) -> None:
    key = apikeys.create_key(aws.table, tenant_id=TENANT)
    assert apikeys.tenant_for(aws.table, "hb-unknown") is None
    assert apikeys.revoke_key(aws.table, key) is True
    assert apikeys.tenant_for(aws.table, key) is None
