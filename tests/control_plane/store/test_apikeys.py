"""API keys under moto: stored only as digests, one tenant per key, revocable."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.clients.aws import Aws
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


def test_a_key_stops_working_the_second_it_expires(aws: Aws) -> None:
    key = apikeys.create_key(aws.table, tenant_id=TENANT, expires_at=2_000_000_000)
    assert apikeys.tenant_for(aws.table, key, now=1_999_999_999) == TENANT
    assert apikeys.tenant_for(aws.table, key, now=2_000_000_000) is None
    # Stored as the table's TTL attribute: DynamoDB removes the item some time later.
    (item,) = scan(aws)
    assert item["expires_at"] == {"N": "2000000000"}


def test_a_key_without_expiry_has_no_ttl(aws: Aws) -> None:
    apikeys.create_key(aws.table, tenant_id=TENANT)
    (item,) = scan(aws)
    assert "expires_at" not in item


def test_keys_are_listed_by_id_without_key_or_digest(aws: Aws) -> None:
    old_key, old = apikeys.issue_key(aws.table, tenant_id=TENANT, name="old")
    new_key, new = apikeys.issue_key(aws.table, tenant_id="other", name="new", expires_at=2**31)

    listed = apikeys.list_keys(aws.table)

    assert [info.id for info in listed] == [new.id, old.id]  # newest first
    assert listed[0] == new and new.expires_at == 2**31 and new.revoked_at is None
    assert old.id.startswith(apikeys.ID_PREFIX) and old.hint.startswith("hb-")
    shown = str([info.model_dump() for info in listed])
    for secret in (old_key, new_key, apikeys.digest(old_key), apikeys.digest(new_key)):
        assert secret not in shown
    assert [info.id for info in apikeys.list_keys(aws.table, tenant_id="other")] == [new.id]
    assert apikeys.list_keys(aws.table, tenant_id="nobody") == []


def test_listing_and_revoking_by_id_query_the_index_never_scan(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, info = apikeys.issue_key(aws.table, tenant_id=TENANT)

    def no_scan(**_: Any) -> None:
        raise AssertionError("a scan of the whole table")

    monkeypatch.setattr(aws.table.client, "scan", no_scan)
    assert [listed.id for listed in apikeys.list_keys(aws.table, tenant_id=TENANT)] == [info.id]
    assert apikeys.revoke_key_id(aws.table, info.id) is True
    assert apikeys.tenant_for(aws.table, key) is None


def test_listing_pages_through_many_keys(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apikeys, "LIST_PAGE", 2)
    made = [apikeys.issue_key(aws.table, tenant_id=f"t{n % 2}")[1].id for n in range(5)]
    assert sorted(info.id for info in apikeys.list_keys(aws.table)) == sorted(made)
    assert len(apikeys.list_keys(aws.table, tenant_id="t0")) == 3


def test_revoking_by_id_touches_only_that_key_and_keeps_the_first_time(aws: Aws) -> None:
    key_a, a = apikeys.issue_key(aws.table, tenant_id="a")
    key_b, b = apikeys.issue_key(aws.table, tenant_id="b")

    assert apikeys.revoke_key_id(aws.table, b.id) is True
    (revoked,) = [info for info in apikeys.list_keys(aws.table) if info.id == b.id]
    assert revoked.revoked_at is not None
    assert apikeys.tenant_for(aws.table, key_b) is None
    assert apikeys.tenant_for(aws.table, key_a) == "a"
    assert apikeys.list_keys(aws.table, tenant_id="a")[0].revoked_at is None

    item_before = aws.table.get({"pk": f"APIKEY#{apikeys.digest(key_b)}", "sk": "APIKEY"})
    assert apikeys.revoke_key(aws.table, key_b) is True  # again: still revoked, same time
    item_after = aws.table.get({"pk": f"APIKEY#{apikeys.digest(key_b)}", "sk": "APIKEY"})
    assert item_before is not None and item_after is not None
    assert item_after["revoked_at"] == item_before["revoked_at"]
    assert apikeys.revoke_key_id(aws.table, "key_unknown") is False
    assert a.id != b.id
