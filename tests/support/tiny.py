"""The tiny random-weight model that the engine tier generates and serves."""

from __future__ import annotations

from typing import Final

TINY_MODEL_NAME: Final = "tiny"
TINY_MAX_MODEL_LEN: Final = 512
# The same generated model under vLLM's pooling runner, served for /v1/embeddings.
TINY_EMBED_MODEL_NAME: Final = "tiny-embed"
