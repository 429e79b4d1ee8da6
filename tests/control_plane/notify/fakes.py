"""Stand-ins for the network a webhook send meets: a DNS that answers what a test says (and can
send a checked public address to a local port, so nothing leaves the machine), and a raw TCP
receiver that answers canned bytes, at once or one byte at a time, over TCP or TLS, and counts
the connections a sender has left open."""

from __future__ import annotations

import datetime
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Answer = str | tuple[str, int]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
# A 200 that, a byte every TRICKLE_S, takes 13 s to arrive: each byte comes well within any
# per-read timeout, so only a deadline on the whole exchange cuts it.
TRICKLE_S = 0.1
TRICKLED = b"HTTP/1.1 200 OK\r\nX-Trickle: " + b"." * 100 + b"\r\nContent-Length: 0\r\n\r\n"


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: Mapping[str, Sequence[Answer]]) -> list[str]:
    """getaddrinfo answering `answers[host]` (an address, or an address and the port to use
    instead of the one asked for) and failing for any other host; returns the hosts asked, in
    order. A connection is resolved too (socket.create_connection asks for the address it is
    given), so a test sees every address a send connected to."""
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        found: list[Any] = []
        for answer in answers[host]:
            address, to_port = answer if isinstance(answer, tuple) else (answer, int(port))
            if ":" in address:
                found.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, to_port, 0, 0)))
            else:
                found.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, to_port)))
        return found

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


# Nothing listens on the discard port (the other tests use it so too); binding a free one
# would put a fast test in the `stack` tier.
CLOSED_PORT = 9


@dataclass
class Certificate:
    """A self-signed certificate for `names`: `server` serves it, `trusting()` is a client
    context that trusts it."""

    names: tuple[str, ...]
    pem: bytes = b""
    key_pem: bytes = b""

    def __post_init__(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.names[0])])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in self.names]), False
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256())
        )
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def server(self, tmp_path: Any) -> ssl.SSLContext:
        cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert_file.write_bytes(self.pem)
        key_file.write_bytes(self.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context

    def trusting(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.pem.decode())


@dataclass
class RawReceiver:
    """A server (tests using one are `@pytest.mark.stack`) that answers every connection
    `answer` once some of the request has arrived: all at once (then hangs up if `hang_up`),
    or one byte every `byte_every_s` seconds (a trickle) until the sender hangs up."""

    answer: bytes = OK
    byte_every_s: float | None = None
    tls: ssl.SSLContext | None = None
    hang_up: bool = False
    accepted: int = 0
    open_connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _listener: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self._listener is not None
        port: int = self._listener.getsockname()[1]
        return port

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> RawReceiver:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()

    def wait_all_closed(self, within_s: float) -> bool:
        """Whether every connection the sender opened is closed (by it) within `within_s`."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.open_connections == 0:
                    return True
            time.sleep(0.02)
        return False

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.open_connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(5)
            conn.recv(65536)  # some of the request: enough to know a sender is there
            if self.byte_every_s is None:
                conn.sendall(self.answer)
                if not self.hang_up:
                    self._wait_hang_up(conn, 5.0)
                return
            for byte in self.answer:
                conn.sendall(bytes([byte]))
                if self._wait_hang_up(conn, self.byte_every_s):
                    return
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.open_connections -= 1

    def _wait_hang_up(self, conn: socket.socket, seconds: float) -> bool:
        """Whether the sender closed the connection within `seconds` (or the receiver
        stopped)."""
        readable, _, _ = select.select([conn], [], [], seconds)
        if self._stop.is_set():
            return True
        if not readable:
            return False
        try:
            return conn.recv(65536) == b""
        except (OSError, ssl.SSLError):
            return True
