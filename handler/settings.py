"""Worker settings, read once from the environment.

Engine variables keep RunPod worker-vllm's names so an endpoint configured for worker-vllm
works unchanged. `engine_kwargs` is the one place that maps them onto vLLM engine arguments
(worker-vllm's `args_builder.py` plays the same role).
"""

from __future__ import annotations

import os
import shlex
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# What vLLM's `--kv-cache-memory-bytes` parser accepts (vllm/utils/argparse_utils.py
# human_readable_int): a byte count, or a number with k/m/g/t (decimal) or K/M/G/T (binary).
KV_CACHE_SIZE = r"^\d+(\.\d+)?[kKmMgGtT]?$"

# The one allowed media domain when none is set: `.invalid` never resolves (RFC 2606), and
# vLLM's per-line refusal names it, which tells the sender why.
NO_MEDIA_DOMAIN = "no-media-urls.invalid"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", case_sensitive=False)

    # --- engine (worker-vllm names) ---
    model_name: str = Field(
        default="facebook/opt-125m",
        description="MODEL_NAME: model id or local path (bake weights into the image).",
    )
    tokenizer_name: str | None = Field(default=None, description="TOKENIZER_NAME")
    model_revision: str | None = Field(default=None, description="MODEL_REVISION")
    openai_served_model_name_override: str | None = Field(
        default=None,
        description="OPENAI_SERVED_MODEL_NAME_OVERRIDE: the `model` clients must send.",
    )
    max_model_len: int | None = Field(default=None, description="MAX_MODEL_LEN")
    gpu_memory_utilization: float = Field(
        default=0.90,
        gt=0,
        le=1,
        description=(
            "GPU_MEMORY_UTILIZATION: share of GPU memory for vLLM. On the CPU build, the share "
            "of the node's memory it reserves and checks is free at start, unless "
            "KV_CACHE_MEMORY_BYTES is set."
        ),
    )
    kv_cache_memory_bytes: str | None = Field(
        default=None,
        pattern=KV_CACHE_SIZE,
        description=(
            "KV_CACHE_MEMORY_BYTES: an explicit KV-cache size (`--kv-cache-memory-bytes`; bytes "
            "or vLLM's units, e.g. 268435456, 256M, 2G). Unset: sized from "
            "GPU_MEMORY_UTILIZATION. vLLM's CPU build then checks that this share of the node's "
            "memory is free at start (vllm/v1/worker/cpu_worker.py), which fails on a machine "
            "whose page cache is full; an explicit size skips that check."
        ),
    )
    enable_prefix_caching: bool = Field(default=True, description="ENABLE_PREFIX_CACHING")
    quantization: str | None = Field(default=None, description="QUANTIZATION")
    tensor_parallel_size: int = Field(default=1, ge=1, description="TENSOR_PARALLEL_SIZE")
    dtype: str = Field(default="auto", description="DTYPE")
    kv_cache_dtype: str = Field(default="auto", description="KV_CACHE_DTYPE")
    max_num_seqs: int | None = Field(default=None, ge=1, description="MAX_NUM_SEQS")
    max_num_batched_tokens: int | None = Field(default=None, description="MAX_NUM_BATCHED_TOKENS")
    enforce_eager: bool = Field(default=False, description="ENFORCE_EAGER")
    runner: Literal["auto", "generate", "pooling"] | None = Field(
        default=None,
        description=(
            "RUNNER: vLLM's `--runner`. `pooling` serves /v1/embeddings (a generative "
            "checkpoint is converted to an embedding model, last-token pooling); unset or "
            "`generate`: chat, completions and responses."
        ),
    )
    enable_chunked_prefill: bool | None = Field(
        default=None,
        description="ENABLE_CHUNKED_PREFILL: vLLM's default when unset (off on the CPU build).",
    )
    trust_remote_code: bool = Field(default=False, description="TRUST_REMOTE_CODE")
    seed: int = Field(default=0, description="SEED")
    block_size: int | None = Field(default=None, description="BLOCK_SIZE")
    enable_auto_tool_choice: bool = Field(default=False, description="ENABLE_AUTO_TOOL_CHOICE")
    tool_call_parser: str | None = Field(default=None, description="TOOL_CALL_PARSER")
    reasoning_parser: str | None = Field(default=None, description="REASONING_PARSER")
    custom_chat_template: str | None = Field(
        default=None,
        description="CUSTOM_CHAT_TEMPLATE: a Jinja chat template overriding the model's.",
    )

    # --- worker ---
    max_concurrency: int = Field(
        default=2,
        ge=1,
        description=(
            "MAX_CONCURRENCY: chunks one worker runs at once on its one engine. 2 takes the next "
            "chunk while the current one drains (its download, parse and first requests overlap "
            "the tail and the upload), so the engine never empties at a chunk boundary."
        ),
    )
    max_requests_in_flight: int = Field(
        default=4096,
        ge=1,
        description=(
            "MAX_REQUESTS_IN_FLIGHT: requests the worker has in its engine at once, shared by "
            "all its chunks and handed out oldest chunk first. The engine's scheduler keeps "
            "MAX_NUM_SEQS running and the rest wait in its queue, so this bounds memory and the "
            "queue, and keeps two chunks from oversubscribing one engine."
        ),
    )
    progress_interval_s: float = Field(
        default=5.0,
        ge=0,
        description=(
            "PROGRESS_INTERVAL_S: seconds between progress reports while a chunk runs (requests "
            "answered so far, through the runpod SDK's progress_update); 0 sends none."
        ),
    )
    transfer_timeout_s: float = Field(default=300.0, description="TRANSFER_TIMEOUT_S")
    transfer_retries: int = Field(default=3, ge=1, description="TRANSFER_RETRIES")
    enable_vllm_monitor: bool = Field(default=False, description="ENABLE_VLLM_MONITOR")
    vllm_monitor_interval: float = Field(default=30.0, gt=0, description="VLLM_MONITOR_INTERVAL")
    media_url_domains: str = Field(
        default="",
        description=(
            "MEDIA_URL_DOMAINS: comma-separated host names the engine may fetch images, audio "
            "and video from (`--allowed-media-domains`). Unset: none, so requests carry media "
            "as data: URLs; a request naming any http(s) media URL fails on its own line. "
            "Redirects are never followed (VLLM_MEDIA_URL_ALLOW_REDIRECTS=0) unless set."
        ),
    )
    vllm_extra_args: str = Field(
        default="",
        description="VLLM_EXTRA_ARGS: more `vllm serve` flags, shell-quoted, e.g. '--max-loras 2'.",
    )
    hotbatch_ready_file: str | None = Field(
        default=None,
        description="HOTBATCH_READY_FILE: written once the engine is loaded (image health check).",
    )
    worker_id: str = Field(
        default_factory=lambda: os.environ.get("RUNPOD_POD_ID", "local"),
        description="RUNPOD_POD_ID: the worker's identity in summaries and logs.",
    )

    @field_validator(
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
        "kv_cache_memory_bytes",
        mode="before",
    )
    @classmethod
    def _zero_means_unset(cls, value: Any) -> Any:
        # worker-vllm templates ship `MAX_MODEL_LEN=0` to mean "the model's own".
        return None if value in (0, "0") else value

    @property
    def served_model_name(self) -> str:
        return self.openai_served_model_name_override or self.model_name

    def serve_argv(self) -> list[str]:
        """The `vllm serve` command line these settings stand for.

        The engine is built from exactly this argv through vLLM's own parser, so every flag
        behaves as it does under `vllm serve`; `VLLM_EXTRA_ARGS` passes any flag not mapped here.
        """
        argv = ["--model", self.model_name, "--served-model-name", self.served_model_name]
        valued: dict[str, object | None] = {
            "--tokenizer": self.tokenizer_name,
            "--revision": self.model_revision,
            "--max-model-len": self.max_model_len,
            "--gpu-memory-utilization": self.gpu_memory_utilization,
            "--kv-cache-memory-bytes": self.kv_cache_memory_bytes,
            "--quantization": self.quantization,
            "--tensor-parallel-size": self.tensor_parallel_size,
            "--dtype": self.dtype,
            "--kv-cache-dtype": self.kv_cache_dtype,
            "--max-num-seqs": self.max_num_seqs,
            "--max-num-batched-tokens": self.max_num_batched_tokens,
            "--runner": self.runner,
            "--seed": self.seed,
            "--block-size": self.block_size,
            "--tool-call-parser": self.tool_call_parser,
            "--reasoning-parser": self.reasoning_parser,
            "--chat-template": self.custom_chat_template,
        }
        for flag, value in valued.items():
            if value is not None:
                argv += [flag, str(value)]
        argv.append(
            "--enable-prefix-caching"
            if self.enable_prefix_caching
            else "--no-enable-prefix-caching"
        )
        if self.enable_chunked_prefill is not None:
            argv.append(
                "--enable-chunked-prefill"
                if self.enable_chunked_prefill
                else "--no-enable-chunked-prefill"
            )
        switches = {
            "--enforce-eager": self.enforce_eager,
            "--trust-remote-code": self.trust_remote_code,
            "--enable-auto-tool-choice": self.enable_auto_tool_choice,
            # Batch output must carry prompt_tokens_details.cached_tokens (OpenAI's usage shape);
            # vLLM leaves it out unless asked.
            "--enable-prompt-tokens-details": True,
        }
        argv += [flag for flag, on in switches.items() if on]
        # vLLM fetches any http(s) media URL a request names, from inside the worker's network,
        # unless a domain list is set; an empty list means all, so "none" is a name that
        # cannot resolve.
        domains = [d.strip() for d in self.media_url_domains.split(",") if d.strip()]
        argv += ["--allowed-media-domains", *(domains or [NO_MEDIA_DOMAIN])]
        return argv + shlex.split(self.vllm_extra_args)
