"""POST one signed event to a tenant's URL within a wall-clock deadline, and say what happened.

The URL is checked again before every send (`urls.parse`), then, unless the deployment allows
private URLs (the local stack), the host is resolved once, every address must be public, and
the connection goes to the very address that was checked (TLS still verifies the name): a name
that resolves to a public address for the check and to an internal one a moment later (DNS
rebinding) cannot redirect the POST.

HTTP/1.1 by hand on a socket, because the deadline must bound the whole exchange: a library
timeout bounds each socket operation, so a receiver that trickles its answer a byte a second
holds the sender as long as it likes. Here connect, the TLS handshake, every send and every
read get what is left of one deadline, and the exchange ends at the status line: the status is
what counts (no redirects followed, a 3xx is a failure as OpenAI counts it), the rest is not
read. No retries here: the tick's backoff owns retrying. Resolving the name is the one step
the deadline does not bound (getaddrinfo takes no timeout; the resolver's own bounds it).

What goes wrong is the Attempt's, in words that name no address (the tenant reads them through
`/test`); the detail is logged with the ids. `post` never raises.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

from control_plane.notify import urls
from control_plane.notify.urls import UnsafeUrl

log = logging.getLogger("control_plane.notify")

USER_AGENT = "hotbatch-webhooks/1"
HEAD_MAX = 16 * 1024  # the status line and any 1xx heads before it
_STATUS_LINE = re.compile(rb"HTTP/\d\.\d ([1-9]\d\d)(?: |$)")
# One context for every send: the system's CA store, hostname checking, TLS 1.2 at least.
_tls_context = ssl.create_default_context()


class BadResponse(Exception):
    """The endpoint answered something that is not an HTTP status line."""


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt: the endpoint's status (None: no answer), how long it took, and
    what went wrong when nothing was answered."""

    status_code: int | None
    latency_ms: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(
    url: str,
    payload: str,
    headers: dict[str, str],
    *,
    timeout_s: float,
    allow_private: bool,
    ids: Mapping[str, str] | None = None,
) -> Attempt:
    """Send once, done within `timeout_s` of the call (name resolution aside); never raises:
    what went wrong is the Attempt's. `ids` go into the log line of a failure."""
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        status = _exchange(
            urls.parse(url, allow_private=allow_private),
            payload.encode(),
            {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
            deadline=deadline,
            allow_private=allow_private,
        )
    except Exception as exc:  # every failure is the attempt's, logged by _failure
        return _failure(exc, took_ms=_ms_since(started), ids=ids or {})
    return Attempt(status_code=status, latency_ms=_ms_since(started))


def _failure(exc: Exception, *, took_ms: int, ids: Mapping[str, str]) -> Attempt:
    """The attempt for `exc`, worded for the tenant, and one log line with the detail."""
    if isinstance(exc, UnsafeUrl):
        error, detail = f"refused: {exc}", exc.detail or str(exc)
    elif isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        error, detail = "timed out", str(exc)
    elif isinstance(exc, ssl.SSLError):
        error, detail = "TLS failed" + (f": {exc.reason}" if exc.reason else ""), str(exc)
    elif isinstance(exc, BadResponse):
        error, detail = "invalid response", str(exc)
    elif isinstance(exc, OSError):
        error, detail = "connection failed", repr(exc)
    else:
        # A bug here must cost one attempt (retried later), never the tick's round.
        log.exception("webhook send failed unexpectedly", extra={**ids})
        return Attempt(status_code=None, latency_ms=took_ms, error="internal error")
    log.info("webhook send failed", extra={**ids, "error": error, "detail": detail})
    return Attempt(status_code=None, latency_ms=took_ms, error=error)


def _exchange(
    target: urls.Target,
    body: bytes,
    headers: dict[str, str],
    *,
    deadline: float,
    allow_private: bool,
) -> int:
    """The status the endpoint answers the POST with."""
    if allow_private:
        addresses = [target.host]
    else:
        addresses = urls.public_addresses(target.host, target.port)
    sock = _connect(addresses, target.port, deadline)
    try:
        if target.tls:
            sock.settimeout(_left(deadline))  # CPython bounds the whole handshake by it
            sock = _tls_context.wrap_socket(sock, server_hostname=target.host)
        _send(sock, _head(target, headers, len(body)) + body, deadline)
        return _read_status(sock, deadline)
    finally:
        sock.close()


def _connect(addresses: list[str], port: int, deadline: float) -> socket.socket:
    """A connection to the first address that takes one (all of them are checked)."""
    error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=_left(deadline))
        except TimeoutError:
            raise
        except OSError as exc:
            error = exc
    raise error or OSError("no address to connect to")


def _head(target: urls.Target, headers: dict[str, str], length: int) -> bytes:
    fields = {
        "Host": target.host_header,
        **headers,
        "Content-Length": str(length),
        "Connection": "close",
    }
    lines = [f"POST {target.request_target} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
    if any("\r" in line or "\n" in line for line in lines):
        raise ValueError("a header holds a line break")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
    # Not sendall: on a TLS socket each underlying send gets the whole timeout again.
    view = memoryview(data)
    while view:
        sock.settimeout(_left(deadline))
        view = view[sock.send(view) :]


def _read_status(sock: socket.socket, deadline: float) -> int:
    """The status of the first final answer (1xx heads skipped), read no further than its
    status line."""
    buffer = b""
    while True:
        line_end = buffer.find(b"\r\n")
        if line_end >= 0:
            match = _STATUS_LINE.match(buffer[:line_end])
            if match is None:
                raise BadResponse(f"not an HTTP status line: {buffer[:line_end][:80]!r}")
            status = int(match.group(1))
            head_end = buffer.find(b"\r\n\r\n")
            if status >= 200:
                return status
            if head_end >= 0:  # an interim answer (100 Continue, 103 Early Hints): skip it
                buffer = buffer[head_end + 4 :]
                continue
        if len(buffer) > HEAD_MAX:
            raise BadResponse("the answer's head is too long")
        sock.settimeout(_left(deadline))
        chunk = sock.recv(4096)
        if not chunk:
            raise BadResponse("the connection closed before a status")
        buffer += chunk


def _left(deadline: float) -> float:
    """The seconds left before `deadline`; TimeoutError once there are none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the send's deadline passed")
    return left


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
