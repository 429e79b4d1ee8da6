"""A small object store that hands out presigned-style URLs, standing in for S3 where moto's
server is not needed (handler tests, `hotbatch run-chunk`).

URLs carry an expiry and an HMAC signature over method, key and expiry, so a worker can only do
what the URL was signed for, as with S3 presigned URLs; a bad or expired signature gets 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit


@dataclass
class BlobServer:
    """Objects in memory, served over HTTP on 127.0.0.1 from a background thread."""

    objects: dict[str, bytes] = field(default_factory=dict)
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    requests: list[tuple[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, port: int = 0) -> BlobServer:
        server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="blob-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def presign(self, method: str, key: str, *, expires_in: float = 3600) -> str:
        expires = int(time.time() + expires_in)
        signature = self._sign(method, key, expires)
        return f"{self.base_url}/{quote(key)}?expires={expires}&signature={signature}"

    def put(self, key: str, body: bytes) -> None:
        with self._lock:
            self.objects[key] = body

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self.objects.get(key)

    def _sign(self, method: str, key: str, expires: int) -> str:
        message = f"{method}\n{key}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def check(self, method: str, key: str, query: dict[str, list[str]]) -> str | None:
        """None if the request is authorised, else the reason it is not."""
        try:
            expires = int(query["expires"][0])
            signature = query["signature"][0]
        except (KeyError, ValueError, IndexError):
            return "missing or malformed signature"
        if expires < time.time():
            return "request has expired"
        if not hmac.compare_digest(signature, self._sign(method, key, expires)):
            return "signature does not match"
        return None


def _make_handler(store: BlobServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _authorise(self, method: str) -> str | None:
            parts = urlsplit(self.path)
            key = parts.path.lstrip("/")
            store.requests.append((method, key))
            problem = store.check(method, key, parse_qs(parts.query))
            if problem is not None:
                self._reply(403, f"AccessDenied: {problem}".encode())
                return None
            return key

        def _reply(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            key = self._authorise("GET")
            if key is None:
                return
            body = store.get(key)
            if body is None:
                self._reply(404, b"NoSuchKey")
            else:
                self._reply(200, body)

        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            key = self._authorise("PUT")
            if key is None:
                return
            store.put(key, body)
            self._reply(200)

    return Handler
