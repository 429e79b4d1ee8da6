"""Tenants stay apart across the key lifecycle (revoke by id, expiry, listing), and the API's
webhook path records results without the RunPod API key the API function is not granted."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from control_plane.api import deps
from control_plane.clients.aws import Aws
from control_plane.ids import now_s
from control_plane.scheduler.context import RunPodNotAvailable
from control_plane.scheduler.tick import make_context, webhook_context
from control_plane.store import apikeys
from control_plane.store import chunks as chunk_store
from control_plane.webhooks import signature
from infra import cli
from tests.support.api import TABLE, KeyCacheClock, auth, create_batch, files_status, upload_id
from tests.support.lines import jsonl


def test_revoking_tenant_bs_key_by_id_leaves_tenant_as_key_working(
    client: TestClient, aws: Aws, key_a: str, key_b: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = KeyCacheClock()
    monkeypatch.setattr(deps, "time", clock)
    assert (
        files_status(client, key_a) == files_status(client, key_b) == 200
    )  # both cached from here
    (b_key,) = apikeys.list_keys(aws.table, tenant_id="tenant-b")

    assert apikeys.revoke_key_id(aws.table, b_key.id) is True

    assert files_status(client, key_b) == 200  # still inside this process's cache
    clock.now += aws.settings.key_cache_s
    refused = client.get("/v1/files", headers=auth(key_b))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert files_status(client, key_a) == 200
    (a_key,) = apikeys.list_keys(aws.table, tenant_id="tenant-a")
    assert a_key.revoked_at is None


def test_an_expired_key_answers_401_with_an_openai_error_body(client: TestClient, aws: Aws) -> None:
    live = apikeys.create_key(aws.table, tenant_id="tenant-e", expires_at=now_s() + 3600)
    expired = apikeys.create_key(aws.table, tenant_id="tenant-e", expires_at=now_s() - 1)

    assert files_status(client, live) == 200
    reply = client.get("/v1/files", headers=auth(expired))

    assert reply.status_code == 401
    assert reply.json() == {
        "error": {
            "message": "Incorrect API key provided.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_keys_list_for_one_tenant_never_shows_another_tenants_keys(aws: Aws) -> None:
    _, a = apikeys.issue_key(aws.table, tenant_id="a", name="a-ci")
    hidden = [
        apikeys.issue_key(aws.table, tenant_id=tenant, name=f"{tenant}-key")[1]
        for tenant in ("b", "a#b", "ab", "A", "a ")  # near names: a prefix match would leak
    ]

    listed = CliRunner().invoke(
        cli.app, ["keys", "list", "--tenant", "a", "--json"], env={"HOTBATCH_TABLE_NAME": TABLE}
    )
    table = CliRunner().invoke(cli.app, ["keys", "list", "--tenant", "a", "--table", TABLE])

    assert listed.exit_code == 0, listed.output
    assert [(k["id"], k["tenant"]) for k in json.loads(listed.stdout)] == [(a.id, "a")]
    assert table.exit_code == 0, table.output
    assert a.id in table.stdout
    for other in hidden:
        assert other.id not in listed.stdout + table.stdout
        assert other.name not in listed.stdout + table.stdout


@pytest.mark.parametrize("settings", [{"webhook_secret_value": "s3cret"}], indirect=True)
def test_the_api_records_a_runpod_webhook_without_the_runpod_api_key(
    client: TestClient, aws: Aws, key_a: str
) -> None:
    # Neither the key nor its secret's ARN is set: the API function is granted neither.
    assert not aws.settings.runpod_api_key and not aws.settings.runpod_api_key_secret
    with pytest.raises(RuntimeError, match="RUNPOD_API_KEY"):
        make_context(aws)  # what the queue functions and the sweep use
    reply = create_batch(client, key_a, upload_id(client, key_a, jsonl(3)))
    assert reply.status_code == 200, reply.text
    batch_id = reply.json()["id"]
    (chunk,) = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    chunk = chunk_store.claim(
        aws.table, chunk, lease_until=now_s() + 600, check_at=now_s() + 600, now=now_s()
    )
    query: dict[str, str | int] = {
        "batch_id": batch_id,
        "chunk_id": chunk["chunk_id"],
        "attempt": 1,
        "sig": signature("s3cret", batch_id, chunk["chunk_id"], 1),
    }

    recorded = client.post(
        "/internal/runpod/webhook", params=query, json={"status": "FAILED", "error": "oom"}
    )

    assert recorded.status_code == 200, recorded.text
    assert recorded.json()["outcome"] != "stale"
    (after,) = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    assert after["state"] != "dispatched"


def test_the_webhook_context_holds_no_runpod_key_and_refuses_every_call(aws: Aws) -> None:
    runpod = webhook_context(aws).runpod
    assert runpod.api_key == "" and runpod.endpoint_id == aws.settings.runpod_endpoint_id
    for call in (runpod.health, lambda: runpod.run({}), lambda: runpod.status("j")):
        with pytest.raises(RunPodNotAvailable):
            call()
    with pytest.raises(RunPodNotAvailable):
        runpod.workers_max()
