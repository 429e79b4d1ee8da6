"""Per-tenant limits (security review, findings 6 and 9): requests per minute with OpenAI's
headers and 429 body, counted only once a key resolves; pending uploads per tenant; presigned
part URLs bound to their part's size. One tenant at its limit leaves the others untouched."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient

from control_plane.api import ratelimit
from control_plane.clients.aws import Aws
from control_plane.services import uploads as upload_service
from tests.support.api import TABLE, Reply, auth

LIMIT = 3
# 30 s into a minute: the window resets in 30 s.
NOW = 1_800_000_030.0
MiB = 1024 * 1024


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The rate limiter's time, moved by the test (`clock[0] += 60`) instead of sleeping."""
    now = [NOW]
    monkeypatch.setattr(ratelimit, "clock", lambda: now[0])
    return now


def listing(client: TestClient, key: str) -> Reply:
    return client.get("/v1/batches", headers=auth(key))


def limits(reply: Reply) -> tuple[str | None, str | None, str | None]:
    return (
        reply.headers.get("x-ratelimit-limit-requests"),
        reply.headers.get("x-ratelimit-remaining-requests"),
        reply.headers.get("x-ratelimit-reset-requests"),
    )


def rate_items(aws: Aws) -> list[dict[str, Any]]:
    items = aws.dynamodb.scan(TableName=TABLE)["Items"]
    return [item for item in items if item["pk"]["S"].startswith("RATE#")]


def new_upload(client: TestClient, key: str, size: int = 10) -> Reply:
    return client.post(
        "/v1/uploads",
        headers=auth(key),
        json={"bytes": size, "filename": "x.jsonl", "mime_type": "text/plain", "purpose": "batch"},
    )


@pytest.mark.parametrize("settings", [{"rate_limit_requests_per_minute": LIMIT}], indirect=True)
def test_a_flooding_tenant_gets_429s_with_openai_headers_while_another_keeps_its_budget(
    client: TestClient, key_a: str, key_b: str, clock: list[float]
) -> None:
    for used in range(1, LIMIT + 1):
        reply = listing(client, key_b)
        assert reply.status_code == 200, reply.text
        assert limits(reply) == (str(LIMIT), str(LIMIT - used), "30s")

    for attempt in range(6):
        refused = listing(client, key_b)
        assert refused.status_code == 429
        assert limits(refused) == (str(LIMIT), "0", "30s")
        assert refused.headers["retry-after"] == "30"
        error = refused.json()["error"]
        assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
        assert error["param"] is None
        assert error["message"].startswith("Rate limit reached for requests per min (RPM)")
        assert f"Limit {LIMIT}, Used {LIMIT}, Requested 1" in error["message"]
        assert "try again in 30s" in error["message"]
        if attempt == 2:
            # Tenant A, in the middle of B's flood, has its whole budget: B's count is B's.
            other = listing(client, key_a)
            assert other.status_code == 200, other.text
            assert limits(other) == (str(LIMIT), str(LIMIT - 1), "30s")

    assert limits(listing(client, key_a))[1] == str(LIMIT - 2)


@pytest.mark.parametrize("settings", [{"rate_limit_requests_per_minute": LIMIT}], indirect=True)
def test_the_limit_resets_in_the_next_minute(
    client: TestClient, key_b: str, clock: list[float]
) -> None:
    for _ in range(LIMIT):
        assert listing(client, key_b).status_code == 200
    clock[0] += 29.5
    late = listing(client, key_b)
    assert late.status_code == 429 and late.headers["x-ratelimit-reset-requests"] == "500ms"
    assert late.headers["retry-after"] == "1" and late.headers["retry-after-ms"] == "500"

    clock[0] += 0.5  # the next minute starts
    fresh = listing(client, key_b)
    assert fresh.status_code == 200, fresh.text
    assert limits(fresh) == (str(LIMIT), str(LIMIT - 1), "1m0s")


