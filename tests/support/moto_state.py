"""The moto account every control-plane test starts from, built once a session and copied in.

`create_resources` makes the table, bucket and queues of template.yaml through a dozen boto3
calls (~70 ms under moto); four hundred tests each paying that was a sixth of the fast tier.
Built once, the resulting moto objects (the table with its indexes and TTL, the bucket with its
encryption, access block and lifecycle, the FIFO queues with their attributes) are deep-copied
into each test's freshly reset moto (`mock_aws` still resets every backend between tests), so
a test sees exactly what `create_resources` leaves, and nothing another test wrote.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from moto.dynamodb.models import dynamodb_backends
from moto.s3.models import s3_backends
from moto.sqs.models import sqs_backends

from infra import aws_resources

# moto drops boto3's default session at each start by default, so every test would load the
# S3 and DynamoDB service models afresh (~0.2 s a test); the mock is no less isolated without.
KEEP_BOTO3_SESSION = {"core": {"reset_boto3_session": False}}

# (backend dict, the attribute of a region's backend that holds the resources by name)
_HOLDERS: tuple[tuple[Any, str], ...] = (
    (dynamodb_backends, "tables"),
    (s3_backends, "buckets"),
    (sqs_backends, "queues"),
)


@dataclass
class MotoState:
    """What moto held, by (backend dict, account, region, attribute): resources by name."""

    resources: dict[tuple[Any, str, str, str], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def take(cls) -> MotoState:
        """What the running mock holds now (call it inside `mock_aws`)."""
        state = cls()
        for backends, attribute in _HOLDERS:
            for account, region, backend in backends.iter_backends():
                held = getattr(backend, attribute)
                if held:
                    state.resources[(backends, account, region, attribute)] = {
                        name: _fresh_copy(resource) for name, resource in held.items()
                    }
        return state

    def restore(self) -> None:
        """Put a fresh copy of every resource into the running mock (just reset by
        `mock_aws`)."""
        for (backends, account, region, attribute), held in self.resources.items():
            target = getattr(backends[account][region], attribute)
            for name, resource in held.items():
                target[name] = _fresh_copy(resource)
                if backends is s3_backends:
                    # S3 names are global: moto finds a bucket's account through this map.
                    s3_backends.bucket_accounts[name] = (region, account)


def read_template_once(template: dict[str, Any], patch: pytest.MonkeyPatch) -> None:
    """Make `create_resources` take `template` (the session's `template` fixture) instead of
    parsing template.yaml again (~0.2 s: PyYAML's pure-Python parser); any other path is
    still read."""
    load = aws_resources.load_template

    def parsed(path: Path = aws_resources.TEMPLATE) -> dict[str, Any]:
        return template if path == aws_resources.TEMPLATE else load(path)

    patch.setattr(aws_resources, "load_template", parsed)


@dataclass(frozen=True)
class Pristine:
    """The moto account as `create_resources` leaves it, and the boto3 clients that made it:
    a client costs ~10 ms to build and holds nothing of a test (moto does)."""

    state: MotoState
    clients: dict[str, Any]


def _fresh_copy(resource: Any) -> Any:
    """A deep copy with locks of its own (a lock cannot be copied; an SQS queue holds a
    Condition for its long polls)."""
    memo: dict[int, Any] = {
        id(value): threading.Condition()
        for value in vars(resource).values()
        if isinstance(value, threading.Condition)
    }
    return copy.deepcopy(resource, memo)
