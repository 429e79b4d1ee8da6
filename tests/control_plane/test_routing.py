"""Models and routing (`HOTBATCH_MODELS`): what `/v1/models` answers, which lines the split
refuses (with line numbers, before any worker sees them), and which RunPod endpoint each
batch's chunks go to, while a deployment without a map keeps its one endpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai.types import Model

from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.scheduler.context import TickContext
from control_plane.scheduler.tick import run_tick
from control_plane.settings import Settings
from control_plane.store import chunks as chunk_store
from tests.support.api import auth, create_batch, make_settings, upload_id
from tests.support.lines import CHAT, EMBED_MODEL, EMBEDDINGS, MODEL, RESPONSES, request_line

MODELS = {
    MODEL: {"endpoint_id": "chat-ep", "kind": "generate", "created": 1_700_000_000},
    EMBED_MODEL: {"endpoint_id": "embed-ep", "kind": "embed"},
}
ROUTED = {"models": MODELS, "runpod_endpoint_id": "default-ep", "keep_hot_schedule": "never"}


def lines(*texts: str) -> bytes:
    return ("\n".join(texts) + "\n").encode()


def batch_after_split(client: TestClient, key: str, content: bytes, endpoint: str) -> Any:
    reply = create_batch(client, key, upload_id(client, key, content), endpoint=endpoint)
    assert reply.status_code == 200, reply.text
    got = client.get(f"/v1/batches/{reply.json()['id']}", headers=auth(key))
    return got.json()


def test_models_setting_reads_json_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTBATCH_MODELS", json.dumps(MODELS))
    settings = Settings()
    assert settings.models[EMBED_MODEL].kind == "embed"
    assert settings.models[MODEL].endpoint_id == "chat-ep"


def test_a_model_with_an_unknown_kind_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="kind"):
        make_settings(models={"m": {"endpoint_id": "e", "kind": "rerank"}})


@pytest.mark.parametrize("settings", [ROUTED], indirect=True)
def test_models_list_names_every_served_model_as_openais_model_objects(
    client: TestClient, key_a: str
) -> None:
    listed = client.get("/v1/models", headers=auth(key_a)).json()
    assert listed["object"] == "list"
    models = [Model.model_validate(m, strict=True) for m in listed["data"]]
    assert [(m.id, m.object, m.owned_by) for m in models] == [
        (MODEL, "model", "hotbatch"),
        (EMBED_MODEL, "model", "hotbatch"),
    ]
    one = client.get(f"/v1/models/{MODEL}", headers=auth(key_a)).json()
    assert Model.model_validate(one, strict=True).created == 1_700_000_000


@pytest.mark.parametrize("settings", [ROUTED], indirect=True)
def test_retrieving_an_unknown_model_is_openais_404(client: TestClient, key_a: str) -> None:
    reply = client.get("/v1/models/gpt-nothing", headers=auth(key_a))
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_without_a_map_models_list_is_empty_but_answers(client: TestClient, key_a: str) -> None:
    reply = client.get("/v1/models", headers=auth(key_a))
    assert reply.status_code == 200
    assert reply.json() == {"object": "list", "data": []}


def test_models_need_an_api_key(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 401


@pytest.mark.parametrize("settings", [ROUTED], indirect=True)
def test_a_model_nobody_serves_fails_validation_with_its_line(
    client: TestClient, key_a: str
) -> None:
    content = lines(
        request_line("a", model="gpt-nothing"),
        request_line("b", model="gpt-nothing"),
    )
    batch = batch_after_split(client, key_a, content, CHAT)
    assert batch["status"] == "failed"
    errors = batch["errors"]["data"]
    assert [(e["code"], e["line"], e["param"]) for e in errors] == [
        ("model_not_found", 1, "body.model"),
        ("model_not_found", 2, "body.model"),
    ]
    assert "gpt-nothing" in errors[0]["message"] and MODEL in errors[0]["message"]


@pytest.mark.parametrize("settings", [ROUTED], indirect=True)
@pytest.mark.parametrize(
    ("endpoint", "model"), [(EMBEDDINGS, MODEL), (CHAT, EMBED_MODEL), (RESPONSES, EMBED_MODEL)]
)
def test_an_endpoint_the_models_kind_cannot_serve_fails_validation(
    client: TestClient, key_a: str, endpoint: str, model: str
) -> None:
    content = lines(request_line("a", url=endpoint, model=model))
    batch = batch_after_split(client, key_a, content, endpoint)
    assert batch["status"] == "failed"
    error = batch["errors"]["data"][0]
    assert (error["code"], error["line"]) == ("unsupported_model_endpoint", 1)
    assert endpoint in error["message"]


@pytest.mark.parametrize("settings", [ROUTED], indirect=True)
def test_a_line_without_a_model_fails_validation_when_models_are_routed(
    client: TestClient, key_a: str
) -> None:
    content = lines(request_line("a", body={"messages": [{"role": "user", "content": "hi"}]}))
    batch = batch_after_split(client, key_a, content, CHAT)
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [("missing_model", 1)]


@pytest.mark.parametrize("settings", [ROUTED, {}], indirect=True)
def test_a_file_mixing_models_fails_validation_on_the_first_other_model(
    client: TestClient, key_a: str
) -> None:
    content = lines(
        request_line("a", url=EMBEDDINGS, model=EMBED_MODEL),
        request_line("b", url=EMBEDDINGS, model=EMBED_MODEL),
        request_line("c", url=EMBEDDINGS, model="other-embed"),
    )
    batch = batch_after_split(client, key_a, content, EMBEDDINGS)
    assert batch["status"] == "failed"
    codes = {(e["code"], e["line"]) for e in batch["errors"]["data"]}
    assert codes & {("mismatched_model", 3), ("model_not_found", 3)}
    assert all(e["line"] == 3 for e in batch["errors"]["data"])


@dataclass
class RecordingRunPod(RunPodClient):
    """RunPod's client API in process, noting which endpoint each call went to; jobs stay
    queued (these tests look at dispatch, not at results)."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def run(self, job_input: dict[str, Any], **_: Any) -> str:
        self.calls.append(("run", self.endpoint_id))
        return f"job-{len(self.calls)}"

    def status(self, job_id: str) -> dict[str, Any]:
        self.calls.append(("status", self.endpoint_id))
        return {"id": job_id, "status": "IN_QUEUE"}

    def cancel(self, job_id: str) -> dict[str, Any]:
        self.calls.append(("cancel", self.endpoint_id))
        return {"id": job_id, "status": "CANCELLED"}


