"""schemathesis against the API in process (ASGI, moto's mock_aws), with every check and a fixed
seed: no server error, no status or content type the OpenAPI document does not declare, no
response off its schema, no schema-valid request refused and no invalid one accepted, `Allow`
on 405s. Its stateful phase follows the document's links (upload a file, create a batch from
it, cancel it...), so fuzzed metadata and filenames reach the table. Afterwards the tenant
still lists its batches and creates a new one, and a tick moves every batch without a failure.

The app is called in process. With mock_aws nothing is started (no `stack` marker); the same
run against moto's server (real HTTP, where the issue's fuzz run got an item back that botocore
could not parse) starts that server and is marked `stack`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema

from control_plane.api import create_app
from control_plane.clients.aws import Aws
from control_plane.store import apikeys
from control_plane.store import batches as batch_store
from infra.local_control_plane import LocalAws
from tests.support.api import (
    BUCKET,
    TABLE,
    auth,
    create_batch,
    make_settings,
    tick,
    upload_id,
)
from tests.support.lines import jsonl

SEED = 20261203
# Examples per operation and phase against moto's server (the stack tier): about a thousand
# requests. In process (the fast tier, where every check still runs and the coverage phase is
# whole) fewer, so that quick feedback stays quick.
MAX_EXAMPLES = {"moto_server": 25, "mock_aws": 8}
# schemathesis's own list for a schema-valid request, with 400 added where a rule is not shape.
ACCEPTED = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]


@dataclass
class FuzzRun:
    cases: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)


def fuzz_config(key: str, *, max_examples: int) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {key}"},
            "generation": {"max-examples": max_examples, "database": "none"},
            "cache": {"enabled": False},
            "checks": {"enabled": True},  # every check
            "operations": [
                {
                    # A multipart part has no JSON type: the "negative" file 256011 arrives as
                    # the six characters "256011", a valid one-line text file.
                    "include-path": "/v1/files",
                    "include-method": "POST",
                    "checks": {"negative_data_rejection": {"enabled": False}},
                },
                *(
                    {
                        # Rules on state, not shape: a part id must name a part of this
                        # upload; a part must hold bytes (a multipart field's length is
                        # nothing the document can bound). Both are 400s, as OpenAI's are.
                        "include-path": path,
                        "include-method": "POST",
                        "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
                    }
                    for path in (
                        "/v1/uploads/{upload_id}/complete",
                        "/v1/uploads/{upload_id}/parts",
                    )
                ),
            ],
        }
    )


def run_fuzzer(schema: Any) -> FuzzRun:
    run = FuzzRun()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            _record(run, event)
        elif isinstance(event, events.NonFatalError):
            run.failures.append(f"error in {event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return run


def _record(run: FuzzRun, event: events.ScenarioFinished | events.FuzzScenarioFinished) -> None:
    recorder = event.recorder
    phase = getattr(event, "phase", "fuzz")
    for case_id, node in recorder.cases.items():
        run.cases[str(getattr(phase, "value", phase))] += 1
        interaction = recorder.interactions.get(case_id)
        if interaction is not None and interaction.response is not None:
            run.statuses[interaction.response.status_code] += 1
        for check in recorder.checks.get(case_id, []):
            if check.failure_info is not None:
                case = node.value
                run.failures.append(
                    f"{check.name}: {case.method} {case.formatted_path} "
                    f"-> {check.failure_info.failure.title}"
                )


# The fuzzer creates batches by the dozen; the new one at the end must not meet the limit.
UNLIMITED = {"max_active_batches": 100_000}


@pytest.fixture(params=["mock_aws", pytest.param("moto_server", marks=pytest.mark.stack)])
def backend(request: pytest.FixtureRequest, aws_credentials: None) -> Iterator[Aws]:
    if request.param == "mock_aws":
        aws: Aws = request.getfixturevalue("aws")
        yield Aws(aws.settings.model_copy(update=UNLIMITED))
        return
    local = LocalAws(table_name=TABLE, bucket_name=BUCKET).start()
    try:
        yield Aws(make_settings(aws_endpoint_url=local.url, **UNLIMITED))
    finally:
        local.stop()


def test_fuzzer_finds_no_server_error_and_nothing_undocumented(
    backend: Aws, request: pytest.FixtureRequest
) -> None:
    aws = backend
    max_examples = MAX_EXAMPLES[request.node.callspec.params["backend"]]
    key_a = apikeys.create_key(aws.table, tenant_id="tenant-a", name="a")
    app = create_app(aws=aws)
    with TestClient(app) as client:
        before = create_batch(client, key_a, upload_id(client, key_a, jsonl(3)))
        assert before.status_code == 200, before.text

    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=fuzz_config(key_a, max_examples=max_examples)
    )
    run = run_fuzzer(schema)

    assert run.failures == [], "\n".join(sorted(set(run.failures)))
    assert sum(run.cases.values()) > 20 * max_examples, run.cases
    assert {"coverage", "fuzzing", "stateful"} <= set(run.cases), run.cases
    assert run.statuses[500] == 0 and run.statuses[200] > 100, run.statuses

    with TestClient(app) as client:
        listed = client.get("/v1/batches?limit=100", headers=auth(key_a))
        assert listed.status_code == 200, listed.text
        ids = [batch["id"] for batch in listed.json()["data"]]
        assert before.json()["id"] in ids
        for batch_id in ids:
            assert client.get(f"/v1/batches/{batch_id}", headers=auth(key_a)).status_code == 200
        after = create_batch(client, key_a, upload_id(client, key_a, jsonl(3)))
        assert after.status_code == 200, after.text
        assert after.json()["status"] == "validating"
        report = tick(aws)
        assert report["failures"]["failing"] == 0, report
        settled = batch_store.get_batch(aws.table, after.json()["id"])
        assert settled is not None and settled["status"] == "in_progress"
