"""Which deployment a command talks to, and what its failures say.

The URL and key come from `--api-url` / `--api-key` on the root command, else HOTBATCH_API_URL /
HOTBATCH_API_KEY. Tests hand in a Deployment (their in-process app) as the root's `obj`; the
flags still override its URL and key. Every failure of the API, the network or the SDK becomes
one line that names the URL and what to check, with its own exit status.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import typer

from infra import client as api
from infra.output_cli import Exit, fail

URL_HINT = "check --api-url / HOTBATCH_API_URL"
KEY_HINT = "check --api-key / HOTBATCH_API_KEY"


@dataclass(frozen=True)
class Globals:
    """The root command's options, kept in the root context for the commands below it."""

    api_url: str | None = None
    api_key: str | None = None
    handed: api.Deployment | None = None  # a test's deployment


def deployment(ctx: typer.Context) -> api.Deployment:
    """The deployment the command line and the environment name; exit 2 naming what to set."""
    given = ctx.find_root().obj
    if not isinstance(given, Globals):
        given = Globals(handed=given if isinstance(given, api.Deployment) else None)
    try:
        if given.handed is not None:
            return given.handed.overridden(url=given.api_url, key=given.api_key)
        return api.Deployment.resolve(url=given.api_url, key=given.api_key)
    except api.DeploymentConfigError as exc:
        fail(str(exc), Exit.USAGE)


@contextlib.contextmanager
def api_errors(target: api.Deployment) -> Iterator[None]:
    """The SDK's and the API's errors as one line on stderr and an exit status, not a
    traceback."""
    import openai

    url = target.base_url
    try:
        yield
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        refused = f"{url} refused the API key: {_message(exc).rstrip('.')}; {KEY_HINT}"
        fail(refused, Exit.AUTH, label=f"error {exc.status_code}")
    except openai.APIStatusError as exc:
        fail(_message(exc), Exit.FAILED, label=f"error {exc.status_code}")
    except openai.APITimeoutError:
        fail(f"{url} did not answer in time; is the deployment up? {URL_HINT}", Exit.UNREACHABLE)
    except openai.APIConnectionError as exc:
        reason = api.connection_reason(exc)
        fail(f"cannot reach {url}: {reason}; is the deployment up? {URL_HINT}", Exit.UNREACHABLE)
    except (openai.APIError, api.UnexpectedAnswer) as exc:
        # Something answered at the URL, but not as hotbatch does (a proxy, another service).
        fail(f"{url} answered unexpectedly ({exc}); is it a hotbatch deployment? {URL_HINT}")
    except api.TransferFailed as exc:
        fail(str(exc))


def _message(exc: object) -> str:
    """The API's own error message (OpenAI's `{"error": {"message": …}}`), else the SDK's."""
    body = getattr(exc, "body", None)
    detail = body.get("error", body) if isinstance(body, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    return str(message or getattr(exc, "message", exc))
