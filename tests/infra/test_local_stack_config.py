"""What `hotbatch local up` / `local run` hand their workers, without starting anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra import cli, local_stack, tiny_model
from infra.local_stack import LocalOptions


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
