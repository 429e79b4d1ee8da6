"""Environment → `vllm serve` argv mapping (worker-vllm's variable names)."""

from __future__ import annotations

import pytest

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
