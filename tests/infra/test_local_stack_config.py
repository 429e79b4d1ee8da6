"""What `hotbatch local up` / `local run` hand their workers, without starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra import cli, local_stack, tiny_model
from infra.local_stack import LocalOptions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KV_CACHE_MEMORY_BYTES", "MAX_MODEL_LEN", "VLLM_LOGGING_STREAM"):
        monkeypatch.delenv(name, raising=False)


def test_the_tiny_model_workers_get_an_explicit_kv_cache(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tiny_model, "generate", lambda directory: directory)
    env = local_stack._worker_env(LocalOptions(workdir=tmp_path))
    assert env["KV_CACHE_MEMORY_BYTES"] == tiny_model.KV_CACHE_BYTES == "256M"
    assert env["MAX_MODEL_LEN"] == "512"
    assert env["MODEL_NAME"] == str((tmp_path / "tiny-model").resolve())
    assert env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == "tiny"


def test_a_model_of_your_own_gets_an_explicit_kv_cache_too(clean_env: None) -> None:
    env = local_stack._worker_env(LocalOptions(model="/models/m", served_model_name="m"))
    assert env["KV_CACHE_MEMORY_BYTES"] == local_stack.MODEL_KV_CACHE
    assert "MAX_MODEL_LEN" not in env  # the model's own
    assert (env["MODEL_NAME"], env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"]) == ("/models/m", "m")


def test_the_shells_kv_cache_size_wins(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KV_CACHE_MEMORY_BYTES", "1G")
    env = local_stack._worker_env(LocalOptions(model="/models/m"))
    assert "KV_CACHE_MEMORY_BYTES" not in env  # the workers inherit the shell's value


def test_start_attempts_default_to_one_and_ready_timeout_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flags reach `local up` through the CLI (typer), defaults included."""
    seen: list[LocalOptions] = []

    def up(options: LocalOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(local_stack, "up", up)
    monkeypatch.setattr("handler.logs.configure", lambda *args, **kwargs: None)
    assert cli.main(["local", "up"]) == 0
    assert cli.main(["local", "up", "--start-attempts", "3"]) == 0
    defaults: Any = seen[0]
    assert defaults.start_attempts == 1 and defaults.ready_timeout == 900.0
    assert seen[1].start_attempts == 3


def test_the_tiny_stack_serves_a_chat_and_an_embedding_model_on_two_endpoints(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tiny_model, "generate", lambda directory: directory)
    stack, chat_env = local_stack.planned(LocalOptions(workdir=tmp_path, workers=2))
    config = stack.config
    assert (config.chat_model, config.embed_model) == ("tiny", "tiny-embed")
    assert config.embed_pool is not None and config.embed_pool.min_workers == 1
    assert config.embed_pool.max_workers == 1
    assert config.embed_pool.id_prefix != config.pool.id_prefix  # one workdir, distinct ids
    embed_env = config.embed_pool.env
    assert embed_env["RUNNER"] == "pooling" and "RUNNER" not in chat_env
    assert embed_env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == "tiny-embed"
    assert embed_env["MODEL_NAME"] == chat_env["MODEL_NAME"]  # the same generated weights
    assert embed_env["KV_CACHE_MEMORY_BYTES"] == tiny_model.EMBED_KV_CACHE_BYTES
    assert chat_env["KV_CACHE_MEMORY_BYTES"] == tiny_model.KV_CACHE_BYTES


def test_a_model_of_your_own_runs_on_one_endpoint_without_a_model_map(clean_env: None) -> None:
    stack, _ = local_stack.planned(LocalOptions(model="/models/m", served_model_name="m"))
    assert stack.config.embed_pool is None and stack.config.embed_model is None
    assert stack._models() == {}


@pytest.mark.stack
def test_leave_ends_the_process_even_if_a_thread_that_is_no_daemon_never_ends() -> None:
    # What made a SIGTERM'd `local up` outlive its 120 s in CI once: the interpreter waits for
    # every thread that is not a daemon, and the stop had left one.
    held = (
        "import threading, infra.local_stack as ls;"
        "threading.Thread(target=threading.Event().wait, name='held').start();"
        "ls.leave(3)"
    )
    ended = subprocess.run(
        [sys.executable, "-c", held], cwd=REPO, timeout=60, capture_output=True, text=True
    )
    assert ended.returncode == 3
    assert "exiting without waiting for 1 threads" in ended.stderr


def test_the_local_api_keeps_an_idle_connection_longer_than_its_clients_do() -> None:
    """The openai SDK (and the CLI, on the same httpx) closes a connection idle 5 s; a server
    that closes first races the client's next request on it (a reset, seen in CI)."""
    from openai._constants import DEFAULT_CONNECTION_LIMITS

    from infra.local_control_plane import KEEP_ALIVE_S

    expiry = DEFAULT_CONNECTION_LIMITS.keepalive_expiry
    assert expiry is not None and KEEP_ALIVE_S > expiry * 2
