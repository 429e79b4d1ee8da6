"""The dashboard's server side, fast tier: the page and its files under their CSP, the health
samples downsampled into series (`GET /v1/health/samples`) and a batch's progress over time
(`GET /v1/batches/{id}/progress`). The page itself runs in real Chromium in
test_dashboard_browser.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.clients.aws import Aws
from control_plane.dashboard import CONTENT_TYPES
from control_plane.dashboard.progress import ProgressPoint, timeline
from control_plane.health import history
from control_plane.health.sample import SAMPLE_TTL_S, HealthSample
from control_plane.ids import now_s
from control_plane.store import ChunkItem
from control_plane.store import chunks as chunk_store
from control_plane.store import health as health_store
from tests.support.api import auth, create_batch, upload_id
from tests.support.lines import jsonl

pytestmark = pytest.mark.usefixtures("aws")


def sample(at: int, **fields: Any) -> HealthSample:
    base: dict[str, Any] = {
        "at": at,
        "expires_at": at + SAMPLE_TTL_S,
        "schedule": "pending",
        "in_schedule": True,
        "keep_hot_workers": 1,
        "work_waiting": False,
        "pending_chunks": 0,
        "in_flight_chunks": 0,
    }
    return HealthSample.model_validate({**base, **fields})


def reading(utilization: float | None, *, memory: float | None = None) -> dict[str, Any]:
    gpu = {"name": "H100", "utilization_percent": utilization, "memory_percent": memory}
    return {"worker_id": "w1", "status": "ready", "gpus": [gpu]}


# --- the page ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/dashboard", "text/html"),
        ("/dashboard/app.css", "text/css"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ]
    + [(f"/dashboard/{name}", "text/javascript") for name in CONTENT_TYPES if name.endswith(".js")],
)
def test_dashboard_files_are_served_without_a_key_under_a_self_only_csp(
    client: TestClient, path: str, media_type: str
) -> None:
    reply = client.get(path)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith(media_type)
    csp = reply.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "form-action 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_dashboard_page_loads_only_its_own_files(client: TestClient) -> None:
    html = client.get("/dashboard").text
    assert '<script type="module" src="dashboard/app.js">' in html
    assert 'href="dashboard/app.css"' in html
    # Nothing from another host, no inline script or style the CSP would refuse.
    assert "http://" not in html.replace('"http://www.w3.org/2000/svg"', "")
    assert "https://" not in html and "<style" not in html and "style=" not in html
    assert "<script>" not in html and " on" + "click=" not in html


@pytest.mark.parametrize("name", ["index.htm", "..%2Fsettings.py", "__init__.py", "static"])
def test_only_the_dashboards_own_files_are_served(client: TestClient, name: str) -> None:
    reply = client.get(f"/dashboard/{name}")
    assert reply.status_code == 404
    assert set(reply.json()) == {"error"}  # an OpenAI error body, no file


def test_every_script_the_page_imports_is_served(client: TestClient) -> None:
    served = {name for name in CONTENT_TYPES if name.endswith(".js")}
    imported = {"app.js"}
    for name in served:
        imported |= set(
            re.findall(r'from "\./([a-z]+\.js)"', client.get(f"/dashboard/{name}").text)
        )
    assert imported == served


def test_the_script_reads_the_key_from_the_fragment_and_never_from_the_query(
    client: TestClient,
) -> None:
    script = client.get("/dashboard/app.js").text
    assert "location.hash" in script and "sessionStorage" in script
    assert "history.replaceState" in script
    assert "location.search)" in script  # kept as it is, only the fragment is stripped
    # localStorage keeps the theme and nothing else: the key lives in this tab only.
    uses = re.findall(r"localStorage\.\w+\((\w+)", script)
    assert uses and set(uses) == {"THEME_STORE"}
    assert 'const THEME_STORE = "hotbatch.theme"' in script
    scripts = [client.get(f"/dashboard/{name}").text for name in CONTENT_TYPES if ".js" in name]
    for text in scripts:
        assert "document.cookie" not in text
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text  # values go in as text
    assert sum("localStorage" in text for text in scripts) == 1


# --- GET /v1/health/samples ----------------------------------------------------------------


def test_health_samples_need_a_key(client: TestClient) -> None:
    reply = client.get("/v1/health/samples")
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "missing_api_key"


def test_health_samples_are_downsampled_into_buckets(
    client: TestClient, aws: Aws, key_a: str
) -> None:
    now = now_s()
    since = now - 600
    workers = {"idle": 1, "running": 1}
    stored = [
        sample(since + 10, readings=[reading(80.0, memory=40.0)], workers=workers),
        sample(since + 50, readings=[reading(60.0, memory=50.0)], work_waiting=True),
        sample(
            since + 70,
            readings=[reading(None)],
            workers={"idle": 2, "running": 0},
            work_waiting=True,
            pending_chunks=7,
        ),
        sample(since + 400, workers={"idle": 0, "running": 3}, in_flight_chunks=3),
        sample(since - 30, readings=[reading(100.0)]),  # before the window: not read
    ]
    for one in stored:
        health_store.put_sample(aws.table, one.model_dump())

    reply = client.get(f"/v1/health/samples?since={since}&step=60", headers=auth(key_a))

    assert reply.status_code == 200, reply.text
    series = reply.json()
    assert series["object"] == "health.samples"
    assert (series["since"], series["step_s"], series["samples"]) == (since, 60, 4)
    assert series["truncated"] is False
    points = series["points"]
    assert [p["at"] for p in points] == [since, since + 60, since + 360]
    first, second, third = points
    assert first["samples"] == 2 and first["gpu_utilization_percent"] == 70.0
    assert first["gpu_memory_percent"] == 45.0
    assert first["idle_share"] == 0.5 and first["idle_share_while_waiting"] is None
    assert first["work_waiting_share"] == 0.5
    # A reading without a utilisation figure is no zero.
    assert second["gpu_utilization_percent"] is None
    assert second["idle_share"] == 1.0 and second["idle_share_while_waiting"] == 1.0
    assert second["pending_chunks"] == 7
    assert third["idle_share"] == 0.0 and third["in_flight_chunks"] == 3
    assert third["warm_workers"] == 3.0


def test_health_samples_window_is_clamped_to_what_is_kept() -> None:
    now = 1_000_000
    assert history.window(since=None, step=None, now=now) == (
        now - history.DEFAULT_WINDOW_S,
        90,  # six hours in 240 buckets
    )
    assert history.window(since=0, step=None, now=now)[0] == now - SAMPLE_TTL_S
    assert history.window(since=now - 600, step=1, now=now) == (now - 600, 3)
    assert history.window(since=now - 600, step=120, now=now) == (now - 600, 120)
    assert history.window(since=now + 50, step=None, now=now) == (now, 1)


def test_downsample_keeps_gaps_as_gaps() -> None:
    since = 1_000
    samples = [sample(since + t) for t in (0, 5, 300, 305)]
    points = history.downsample(samples, since=since, step=10)
    assert [(p.at, p.samples) for p in points] == [(since, 2), (since + 300, 2)]


def test_health_samples_reject_a_bad_step(client: TestClient, key_a: str) -> None:
    reply = client.get("/v1/health/samples?step=0", headers=auth(key_a))
    assert reply.status_code == 400


# --- GET /v1/batches/{id}/progress ---------------------------------------------------------


def chunk(n: int, state: str, **fields: Any) -> ChunkItem:
    item: dict[str, Any] = {"batch_id": "b", "chunk_id": f"{n:05d}", "state": state, "attempts": 1}
    return ChunkItem(**{**item, **fields})  # type: ignore[typeddict-item]


def test_timeline_sums_the_finished_chunks_in_the_order_they_finished() -> None:
    chunks = [
        chunk(2, "done", finished_at=130, completed=10, failed=0),
        chunk(1, "done", finished_at=110, completed=8, failed=2),
        chunk(3, "dead", finished_at=130, completed=0, failed=1),
        chunk(4, "split"),  # its halves count its requests
        chunk(5, "dispatched"),
        chunk(6, "expired", finished_at=150, completed=0, failed=4),
    ]
    assert timeline(chunks, started_at=100) == [
        ProgressPoint(at=100, completed=0, failed=0),
        ProgressPoint(at=110, completed=8, failed=2),
        ProgressPoint(at=130, completed=18, failed=3),  # one point for one second
        ProgressPoint(at=150, completed=18, failed=7),
    ]
    assert timeline([], started_at=None) == []


def test_timeline_keeps_its_ends_and_at_most_max_points() -> None:
    chunks = [chunk(i, "done", finished_at=1000 + i, completed=1) for i in range(1000)]
    points = timeline(chunks, started_at=1000, max_points=50)
    assert len(points) <= 50
    assert points[0] == ProgressPoint(at=1000, completed=0, failed=0)
    assert points[-1] == ProgressPoint(at=1999, completed=1000, failed=0)
    assert [p.at for p in points] == sorted(p.at for p in points)
    assert all(b.completed >= a.completed for a, b in zip(points, points[1:], strict=False))


@pytest.mark.parametrize("settings", [{"chunk_max_requests": 4}], indirect=True)
def test_progress_answers_a_batchs_chunks_over_time(
    client: TestClient, aws: Aws, key_a: str
) -> None:
    batch = create_batch(client, key_a, upload_id(client, key_a, jsonl(10))).json()
    chunks = chunk_store.list_chunks(aws.table, batch_id=batch["id"])
    assert [c["requests"] for c in chunks] == [4, 4, 2]
    finished_at = now_s()
    chunk_store.finish(
        aws.table,
        chunks[0],
        state="done",
        expect_state="pending",
        sets={"completed": 3, "failed": 1, "finished_at": finished_at},
        batch_deltas={"n_completed": 3, "n_failed": 1, "chunks_open": -1},
    )

    reply = client.get(f"/v1/batches/{batch['id']}/progress", headers=auth(key_a))

    assert reply.status_code == 200, reply.text
    progress = reply.json()
    started = client.get(f"/v1/batches/{batch['id']}", headers=auth(key_a)).json()["in_progress_at"]
    assert progress == {
        "object": "batch.progress",
        "batch_id": batch["id"],
        "started_at": started,
        "points": [
            {"at": started, "completed": 0, "failed": 0},
            {"at": finished_at, "completed": 3, "failed": 1},
        ],
        "chunks": {"done": 1, "pending": 2},
        "engine_busy_share": None,  # the worker reported no busy clock
        "workers": 0,
        "truncated": False,
    }


def test_progress_of_another_tenants_batch_is_a_404(
    client: TestClient, key_a: str, key_b: str
) -> None:
    batch = create_batch(client, key_a, upload_id(client, key_a, jsonl(3))).json()
    reply = client.get(f"/v1/batches/{batch['id']}/progress", headers=auth(key_b))
    assert reply.status_code == 404
    assert reply.json()["error"]["param"] == "batch_id"
    assert client.get(f"/v1/batches/{batch['id']}/progress").status_code == 401
    assert client.get("/v1/batches/batch_nope/progress", headers=auth(key_a)).status_code == 404


def test_progress_stays_out_of_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/batches/{batch_id}/progress" not in paths
