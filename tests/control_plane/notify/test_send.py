"""One event POST: the host is resolved once, every address must be public, and the connection
goes to the address that was checked (a DNS answer that changes between the check and the
connection cannot point the POST inside the network)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from control_plane.notify import send

NAME = "hooks.example.com"


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """getaddrinfo answering `answers[host]` (IPv4), and the hosts asked, in order."""
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))
            for address in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def post(url: str) -> send.Attempt:
    return send.post(url, "{}", {}, timeout_s=2.0, allow_private=False)


def test_the_connection_goes_to_the_checked_address_without_resolving_the_name_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Were the name resolved again to connect, it would now answer 127.0.0.1 (rebinding).
    # The checked address itself is routed to a closed local port, so the test stays offline.
    asked = fake_dns(monkeypatch, {NAME: ["1.1.1.1"], "1.1.1.1": ["127.0.0.1"]})
    attempt = post(f"https://{NAME}:9/events?x=1")
    assert asked == [NAME, "1.1.1.1"], asked  # the name once (the check), then the address
    assert attempt.status_code is None and attempt.error is not None
    assert attempt.error.startswith("connection failed"), attempt.error


@pytest.mark.parametrize(
    "addresses", [["10.0.0.5"], ["1.1.1.1", "127.0.0.1"], ["169.254.169.254"], []]
)
def test_a_name_with_any_internal_address_or_none_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    asked = fake_dns(monkeypatch, {NAME: addresses})
    attempt = post(f"https://{NAME}/events")
    assert asked == [NAME]  # nothing connected
    assert attempt.status_code is None and attempt.error is not None
    assert attempt.error.startswith("refused: "), attempt.error
