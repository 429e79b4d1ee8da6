"""Secrets read at run time from Secrets Manager (powertools caches them), never from the
function's environment, where they would show in its configuration."""

from __future__ import annotations

from control_plane.settings import Settings

MAX_AGE_S = 300


def _secret(arn: str) -> str:
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(arn, max_age=MAX_AGE_S)
    return value if isinstance(value, str) else bytes(value).decode()


def runpod_api_key(settings: Settings) -> str:
    if settings.runpod_api_key:
        return settings.runpod_api_key
    if not settings.runpod_api_key_secret:
        raise RuntimeError("set HOTBATCH_RUNPOD_API_KEY_SECRET to the RunPod API key's secret")
    return _secret(settings.runpod_api_key_secret)


def webhook_secret(settings: Settings) -> str:
    if settings.webhook_secret_value:
        return settings.webhook_secret_value
    if not settings.webhook_secret:
        raise RuntimeError("set HOTBATCH_WEBHOOK_SECRET to the webhook secret's ARN")
    return _secret(settings.webhook_secret)
