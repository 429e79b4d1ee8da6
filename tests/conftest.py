"""Shared fixtures (the tiny model, the real vLLM engine, the presigned-URL blob store, the
parsed template.yaml) and the guard that keeps the fast tier fast: a test not marked `stack`,
`engine` or `e2e` that starts a process or listens on a port fails, naming the marker it
needs."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra import aws_resources, moto_speed
from infra.blob_server import BlobServer
from infra.local_control_plane import serialize_dynamodb
from infra.tiny_model import EMBED_KV_CACHE_BYTES as TINY_EMBED_KV_CACHE_BYTES
from infra.tiny_model import KV_CACHE_BYTES
from tests.support.tiny import TINY_EMBED_MODEL_NAME, TINY_MAX_MODEL_LEN, TINY_MODEL_NAME

# An explicit KV cache for every worker the tests start (they inherit it): without one, vLLM's CPU
# build sizes it from GPU_MEMORY_UTILIZATION of the node's memory and refuses to start unless that
# much is free, which depends on the machine's page cache, not on the model.
os.environ.setdefault("KV_CACHE_MEMORY_BYTES", KV_CACHE_BYTES)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

# moto as the local stack runs it: queries by partition, journaled transactions (and the same
# answers), one DynamoDB request at a time (the dispatcher sends from several threads); the
# stack's own process applies the same patches.
moto_speed.enable()
serialize_dynamodb()

# Tiers whose tests may start servers and processes; every other test is the fast tier.
STARTING_MARKERS = ("stack", "engine", "e2e")
# Fixtures that start a server: a test using one is in the `stack` tier without saying so.
SERVER_FIXTURES = ("blobs",)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from infra.tiny_model import generate

    return generate(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def engine_runtime(tiny_model: Path) -> Iterator[object]:
    """One real vLLM engine (CPU build) for the whole session, behind the worker runtime."""
    from handler.runtime import start_runtime
    from handler.settings import WorkerSettings

    settings = WorkerSettings(
        model_name=str(tiny_model),
        openai_served_model_name_override=TINY_MODEL_NAME,
        max_model_len=TINY_MAX_MODEL_LEN,
        max_num_seqs=256,
        kv_cache_memory_bytes=KV_CACHE_BYTES,
    )
    runtime = start_runtime(settings)
    yield runtime
    runtime.stop()


@pytest.fixture(scope="session")
def embed_runtime(tiny_model: Path) -> Iterator[object]:
    """The same tiny model under vLLM's pooling runner (`RUNNER=pooling`), serving embeddings.
    Embeddings keep no KV cache past their prefill, so a small one does."""
    from handler.runtime import start_runtime
    from handler.settings import WorkerSettings

    settings = WorkerSettings(
        model_name=str(tiny_model),
        openai_served_model_name_override=TINY_EMBED_MODEL_NAME,
        max_model_len=TINY_MAX_MODEL_LEN,
        max_num_seqs=64,
        kv_cache_memory_bytes=TINY_EMBED_KV_CACHE_BYTES,
        runner="pooling",
    )
    runtime = start_runtime(settings)
    yield runtime
    runtime.stop()


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    """template.yaml, parsed once a session: PyYAML's pure-Python parser takes ~0.2 s."""
    return aws_resources.load_template()


@pytest.fixture()
def blobs() -> Iterator[BlobServer]:
    server = BlobServer().start()
    yield server
    server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in SERVER_FIXTURES):
            item.add_marker(pytest.mark.stack)


# --- the guard -------------------------------------------------------------------------------


class _Guard:
    """Which fast-tier test is running (None: a marked test, or none), and what it tried to
    start from another thread."""

    def __init__(self) -> None:
        self.test: str | None = None
        self.in_threads: list[str] = []
        self._lock = threading.Lock()

    def refuse(self, what: str) -> None:
        test = self.test
        if test is None:
            return
        message = (
            f"{test} {what}, but it is not marked: mark it `@pytest.mark.stack` (or `engine` / "
            "`e2e` if it runs vLLM), so that the fast tier "
            '(-m "not engine and not e2e and not stack") starts nothing'
        )
        if threading.current_thread() is not threading.main_thread():
            with self._lock:
                self.in_threads.append(message)
        pytest.fail(message, pytrace=False)


_guard = _Guard()


def _guarded(original: Callable[..., Any], what: str) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _guard.refuse(what)
        return original(*args, **kwargs)

    return guarded


def _guarded_bind(original: Callable[..., Any]) -> Callable[..., Any]:
    def bind(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _guard.refuse(f"binds a port ({address!r})")
        return original(sock, address)

    return bind


def pytest_configure(config: pytest.Config) -> None:
    # The openai SDK's platform headers ask `uname -p` once per process; asked here, before the
    # guard is on, so that whichever fast test makes the first SDK call is not blamed for it.
    platform.platform()
    platform.processor()
    # Patched once for the session, not per test: module- and session-scoped fixtures start
    # their servers before any function-scoped fixture could patch anything.
    subprocess.Popen._execute_child = _guarded(  # type: ignore[attr-defined]
        subprocess.Popen._execute_child,  # type: ignore[attr-defined]
        "starts a subprocess",
    )
    os.fork = _guarded(os.fork, "forks a process")
    socket.socket.bind = _guarded_bind(socket.socket.bind)  # type: ignore[method-assign]
    socket.socket.listen = _guarded(  # type: ignore[method-assign]
        socket.socket.listen, "listens on a socket"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    marked = any(item.get_closest_marker(name) for name in STARTING_MARKERS)
    _guard.test, _guard.in_threads = (None if marked else item.nodeid), []
    try:
        return (yield)
    finally:
        _guard.test = None


@pytest.fixture(autouse=True)
def _starts_nothing_unmarked() -> Iterator[None]:
    """Fails a test whose server or process was refused in another thread, where the refusal
    itself could not fail it."""
    yield
    if _guard.in_threads:
        pytest.fail(_guard.in_threads[0], pytrace=False)
