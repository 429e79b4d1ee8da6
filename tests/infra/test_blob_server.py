"""The presigned-URL store that stands in for S3 in handler tests and `run-chunk`."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from infra.blob_server import BlobServer

pytestmark = pytest.mark.stack


@pytest.fixture()
def store() -> Iterator[BlobServer]:
    server = BlobServer().start()
    yield server
    server.stop()


def fetch(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_presigned_put_then_get_round_trips(store: BlobServer) -> None:
    assert fetch(store.presign("PUT", "a/b.jsonl"), "PUT", b"line\n")[0] == 200
    assert fetch(store.presign("GET", "a/b.jsonl")) == (200, b"line\n")


def test_url_signed_for_get_cannot_put(store: BlobServer) -> None:
    status, body = fetch(store.presign("GET", "a/b.jsonl"), "PUT", b"x")
    assert status == 403 and b"signature does not match" in body
    assert store.get("a/b.jsonl") is None


def test_tampered_and_expired_urls_are_refused(store: BlobServer) -> None:
    store.put("k", b"v")
    other_key = store.presign("GET", "k").replace("/k?", "/other?")
    assert fetch(other_key)[0] == 403
    expired = store.presign("GET", "k", expires_in=-1)
    status, body = fetch(expired)
    assert status == 403 and b"expired" in body


def test_missing_object_is_404(store: BlobServer) -> None:
    assert fetch(store.presign("GET", "nothing"))[0] == 404


def test_urls_expire_with_time(store: BlobServer) -> None:
    store.put("k", b"v")
    url = store.presign("GET", "k", expires_in=1)
    assert fetch(url)[0] == 200
    time.sleep(2.1)
    assert fetch(url)[0] == 403
