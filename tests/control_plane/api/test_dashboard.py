"""The dashboard's server side, fast tier: the page and its files under their CSP, and the health
samples downsampled into series (`GET /v1/health/samples`). The page itself runs in real
Chromium in test_dashboard_browser.py."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.aws import Aws
from control_plane.health import history
from control_plane.health.sample import SAMPLE_TTL_S, HealthSample
from control_plane.ids import now_s
from control_plane.store import health as health_store
from tests.support.api import auth

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
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ],
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
    assert 'src="dashboard/app.js"' in html and 'href="dashboard/app.css"' in html
    # Nothing from another host, no inline script or style the CSP would refuse.
    assert "http://" not in html.replace('"http://www.w3.org/2000/svg"', "")
    assert "https://" not in html and "<style" not in html and "style=" not in html
    assert "<script>" not in html and " on" + "click=" not in html


@pytest.mark.parametrize("name", ["index.htm", "..%2Fsettings.py", "__init__.py", "static"])
def test_only_the_dashboards_own_files_are_served(client: TestClient, name: str) -> None:
    reply = client.get(f"/dashboard/{name}")
    assert reply.status_code == 404
    assert set(reply.json()) == {"error"}  # an OpenAI error body, no file


def test_the_script_reads_the_key_from_the_fragment_and_never_from_the_query(
    client: TestClient,
) -> None:
    script = client.get("/dashboard/app.js").text
    assert "location.hash" in script and "sessionStorage" in script
    assert "history.replaceState" in script
    assert "location.search)" in script  # kept as it is, only the fragment is stripped
    assert "localStorage" not in script and "document.cookie" not in script
    assert ".innerHTML" not in script  # API values go in as text


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
