"""Signing secrets and the Standard Webhooks signature the `openai` SDK verifies
(`client.webhooks.unwrap` / `verify_signature`), through the `standardwebhooks` library.

A secret is `whsec_` + base64 of 32 random bytes: both the SDK and the library strip the prefix
and sign with the decoded bytes. Each attempt is signed at the time it is sent (receivers refuse
a timestamp more than five minutes off); while a rotated-out secret is still honoured, both
signatures go in one header, space-separated, and a receiver accepts either.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def hint(secret: str) -> str:
    """Enough to tell two secrets apart, never enough to use one (base64's padding aside)."""
    return f"{PREFIX}…{secret.rstrip('=')[-4:]}"


def headers(
    *, message_id: str, payload: str, signing_secrets: Iterable[str], at: int
) -> dict[str, str]:
    """The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers of one attempt."""
    when = datetime.fromtimestamp(at, tz=UTC)
    signatures = " ".join(
        Webhook(secret).sign(message_id, when, payload) for secret in signing_secrets
    )
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(at),
        "webhook-signature": signatures,
    }


def secrets_of(endpoint: Mapping[str, Any], now: int) -> list[str]:
    """The secrets a delivery to `endpoint` (its item) is signed with now: the current one,
    and the rotated-out one while its day of grace lasts."""
    found = [str(endpoint["secret"])]
    if endpoint.get("previous_secret") and int(endpoint.get("previous_secret_until", 0)) > now:
        found.append(str(endpoint["previous_secret"]))
    return found
