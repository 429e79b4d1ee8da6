"""`/v1/webhook_endpoints` and `/v1/webhook_event_types` through the official `openai` SDK
(`client.webhooks.*`), in process: the SDK's own models parse every answer."""

from __future__ import annotations

from typing import Final

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from control_plane.clients.aws import Aws
from control_plane.notify import signing
from control_plane.store import webhook_endpoints as endpoint_store

BATCH_TYPES: Final = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
URL = "https://hooks.example.com/openai"


def sdk(client: TestClient, key: str) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)


def test_create_answers_the_signing_secret_once(client: TestClient, key_a: str) -> None:
    hooks = sdk(client, key_a).webhooks
    created = hooks.create(name="app", url=URL, event_types=["batch.completed", "batch.failed"])
    assert created.id.startswith("whe_") and created.object == "webhook_endpoint"
    assert created.signing_secret.startswith("whsec_") and len(created.signing_secret) > 40
    assert created.signing_secret_hint == f"whsec_…{created.signing_secret.rstrip('=')[-4:]}"
    assert created.event_types == ["batch.completed", "batch.failed"]
    assert created.updated_at == created.created_at

    fetched = hooks.retrieve(created.id)
    assert fetched.model_dump() == {
        k: v for k, v in created.model_dump().items() if k != "signing_secret"
    }
    raw = client.get(
        f"/v1/webhook_endpoints/{created.id}", headers={"Authorization": f"Bearer {key_a}"}
    ).json()
    assert "signing_secret" not in raw and created.signing_secret not in str(raw)


def test_list_is_newest_first_pages_and_is_per_tenant(
    client: TestClient, key_a: str, key_b: str
) -> None:
    mine = sdk(client, key_a).webhooks
    ids = [mine.create(name=f"e{i}", url=URL, event_types=[*BATCH_TYPES]).id for i in range(3)]
    page = mine.list(limit=2)
    assert [e.id for e in page.data] == ids[::-1][:2] and page.has_more
    assert [e.id for e in mine.list(limit=2)] == ids[::-1]  # the SDK follows `after` itself
    theirs = sdk(client, key_b).webhooks
    assert theirs.list().data == []
    with pytest.raises(openai.NotFoundError):
        theirs.retrieve(ids[0])
    with pytest.raises(openai.NotFoundError):
        theirs.delete(ids[0])


