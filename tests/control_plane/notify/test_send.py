"""One event POST: the URL is held to the rules again, the host is resolved once, every address
must be public (IPv4 carried inside IPv6 unwrapped), the connection goes to the address that
was checked, TLS verifies the name, the whole exchange ends by one wall-clock deadline, and
nothing the tenant reads names an address. `post` never raises."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.notify import send, urls
from tests.control_plane.notify.fakes import (
    CLOSED_PORT,
    TRICKLE_S,
    TRICKLED,
    Certificate,
    RawReceiver,
    fake_dns,
)

NAME = "hooks.example.com"
PUBLIC = "1.1.1.1"


def post(url: str, *, timeout_s: float = 2.0, allow_private: bool = False) -> send.Attempt:
    return send.post(url, "{}", {}, timeout_s=timeout_s, allow_private=allow_private)


@pytest.fixture()
def receivers() -> Iterator[list[RawReceiver]]:
    started: list[RawReceiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def test_the_connection_goes_to_the_checked_address_without_resolving_the_name_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Were the name resolved again to connect, it would now answer 127.0.0.1 (rebinding).
    # The checked address itself is routed to a closed local port, so the test stays offline.
    asked = fake_dns(monkeypatch, {NAME: [PUBLIC], PUBLIC: [("127.0.0.1", CLOSED_PORT)]})
    attempt = post(f"https://{NAME}/events?x=1")
    assert asked == [NAME, PUBLIC], asked  # the name once (the check), then the address
    assert attempt == send.Attempt(None, attempt.latency_ms, "connection failed")


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.5"],
        [PUBLIC, "127.0.0.1"],
        ["169.254.169.254"],
        [],
        ["64:ff9b::a9fe:a9fe"],  # NAT64 of 169.254.169.254
        ["2002:a9fe:a9fe::1"],  # 6to4
        ["::a9fe:a9fe"],  # IPv4-compatible
        ["::ffff:10.0.0.5"],  # IPv4-mapped
        ["2001:0:4136:e378:8000:63bf:f5ff:fffe"],  # Teredo, its client 10.0.0.1
        ["224.0.0.1"],
        ["ff0e::1"],
        ["fec0::1"],  # site-local: `is_global` says yes
    ],
)
def test_a_name_with_any_internal_address_or_none_is_refused_before_connecting_and_unnamed(
    monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    asked = fake_dns(monkeypatch, {NAME: addresses})
    attempt = post(f"https://{NAME}/events")
    assert asked == [NAME]  # nothing connected
    assert attempt.status_code is None
    assert attempt.error == "refused: the host does not resolve to a public address"


def test_a_name_that_does_not_resolve_reads_like_one_that_resolves_inside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {})
    assert post(f"https://{NAME}/h").error == (
        "refused: the host does not resolve to a public address"
    )


@pytest.mark.parametrize(
    ("address", "public"),
    [
        (PUBLIC, True),
        ("2606:4700::1111", True),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8: how an IPv6-only network reaches it
        ("2002:808:808::1", True),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b:1::808:808", False),  # RFC 8215 local-use prefix: this network's own mapping
        ("2002:c0a8:1::1", False),
        ("::7f00:1", False),
        ("::ffff:127.0.0.1", False),
        ("::", False),
        ("::1", False),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),
        ("239.1.2.3", False),
        ("ff02::1", False),
        ("240.0.0.1", False),
        ("100.64.0.1", False),
        ("fc00::1", False),
        ("fe80::1", False),
    ],
)
def test_public_means_global_unicast_through_every_ipv4_wrapping(
    address: str, public: bool
) -> None:
    assert urls.is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("url", "allow_private", "reason"),
    [
        ("https://evil.example.com:99999/x", False, "port must be a number from 1 to 65535"),
        ("https://evil.example.com:99999/x", True, "port must be a number from 1 to 65535"),
        ("http://127.0.0.1:0/x", True, "port must be a number from 1 to 65535"),
        ("https://evil.example.com:x/h", False, "port must be a number from 1 to 65535"),
        ("https://evil.example.com:8443/h", False, "port must be 443"),
        ("https://evil.example.com:22/h", False, "port must be 443"),
        ("https://[::1/h", True, "cannot be parsed"),
        ("https://[64:ff9b::a9fe:a9fe]/h", False, "not a public address"),
        ("https://evil.example.com:0443/h", False, "a.dns.name"),
        ("ftp://evil.example.com/h", True, "must be https"),
    ],
)
def test_urls_are_parsed_strictly_and_refused_with_the_reason(
    url: str, allow_private: bool, reason: str
) -> None:
    with pytest.raises(urls.UnsafeUrl, match=reason):
        urls.check_url(url, allow_private=allow_private)
    attempt = post(url, allow_private=allow_private)  # and again when sending, never a raise
    assert attempt.error is not None and attempt.error.startswith("refused: ")


@pytest.mark.parametrize(
    ("url", "allow_private"),
    [
        ("https://hooks.example.com/h?a=b", False),
        ("https://hooks.example.com:443/h", False),
        ("http://127.0.0.1:8123/h", True),
        ("http://localhost:65535", True),
    ],
)
def test_good_urls_pass(url: str, allow_private: bool) -> None:
    assert urls.check_url(url, allow_private=allow_private) == url


@pytest.mark.stack
def test_a_trickling_answer_is_cut_at_the_deadline(receivers: list[RawReceiver]) -> None:
    trickle = RawReceiver(answer=TRICKLED, byte_every_s=TRICKLE_S).start()
    receivers.append(trickle)
    started = time.monotonic()
    attempt = post(trickle.url(), timeout_s=0.5, allow_private=True)
    took = time.monotonic() - started
    assert attempt.error == "timed out" and attempt.status_code is None
    assert 0.5 <= took < 1.2, took  # the whole answer would take 13 s
    assert trickle.wait_all_closed(within_s=0.5)  # the socket went with the attempt


@pytest.mark.stack
@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204, None),
        (b"HTTP/1.0 302\r\nLocation: http://10.0.0.1/\r\n\r\n", 302, None),
        (b"SSH-2.0-OpenSSH_9.6\r\n", None, "invalid response"),
        (b"", None, "invalid response"),
    ],
)
def test_the_status_line_is_what_counts(
    receivers: list[RawReceiver], answer: bytes, status: int | None, error: str | None
) -> None:
    receiver = RawReceiver(answer=answer, hang_up=True).start()
    receivers.append(receiver)
    attempt = post(receiver.url(), allow_private=True)
    assert (attempt.status_code, attempt.error) == (status, error)


@pytest.mark.stack
@pytest.mark.parametrize(
    ("trusted", "name", "ok"),
    [(False, NAME, False), (True, NAME, True), (True, "other.example.com", False)],
)
def test_tls_verifies_the_certificate_and_the_name_on_the_checked_address(
    monkeypatch: pytest.MonkeyPatch,
    receivers: list[RawReceiver],
    tmp_path: Path,
    trusted: bool,
    name: str,
    ok: bool,
) -> None:
    certificate = Certificate((NAME,))
    receiver = RawReceiver(tls=certificate.server(tmp_path)).start()
    receivers.append(receiver)
    fake_dns(monkeypatch, {name: [PUBLIC], PUBLIC: [("127.0.0.1", receiver.port)]})
    if trusted:
        monkeypatch.setattr(send, "_tls_context", certificate.trusting())
    attempt = post(f"https://{name}/h")
    if ok:
        assert attempt == send.Attempt(200, attempt.latency_ms)
    else:
        assert attempt.status_code is None and attempt.error is not None
        assert attempt.error.startswith("TLS failed"), attempt.error


def test_an_unexpected_failure_is_the_attempts_not_a_raise(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(send, "_exchange", broken)
    attempt = send.post(
        "https://hooks.example.com/h",
        "{}",
        {},
        timeout_s=1.0,
        allow_private=False,
        ids={"webhook_endpoint_id": "whe_1"},
    )
    assert attempt.status_code is None and attempt.error == "internal error"
    (record,) = [r for r in caplog.records if r.name == "control_plane.notify"]
    assert getattr(record, "webhook_endpoint_id", None) == "whe_1" and record.exc_info is not None