def dispatched(aws: Aws, client: TestClient, key: str, content: bytes, endpoint: str) -> Any:
    batch = batch_after_split(client, key, content, endpoint)
    assert batch["status"] == "in_progress", batch
    runpod = RecordingRunPod(base_url="http://standin", endpoint_id="default-ep", api_key="x")
    run_tick(TickContext(aws=aws, runpod=runpod, now=int(batch["created_at"]) + 1))
    # A later tick past the lease polls the job where it was sent.
    run_tick(TickContext(aws=aws, runpod=runpod, now=int(batch["created_at"]) + 10**6))
    return batch, runpod


@pytest.mark.parametrize("settings", [ROUTED], indirect=True)
def test_each_batch_is_dispatched_and_polled_on_its_models_endpoint(
    aws: Aws, client: TestClient, key_a: str
) -> None:
    batch, runpod = dispatched(
        aws, client, key_a, lines(request_line("e", url=EMBEDDINGS, model=EMBED_MODEL)), EMBEDDINGS
    )
    assert ("run", "embed-ep") in runpod.calls
    assert ("status", "embed-ep") in runpod.calls
    assert not [call for call in runpod.calls if call[0] != "health" and call[1] != "embed-ep"]
    (chunk,) = chunk_store.list_chunks(aws.table, batch_id=batch["id"])
    assert chunk["runpod_endpoint_id"] == "embed-ep"
    assert batch["model"] == EMBED_MODEL


@pytest.mark.parametrize(
    "settings", [{"runpod_endpoint_id": "default-ep", "keep_hot_schedule": "never"}], indirect=True
)
def test_without_a_map_every_batch_goes_to_the_one_endpoint(
    aws: Aws, client: TestClient, key_a: str
) -> None:
    _, runpod = dispatched(aws, client, key_a, lines(request_line("c", model="any-model")), CHAT)
    assert runpod.calls[0] == ("run", "default-ep")
    assert {endpoint for _, endpoint in runpod.calls} == {"default-ep"}


@pytest.mark.parametrize(
    "settings",
    [{**ROUTED, "models": {MODEL: {"kind": "generate"}}}],
    indirect=True,
)
def test_a_model_without_an_endpoint_id_runs_on_the_default_endpoint(
    aws: Aws, client: TestClient, key_a: str
) -> None:
    _, runpod = dispatched(aws, client, key_a, lines(request_line("c")), CHAT)
    assert runpod.calls[0] == ("run", "default-ep")
