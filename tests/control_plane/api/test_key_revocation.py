"""A revoked API key is refused within HOTBATCH_KEY_CACHE_S (5 s by default) by a warm app."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from control_plane.api import deps
from control_plane.clients.aws import Aws
from control_plane.settings import Settings
from control_plane.store import apikeys
from tests.support.api import KeyCacheClock, auth, files_status


def test_the_key_cache_is_seconds_by_default(aws_credentials: None) -> None:
    assert Settings().key_cache_s == 5.0


def test_a_revoked_key_is_refused_once_the_default_cache_time_has_passed(
    client: TestClient, key_a: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = KeyCacheClock()
    monkeypatch.setattr(deps, "time", clock)
    assert files_status(client, key_a) == 200  # the lookup is cached from here
    assert apikeys.revoke_key(aws.table, key_a) is True
    clock.now += 4.9
    assert files_status(client, key_a) == 200  # still inside this process's cache
    clock.now += 0.1
    assert files_status(client, key_a) == 401


@pytest.mark.parametrize("settings", [{"key_cache_s": 0.5}], indirect=True)
def test_a_revoked_key_is_refused_within_the_configured_seconds(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    assert files_status(client, key_a) == 200
    apikeys.revoke_key(aws.table, key_a)
    revoked_at = time.monotonic()
    while files_status(client, key_a) == 200:
        assert time.monotonic() - revoked_at < 0.5 + 0.5, "a revoked key kept working"
        time.sleep(0.05)
    assert client.get("/v1/files", headers=auth(key_a)).json()["error"]["code"] == (
        "invalid_api_key"
    )


@pytest.mark.parametrize("settings", [{"key_cache_s": 0}], indirect=True)
def test_without_a_cache_the_next_request_is_refused(
    client: TestClient, key_a: str, key_b: str, aws: Aws
) -> None:
    assert files_status(client, key_a) == 200
    apikeys.revoke_key(aws.table, key_a)
    assert files_status(client, key_a) == 401
    assert files_status(client, key_b) == 200  # other keys unaffected


def test_unknown_keys_do_not_grow_the_cache_without_bound(
    client: TestClient, key_a: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = KeyCacheClock()
    monkeypatch.setattr(deps, "time", clock)
    monkeypatch.setattr(deps, "KEY_CACHE_MAX", 5)
    for n in range(5):
        assert files_status(client, f"hb-unknown-{n}") == 401
    clock.now += 10  # every cached lookup has expired
    assert files_status(client, key_a) == 200
    cache = client.app.state.key_cache  # type: ignore[attr-defined]
    assert len(cache) == 1 and cache[apikeys.digest(key_a)][0] == "tenant-a"


def test_a_key_that_expires_while_cached_is_refused_once_the_cache_time_has_passed(
    client: TestClient, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = KeyCacheClock()
    monkeypatch.setattr(deps, "time", clock)
    wall = [1_900_000_000]
    monkeypatch.setattr(apikeys, "now_s", lambda: wall[0])
    key = apikeys.create_key(aws.table, tenant_id="tenant-x", expires_at=1_900_000_010)
    assert files_status(client, key) == 200  # cached from here
    wall[0] = 1_900_000_010  # the key expires
    assert files_status(client, key) == 200  # still inside this process's cache
    clock.now += 5.0
    assert files_status(client, key) == 401
