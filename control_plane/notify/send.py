"""POST one signed event to a tenant's URL, with strict timeouts, and say what happened.

urllib3 (already in the Lambda through botocore), no redirects followed (a 3xx is a failure, as
OpenAI counts it) and no retries here: the tick's backoff owns retrying. A tenant's URL is
checked before anything is sent to it: HTTPS, and a host that is not, and does not resolve to,
a loopback, private, link-local or otherwise internal address (the Lambda's own runtime API
listens on 127.0.0.1) unless `HOTBATCH_EVENT_WEBHOOK_PRIVATE_URLS` allows it (the local stack).
The connection goes to the very address that was checked (TLS still verifies the name): a name
that resolves to a public address for the check and to an internal one a moment later (DNS
rebinding) cannot redirect the POST.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3

from control_plane.notify.models import PUBLIC_URL_PATTERN

USER_AGENT = "hotbatch-webhooks/1"
RESPONSE_READ_MAX = 1024

_PUBLIC_URL = re.compile(PUBLIC_URL_PATTERN)
_http = urllib3.PoolManager(num_pools=32, maxsize=4, retries=False)


class UnsafeUrl(ValueError):
    """The URL may not receive events (scheme, or a host inside the network)."""


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


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL if events may go there; `UnsafeUrl` with the reason otherwise. The host is not
    resolved here (DNS may change): `post` resolves it again before every send."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise UnsafeUrl("the URL must be https")
    if not parts.hostname:
        raise UnsafeUrl("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeUrl("the URL may not carry credentials")
    if not allow_private:
        if parts.hostname == "localhost" or parts.hostname.endswith(".localhost"):
            raise UnsafeUrl("the URL's host is this machine")
        try:
            address = ipaddress.ip_address(parts.hostname)
        except ValueError:
            address = None
        if address is not None and not address.is_global:
            raise UnsafeUrl(f"the URL's host {address} is not a public address")
        if not _PUBLIC_URL.fullmatch(url):
            # Names only (checked when resolved), so a public address literal ends here too.
            raise UnsafeUrl("the URL must be https://a.dns.name[:port][/path], in printable ASCII")
    return url


def _public_address(host: str, port: int) -> str:
    """The address to connect to: the host's first, once every address it resolves to is
    public (one internal answer refuses the name)."""
    addresses = [
        ipaddress.ip_address(sockaddr[0])
        for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    ]
    for address in addresses:
        if not address.is_global:
            raise UnsafeUrl(f"{host} resolves to {address}, not a public address")
    if not addresses:
        raise UnsafeUrl(f"{host} does not resolve")
    return str(addresses[0])


def _request(
    url: str, body: bytes, headers: dict[str, str], *, timeout_s: float, allow_private: bool
) -> urllib3.BaseHTTPResponse:
    timeout = urllib3.Timeout(total=timeout_s)
    if allow_private:
        return _http.request(
            "POST",
            url,
            body=body,
            headers=headers,
            timeout=timeout,
            redirect=False,
            preload_content=False,
        )
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    # A pool for this one send, on the checked address; SNI, the certificate check and the
    # Host header keep the name.
    pool = urllib3.HTTPSConnectionPool(
        _public_address(host, port),
        port,
        server_hostname=host,
        assert_hostname=host,
        retries=False,
        maxsize=1,
    )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = host if parts.port is None else f"{host}:{port}"
    try:
        return pool.urlopen(
            "POST",
            path,
            body=body,
            headers={**headers, "Host": netloc},
            timeout=timeout,
            redirect=False,
            preload_content=False,
        )
    finally:
        pool.close()


def post(
    url: str, payload: str, headers: dict[str, str], *, timeout_s: float, allow_private: bool
) -> Attempt:
    """Send once; never raises for the endpoint's failures (they are the Attempt's)."""
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        check_url(url, allow_private=allow_private)
        reply = _request(
            url,
            payload.encode(),
            {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
            timeout_s=timeout_s,
            allow_private=allow_private,
        )
    except UnsafeUrl as exc:
        return Attempt(status_code=None, latency_ms=took(), error=f"refused: {exc}")
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return Attempt(status_code=None, latency_ms=took(), error=_reason(exc))
    try:
        reply.read(RESPONSE_READ_MAX)  # the status is what counts; a long body is not read
    except (urllib3.exceptions.HTTPError, OSError):
        pass
    finally:
        # Closed rather than drained: an endpoint answering a long (or endless) body must not
        # hold the sender; the pool opens a new connection next time.
        reply.close()
        reply.release_conn()
    return Attempt(status_code=reply.status, latency_ms=took())


def _reason(exc: Exception) -> str:
    # NewConnectionError is a ConnectTimeoutError in urllib3's hierarchy: test it first.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "connection failed: " + str(exc).rsplit("new connection: ", 1)[-1]
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(exc.reason, Exception):
        return _reason(exc.reason)
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")
