"""moto-backed fixtures: the table and bucket built from template.yaml, the app, tenant keys
(the helpers that drive them are in `tests.support.api`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from moto import mock_aws

from control_plane.api import create_app
from control_plane.clients.aws import Aws
from control_plane.settings import Settings
from control_plane.store import apikeys
from infra.aws_resources import create_resources
from tests.support.api import BUCKET, TABLE, make_settings
from tests.support.moto_state import (
    KEEP_BOTO3_SESSION,
    MotoState,
    Pristine,
    read_template_once,
)

AWS_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture()
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in list(os.environ):
        if name.startswith("HOTBATCH_"):
            monkeypatch.delenv(name)


@pytest.fixture()
def settings(aws_credentials: None, request: pytest.FixtureRequest) -> Settings:
    """Default test settings; a test changes some with
    `@pytest.mark.parametrize("settings", [{"field": value}], indirect=True)`."""
    return make_settings(**getattr(request, "param", {}))


@pytest.fixture(scope="session")
def pristine(template: dict[str, Any]) -> Pristine:
    """What `create_resources` makes, once a session (per xdist worker)."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_CREDENTIALS.items():
            env.setenv(name, value)
        read_template_once(template, env)
        with mock_aws(config=KEEP_BOTO3_SESSION):
            handle = Aws(make_settings())
            create_resources(
                dynamodb=handle.dynamodb,
                s3=handle.s3,
                sqs=handle.sqs,
                table_name=TABLE,
                bucket_name=BUCKET,
            )
            return Pristine(
                state=MotoState.take(),
                clients={"dynamodb": handle.dynamodb, "s3": handle.s3, "sqs": handle.sqs},
            )


@pytest.fixture()
def aws(aws_credentials: None, settings: Settings, pristine: Pristine) -> Iterator[Aws]:
    """A fresh moto account with the table, bucket and queues of template.yaml: `mock_aws`
    resets every backend, then a copy of what `create_resources` made once a session goes
    in (`tests.support.moto_state`)."""
    with mock_aws(config=KEEP_BOTO3_SESSION):
        pristine.state.restore()
        handle = Aws(settings)
        if settings.aws_endpoint_url is None:
            handle.__dict__.update(pristine.clients)  # the cached_property slots
        yield handle


@pytest.fixture(scope="session")
def app() -> FastAPI:
    """The app, built once (FastAPI takes a tenth of a second to build its routes); each test
    hands it its own AWS handle and an empty key cache."""
    return create_app(make_settings())


@pytest.fixture()
def client(app: FastAPI, aws: Aws) -> Iterator[TestClient]:
    app.state.aws, app.state.key_cache = aws, {}
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture()
def key_a(aws: Aws) -> str:
    return apikeys.create_key(aws.table, tenant_id="tenant-a", name="a")


@pytest.fixture()
def key_b(aws: Aws) -> str:
    return apikeys.create_key(aws.table, tenant_id="tenant-b", name="b")
