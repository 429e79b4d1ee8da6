"""A real HTTP server on 127.0.0.1 that receives webhook deliveries, for the stack tests.

Paths choose the answer: `/ok` 200, `/fail` 500, `/flaky` 500 once then 200, `/slow` 200
after `slow_s` seconds. Every request is kept (path, headers, body) in arrival order.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    slow_s: float = 5.0
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _flaky_seen: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                status = 200
                if self.path.startswith("/fail"):
                    status = 500
                elif self.path.startswith("/flaky") and self.path not in receiver._flaky_seen:
                    receiver._flaky_seen.add(self.path)
                    status = 500
                elif self.path.startswith("/slow"):
                    time.sleep(receiver.slow_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def dead_url() -> str:
    """A URL nothing listens on (a port that was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone"
