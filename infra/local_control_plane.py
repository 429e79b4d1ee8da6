"""The control plane on this machine: moto's threaded server with the template's table and
bucket, and the FastAPI app under uvicorn in a thread, for the local stack and the tests."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from infra import moto_speed

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Seconds the local API keeps an idle connection open (see `LocalApi.start`).
KEEP_ALIVE_S = 65


def use_local_credentials() -> None:
    """moto accepts any credentials; set fake ones so nothing can reach a real account."""
    for name, value in LOCAL_CREDENTIALS.items():
        os.environ[name] = value
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)


def _bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


_serialized = threading.Lock()


def serialize_dynamodb() -> None:
    """Make moto's DynamoDB take one request at a time, in this process, once.

    moto applies a transaction on a deep copy of the table and restores that copy when a
    condition fails, undoing whatever another thread wrote meanwhile; DynamoDB isolates
    transactions. The local stack's API threads, webhooks and tick all write at once, so without
    this a lost race could silently drop another writer's update.
    """
    from moto.dynamodb.responses import DynamoHandler

    if getattr(DynamoHandler.call_action, "hotbatch_serialized", False):
        return
    original = DynamoHandler.call_action

    def call_action(self: Any) -> Any:
        with _serialized:
            return original(self)

    call_action.hotbatch_serialized = True  # type: ignore[attr-defined]
    DynamoHandler.call_action = call_action


@dataclass
class LocalAws:
    """moto's server (S3, DynamoDB and SQS over real HTTP, so presigned URLs work) with the
    resources from template.yaml."""

    host: str = "127.0.0.1"
    port: int = 0
    table_name: str = "hotbatch"
    bucket_name: str = "hotbatch-local"
    _server: Any = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalAws:
        from moto.server import ThreadedMotoServer

        use_local_credentials()
        # moto's server logs every request through werkzeug: thousands of lines per batch.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        if self.port == 0:
            with _bound_socket(self.host, 0) as probe:
                self.port = probe.getsockname()[1]
        serialize_dynamodb()
        moto_speed.enable()
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.create_resources()
        return self

    def create_resources(self) -> None:
        import boto3

        from infra.aws_resources import create_resources

        create_resources(
            dynamodb=boto3.client("dynamodb", endpoint_url=self.url),
            s3=boto3.client("s3", endpoint_url=self.url),
            sqs=boto3.client("sqs", endpoint_url=self.url),
            table_name=self.table_name,
            bucket_name=self.bucket_name,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@dataclass
class LocalApi:
    """The control plane app under uvicorn on a thread of this process."""

    app: Any
    host: str = "127.0.0.1"
    port: int = 0
    _server: Any = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def reserve_port(self) -> int:
        """Pick the port now (when it is 0), so the URL is known before the app exists."""
        if self.port == 0:
            with _bound_socket(self.host, 0) as probe:
                self.port = probe.getsockname()[1]
        return self.port

    def start(self, timeout: float = 30.0) -> LocalApi:
        import uvicorn

        sock = _bound_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        # The clients (httpx, in the openai SDK and the CLI) drop a connection idle 5 s; the
        # server must outlast them. At uvicorn's default (also 5 s) the server's close and the
        # client's next request on that connection can cross, and the client reads a reset
        # (CI saw one while polling a batch).
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="control-plane", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the control plane did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None
