"""Environment → `vllm serve` argv mapping (worker-vllm's variable names)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from handler.settings import WorkerSettings


def test_defaults_enable_prefix_caching_and_prompt_token_details(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_NAME", "/models/m")
    argv = WorkerSettings().serve_argv()
    assert argv[:2] == ["--model", "/models/m"]
    assert "--enable-prefix-caching" in argv
    assert "--enable-prompt-tokens-details" in argv
    assert "--max-model-len" not in argv
    assert not any("chunked-prefill" in flag for flag in argv)  # vLLM decides


def test_worker_vllm_variables_map_to_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "MODEL_NAME": "org/model",
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "served",
        "MAX_MODEL_LEN": "4096",
        "GPU_MEMORY_UTILIZATION": "0.8",
        "ENABLE_PREFIX_CACHING": "false",
        "QUANTIZATION": "awq",
        "TENSOR_PARALLEL_SIZE": "2",
        "DTYPE": "half",
        "MAX_NUM_SEQS": "128",
        "ENFORCE_EAGER": "1",
        "ENABLE_CHUNKED_PREFILL": "true",
        "VLLM_EXTRA_ARGS": "--max-loras 2 --disable-log-requests",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = WorkerSettings()
    argv = settings.serve_argv()
    pairs = dict(zip(argv, argv[1:], strict=False))
    assert pairs["--served-model-name"] == "served" and settings.served_model_name == "served"
    assert pairs["--max-model-len"] == "4096"
    assert pairs["--gpu-memory-utilization"] == "0.8"
    assert pairs["--quantization"] == "awq"
    assert pairs["--tensor-parallel-size"] == "2"
    assert pairs["--dtype"] == "half"
    assert pairs["--max-num-seqs"] == "128"
    assert "--no-enable-prefix-caching" in argv and "--enforce-eager" in argv
    assert "--enable-chunked-prefill" in argv
    assert argv[-3:] == ["--max-loras", "2", "--disable-log-requests"]


def test_zero_max_model_len_means_the_models_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_MODEL_LEN", "0")
    assert WorkerSettings().max_model_len is None


def test_worker_id_comes_from_runpod_pod_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_POD_ID", "pod-123")
    assert WorkerSettings().worker_id == "pod-123"


def test_kv_cache_memory_bytes_maps_to_an_explicit_kv_cache_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KV_CACHE_MEMORY_BYTES", "256M")
    monkeypatch.setenv("GPU_MEMORY_UTILIZATION", "0.99")
    argv = WorkerSettings().serve_argv()
    pairs = dict(zip(argv, argv[1:], strict=False))
    assert pairs["--kv-cache-memory-bytes"] == "256M"
    assert pairs["--gpu-memory-utilization"] == "0.99"


def test_without_kv_cache_memory_bytes_vllm_sizes_the_cache_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KV_CACHE_MEMORY_BYTES", raising=False)  # tests/conftest.py sets it
    assert "--kv-cache-memory-bytes" not in WorkerSettings().serve_argv()
    monkeypatch.setenv("KV_CACHE_MEMORY_BYTES", "0")  # worker-vllm's "unset", as MAX_MODEL_LEN
    assert WorkerSettings().kv_cache_memory_bytes is None


@pytest.mark.parametrize("value", ["268435456", "256M", "1.5G", "2g"])
def test_kv_cache_memory_bytes_takes_bytes_or_vllms_units(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("KV_CACHE_MEMORY_BYTES", value)
    assert WorkerSettings().kv_cache_memory_bytes == value


@pytest.mark.parametrize("value", ["256MB", "-1", "lots", "1 G"])
def test_a_kv_cache_size_vllm_would_not_parse_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("KV_CACHE_MEMORY_BYTES", value)
    with pytest.raises(ValidationError, match="kv_cache_memory_bytes"):
        WorkerSettings()
