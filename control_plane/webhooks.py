"""Signing and checking the webhook URLs handed to RunPod with each chunk.

RunPod cannot add headers to a webhook, so the URL itself carries an HMAC of what it names
(batch, chunk, attempt): a delivery for any other chunk or attempt fails the check.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

PATH = "/internal/runpod/webhook"


def signature(secret: str, batch_id: str, chunk_id: str, attempt: int) -> str:
    message = f"{batch_id}:{chunk_id}:{attempt}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def url(public_url: str, secret: str, *, batch_id: str, chunk_id: str, attempt: int) -> str:
    query = {
        "batch_id": batch_id,
        "chunk_id": chunk_id,
        "attempt": str(attempt),
        "sig": signature(secret, batch_id, chunk_id, attempt),
    }
    return f"{public_url.rstrip('/')}{PATH}?{urlencode(query)}"


def verify(secret: str, *, batch_id: str, chunk_id: str, attempt: int, sig: str) -> bool:
    return hmac.compare_digest(signature(secret, batch_id, chunk_id, attempt), sig)
