"""The fast tier starts nothing: tests/conftest.py refuses a process or a listening socket to
any test not marked `stack`, `engine` or `e2e`, and says which marker it needs."""

from __future__ import annotations

import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

REFUSED = r"not marked: mark it `@pytest\.mark\.stack`"


def test_an_unmarked_test_cannot_start_a_process() -> None:
    with pytest.raises(pytest.fail.Exception, match="starts a subprocess.*" + REFUSED):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_an_unmarked_test_cannot_serve_on_a_port() -> None:
    with pytest.raises(pytest.fail.Exception, match="binds a port.*" + REFUSED):
        ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    with socket.socket() as unbound, pytest.raises(pytest.fail.Exception, match=REFUSED):
        unbound.listen()  # Linux would bind it to a free port


@pytest.mark.stack
def test_a_stack_test_may_serve_and_start_processes() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.server_close()
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