@pytest.mark.parametrize("settings", [{"rate_limit_requests_per_minute": LIMIT}], indirect=True)
def test_errors_carry_the_headers_and_unknown_keys_write_nothing(
    client: TestClient, aws: Aws, key_a: str, clock: list[float]
) -> None:
    for _ in range(10):
        bad = listing(client, "hb-not-a-key")
        assert bad.status_code == 401
        assert "x-ratelimit-limit-requests" not in bad.headers
    assert client.get("/v1/batches").status_code == 401
    assert rate_items(aws) == []

    missing = client.get("/v1/batches/batch_nope", headers=auth(key_a))
    assert missing.status_code == 404
    assert limits(missing) == (str(LIMIT), str(LIMIT - 1), "30s")
    invalid = client.get("/v1/batches?limit=0", headers=auth(key_a))
    assert invalid.status_code == 400
    assert limits(invalid)[1] == str(LIMIT - 2)
    (item,) = rate_items(aws)  # one counter item: tenant A, this minute
    assert item["requests"]["N"] == "2" and "expires_at" in item


@pytest.mark.parametrize(
    "settings",
    [{"rate_limit_requests_per_minute": 100, "rate_limit_expensive_per_minute": 2}],
    indirect=True,
)
def test_estimates_count_in_a_smaller_budget_of_their_own(
    client: TestClient, key_a: str, key_b: str, clock: list[float]
) -> None:
    for _ in range(2):
        assert client.post("/v1/batches/estimate", headers=auth(key_a), json={}).status_code == 400
    refused = client.post("/v1/batches/estimate", headers=auth(key_a), json={})
    assert refused.status_code == 429
    assert "POST /v1/batches/estimate per min" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "30"
    # Other routes and other tenants are not held back by it.
    assert limits(listing(client, key_a))[1] == "96"
    assert client.post("/v1/batches/estimate", headers=auth(key_b), json={}).status_code == 400


@pytest.mark.parametrize("settings", [{"max_pending_uploads": 2}], indirect=True)
def test_pending_uploads_are_capped_per_tenant_until_one_ends(
    client: TestClient, aws: Aws, key_a: str, key_b: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = (new_upload(client, key_b).json() for _ in range(2))
    refused = new_upload(client, key_b)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "max_pending_uploads"
    assert "2 pending uploads" in error["message"] and "max_pending_uploads=2" in error["message"]

    assert new_upload(client, key_a).status_code == 200  # A's cap is A's own

    cancelled = client.post(f"/v1/uploads/{first['id']}/cancel", headers=auth(key_b))
    assert cancelled.status_code == 200
    assert new_upload(client, key_b).status_code == 200  # the cancelled one left room
    assert new_upload(client, key_b).status_code == 400

    later = first["created_at"] + aws.settings.upload_expires_s + 1
    monkeypatch.setattr(upload_service, "now_s", lambda: later)
    assert new_upload(client, key_b).status_code == 200  # the expired ones left room too


def test_part_urls_sign_each_parts_content_length(client: TestClient, key_a: str) -> None:
    size = 64 * MiB + 10  # two parts of the default 64 MiB
    reply = new_upload(client, key_a, size)
    assert reply.status_code == 200, reply.text
    parts = reply.json()["part_urls"]
    assert [part["bytes"] for part in parts] == [64 * MiB, 10]
    for part in parts:
        query = parse_qs(urlparse(part["url"]).query)
        assert query["X-Amz-SignedHeaders"] == ["content-length;host"]


def test_routes_that_build_their_own_response_carry_the_headers_too(
    client: TestClient, key_a: str
) -> None:
    uploaded = client.post(
        "/v1/files",
        headers=auth(key_a),
        files={"file": ("in.jsonl", b'{"a": 1}\n', "application/jsonl")},
        data={"purpose": "batch"},
    )
    content = client.get(f"/v1/files/{uploaded.json()['id']}/content", headers=auth(key_a))
    assert content.status_code == 200 and content.content == b'{"a": 1}\n'
    limit, remaining, reset = limits(content)
    assert limit is not None and remaining is not None and reset is not None
    assert int(remaining) == int(limit) - 2  # the upload, then this read