def test_update_changes_fields_and_an_unchanged_update_keeps_updated_at(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    hooks = sdk(client, key_a).webhooks
    endpoint = hooks.create(name="app", url=URL, event_types=["batch.completed"])
    endpoint_store.update_endpoint(aws.table, endpoint.id, {"updated_at": 1})
    same = hooks.update(endpoint.id, name="app", event_types=["batch.completed"])
    assert same.updated_at == 1
    changed = hooks.update(
        endpoint.id, url="https://other.example.com/h", event_types=["batch.failed"]
    )
    assert changed.url == "https://other.example.com/h" and changed.event_types == ["batch.failed"]
    assert changed.name == "app" and changed.updated_at is not None and changed.updated_at > 1
    assert hooks.retrieve(endpoint.id).url == "https://other.example.com/h"


def test_delete_answers_deleted_and_frees_the_tenants_slot(client: TestClient, key_a: str) -> None:
    hooks = sdk(client, key_a).webhooks
    ids = [
        hooks.create(name=f"e{i}", url=URL, event_types=[*BATCH_TYPES]).id
        for i in range(endpoint_store.MAX_PER_TENANT)
    ]
    with pytest.raises(openai.BadRequestError, match="max_webhook_endpoints=20"):
        hooks.create(name="one too many", url=URL, event_types=[*BATCH_TYPES])
    deleted = hooks.delete(ids[0])
    assert deleted.deleted and deleted.id == ids[0] and deleted.object == "webhook_endpoint.deleted"
    with pytest.raises(openai.NotFoundError):
        hooks.retrieve(ids[0])
    assert hooks.create(name="fits again", url=URL, event_types=[*BATCH_TYPES]).id


def test_rotate_secret_answers_a_new_secret_and_can_keep_the_old_one_a_day(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    hooks = sdk(client, key_a).webhooks
    created = hooks.create(name="app", url=URL, event_types=[*BATCH_TYPES])
    kept = hooks.rotate_secret(created.id, keep_old_secret_active_for_24_hours=True)
    assert kept.signing_secret != created.signing_secret
    assert kept.signing_secret_hint == f"whsec_…{kept.signing_secret.rstrip('=')[-4:]}"
    item = endpoint_store.get_endpoint(aws.table, created.id)
    assert item is not None
    now = kept.updated_at or 0
    assert signing.secrets_of(item, now) == [kept.signing_secret, created.signing_secret]
    assert signing.secrets_of(item, now + 24 * 3600) == [kept.signing_secret]

    dropped = hooks.rotate_secret(created.id)
    item = endpoint_store.get_endpoint(aws.table, created.id)
    assert item is not None and signing.secrets_of(item, now) == [dropped.signing_secret]


@pytest.mark.parametrize("value", ["yes", "true", "false", 1, 0, None])
def test_rotate_secret_takes_only_a_json_boolean(
    client: TestClient, key_a: str, aws: Aws, value: object
) -> None:
    created = sdk(client, key_a).webhooks.create(name="app", url=URL, event_types=[*BATCH_TYPES])
    reply = client.post(
        f"/v1/webhook_endpoints/{created.id}/rotate_secret",
        headers={"Authorization": f"Bearer {key_a}"},
        json={"keep_old_secret_active_for_24_hours": value},
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_value"
    assert error["param"] == "keep_old_secret_active_for_24_hours"
    assert error["message"].startswith("Invalid value for 'keep_old_secret_active_for_24_hours'")
    item = endpoint_store.get_endpoint(aws.table, created.id)
    assert item is not None and item["secret"] == created.signing_secret  # nothing rotated


def test_event_types_are_the_batch_events(client: TestClient, key_a: str) -> None:
    listed = sdk(client, key_a).webhooks.event_types.list()
    assert listed.object == "list" and listed.data == list(BATCH_TYPES)


@pytest.mark.parametrize(
    ("url", "event_types", "match"),
    [
        (URL, ["response.completed"], "unsupported event type 'response.completed'"),
        (URL, [], "event_types"),
        ("http://hooks.example.com/h", list(BATCH_TYPES), "must be https"),
        ("https://127.0.0.1/h", list(BATCH_TYPES), "not a public address"),
        ("https://10.1.2.3/h", list(BATCH_TYPES), "not a public address"),
        ("https://[::1]/h", list(BATCH_TYPES), "not a public address"),
        ("https://localhost:8443/h", list(BATCH_TYPES), "this machine"),
        ("https://user:pw@hooks.example.com/h", list(BATCH_TYPES), "credentials"),
        ("https://8.8.8.8/h", list(BATCH_TYPES), "a.dns.name"),
        ("https://hooks/h", list(BATCH_TYPES), "a.dns.name"),
        ("https://hooks.example.com/caf\u00e9", list(BATCH_TYPES), "printable ASCII"),
        ("https://hooks.example.com:99999/h", list(BATCH_TYPES), "port must be a number"),
        ("https://hooks.example.com:0/h", list(BATCH_TYPES), "port must be a number"),
        ("https://hooks.example.com:8443/h", list(BATCH_TYPES), "port must be 443"),
        ("https://[::1/h", list(BATCH_TYPES), "cannot be parsed"),
        ("https://[64:ff9b::a9fe:a9fe]/h", list(BATCH_TYPES), "not a public address"),
    ],
)
def test_bad_endpoints_are_400s_naming_the_problem(
    client: TestClient, key_a: str, url: str, event_types: list[str], match: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=match):
        sdk(client, key_a).webhooks.create(name="x", url=url, event_types=event_types)  # type: ignore[arg-type]


@pytest.mark.parametrize("settings", [{"event_webhook_private_urls": True}], indirect=True)
def test_a_test_event_that_cannot_be_sent_is_a_400_saying_why(
    client: TestClient, key_a: str
) -> None:
    hooks = sdk(client, key_a).webhooks
    endpoint = hooks.create(name="dead", url="http://127.0.0.1:9/h", event_types=[*BATCH_TYPES])
    with pytest.raises(openai.BadRequestError, match="could not be delivered.*connection failed"):
        hooks.test(endpoint.id, event_type="batch.completed")
    with pytest.raises(openai.BadRequestError, match="unsupported event type"):
        hooks.test(endpoint.id, event_type="video.completed")


def test_webhook_routes_need_a_key(client: TestClient) -> None:
    assert client.get("/v1/webhook_endpoints").status_code == 401
    assert client.get("/v1/webhook_event_types").status_code == 401
