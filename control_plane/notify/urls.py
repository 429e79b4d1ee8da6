"""Where events may go: a tenant's URL, parsed strictly and held to the rules when the endpoint
is created or updated and again before every send (an item stored under older rules is checked
under today's), and the addresses its host may resolve to.

Without `HOTBATCH_EVENT_WEBHOOK_PRIVATE_URLS` (the local stack sets it): https on port 443, a
DNS name (no address literal, no `*.localhost`), and every address the name resolves to public.
"Public" unwraps the IPv4 address that NAT64, 6to4, Teredo, IPv4-mapped and IPv4-compatible
IPv6 addresses carry (`ipaddress.is_global` is True for most of those wrappers whatever they
wrap, so 64:ff9b::a9fe:a9fe reaches 169.254.169.254 through a NAT64 gateway) and refuses
multicast, reserved and site-local ranges outright.

The reasons in `UnsafeUrl` are shown to the tenant: they describe the URL as given, never what
its host resolved to (that would be an oracle for names and addresses inside the network).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from control_plane.notify.models import PUBLIC_URL_PATTERN

# An allow-list of one: a receiver on another port is nearly always an internal service.
PUBLIC_PORTS = frozenset({443})
DEFAULT_PORTS = {"https": 443, "http": 80}
NOT_PUBLIC = "the host does not resolve to a public address"

_PUBLIC_URL = re.compile(PUBLIC_URL_PATTERN)
# Everything printable but the space stays as it is in the request line; the rest is escaped.
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: this network's own mapping
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class UnsafeUrl(ValueError):
    """The URL may not receive events; the message (shown to the tenant) says why. `detail`,
    for the logs only, may name what the host resolved to."""

    def __init__(self, reason: str, *, detail: str | None = None) -> None:
        super().__init__(reason)
        self.detail = detail


@dataclass(frozen=True)
class Target:
    """A checked URL, as the request needs it."""

    scheme: str
    host: str  # ASCII, lower case, an IPv6 literal without brackets
    port: int
    request_target: str  # path and query, printable ASCII

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL if events may go there; `UnsafeUrl` with the reason otherwise. The host is not
    resolved here (DNS may change): `public_addresses` resolves it before every send."""
    parse(url, allow_private=allow_private)
    return url


def parse(url: str, *, allow_private: bool) -> Target:
    """The URL's parts once it passes the rules; `UnsafeUrl` otherwise."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise UnsafeUrl("the URL cannot be parsed") from exc
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise UnsafeUrl("the URL must be https")
    try:
        port = parts.port  # reading it is what checks it: urlsplit itself does not
    except ValueError as exc:
        raise UnsafeUrl("the URL's port must be a number from 1 to 65535") from exc
    if port == 0:
        raise UnsafeUrl("the URL's port must be a number from 1 to 65535")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL may not carry credentials")
    if not parts.hostname:
        raise UnsafeUrl("the URL has no host")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UnsafeUrl("the URL's host is not a valid name") from exc
    if not allow_private:
        _check_public_form(url, host, port)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(
        scheme=parts.scheme,
        host=host,
        port=port or DEFAULT_PORTS[parts.scheme],
        request_target=quote(target, safe=_PRINTABLE),
    )


def _check_public_form(url: str, host: str, port: int | None) -> None:
    if host == "localhost" or host.endswith(".localhost"):
        raise UnsafeUrl("the URL's host is this machine")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and not is_public(address):
        raise UnsafeUrl(f"the URL's host {address} is not a public address")
    if port is not None and port not in PUBLIC_PORTS:
        raise UnsafeUrl(f"the URL's port must be {' or '.join(map(str, sorted(PUBLIC_PORTS)))}")
    if not _PUBLIC_URL.fullmatch(url):
        # Names only (checked when resolved), so a public address literal ends here too.
        raise UnsafeUrl("the URL must be https://a.dns.name[:443][/path], in printable ASCII")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 addresses an IPv6 address leads to (Teredo: its server and its client), or
    None when it is not one of the forms that carry one."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return None


def is_public(address: IpAddress) -> bool:
    """Whether a send may connect to `address`: a global unicast address, and for an IPv6 form
    that carries an IPv4 address, every address it carries."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return False
        carried = embedded_ipv4(address)
        if carried is not None:
            return all(is_public(inner) for inner in carried)
        if address.is_site_local:
            return False
    return address.is_global and not address.is_multicast and not address.is_reserved


def public_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, once all of them are public (one internal answer
    refuses the name). A name that does not resolve is refused with the same words as one
    that resolves inside, so the answer tells a tenant nothing about internal DNS."""
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeUrl(NOT_PUBLIC, detail=f"{host} does not resolve: {exc}") from exc
    addresses = [str(sockaddr[0]) for *_, sockaddr in answers]
    if not addresses:
        raise UnsafeUrl(NOT_PUBLIC, detail=f"{host} resolves to nothing")
    for address in addresses:
        try:
            public = is_public(ipaddress.ip_address(address))
        except ValueError:
            public = False
        if not public:
            raise UnsafeUrl(NOT_PUBLIC, detail=f"{host} resolves to {address}")
    return list(dict.fromkeys(addresses))
