"""Signing and checking the webhook URLs handed to RunPod with each chunk.

RunPod cannot add headers to a webhook, so the URL itself carries an HMAC of what it names
(batch, chunk, attempt): a delivery for any other chunk or attempt fails the check.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

PATH = "/internal/runpod/webhook"
# Workers post a running chunk's progress here, under the same signature.
PROGRESS_PATH = "/internal/runpod/progress"


def signature(secret: str, batch_id: str, chunk_id: str, attempt: int, path: str = PATH) -> str:
    """The result webhook's HMAC names the chunk and attempt; the progress URL's names its path
    too, so a worker (which holds its progress URL) cannot post a result with it."""
    message = f"{batch_id}:{chunk_id}:{attempt}"
    if path != PATH:
        message = f"{path}:{message}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def url(
    public_url: str, secret: str, *, batch_id: str, chunk_id: str, attempt: int, path: str = PATH
) -> str:
    query = {
        "batch_id": batch_id,
        "chunk_id": chunk_id,
        "attempt": str(attempt),
        "sig": signature(secret, batch_id, chunk_id, attempt, path),
    }
    return f"{public_url.rstrip('/')}{path}?{urlencode(query)}"


def verify(
    secret: str, *, batch_id: str, chunk_id: str, attempt: int, sig: str, path: str = PATH
) -> bool:
    return hmac.compare_digest(signature(secret, batch_id, chunk_id, attempt, path), sig)
