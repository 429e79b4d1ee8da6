"""What `hotbatch local up` / `local run` hand their workers, without starting anything."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from infra import local_stack, tiny_model


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    local_stack.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KV_CACHE_MEMORY_BYTES", "MAX_MODEL_LEN", "VLLM_LOGGING_STREAM"):
        monkeypatch.delenv(name, raising=False)


def test_the_tiny_model_workers_get_an_explicit_kv_cache(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tiny_model, "generate", lambda directory: directory)
    env = local_stack._worker_env(parsed("--workdir", str(tmp_path)))
    assert env["KV_CACHE_MEMORY_BYTES"] == tiny_model.KV_CACHE_BYTES == "256M"
    assert env["MAX_MODEL_LEN"] == "512"
    assert env["MODEL_NAME"] == str((tmp_path / "tiny-model").resolve())
    assert env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == "tiny"


def test_a_model_of_your_own_gets_an_explicit_kv_cache_too(clean_env: None) -> None:
    env = local_stack._worker_env(parsed("--model", "/models/m", "--served-model-name", "m"))
    assert env["KV_CACHE_MEMORY_BYTES"] == local_stack.MODEL_KV_CACHE
    assert "MAX_MODEL_LEN" not in env  # the model's own
    assert (env["MODEL_NAME"], env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"]) == ("/models/m", "m")


def test_the_shells_kv_cache_size_wins(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KV_CACHE_MEMORY_BYTES", "1G")
    env = local_stack._worker_env(parsed("--model", "/models/m"))
    assert "KV_CACHE_MEMORY_BYTES" not in env  # the workers inherit the shell's value


def test_start_attempts_default_to_one_and_ready_timeout_stays() -> None:
    args = parsed()
    assert args.start_attempts == 1 and args.ready_timeout == 900.0
    assert parsed("--start-attempts", "3").start_attempts == 3
