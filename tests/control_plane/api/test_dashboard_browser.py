"""`/dashboard` in real headless Chromium (Debian's `chromium` and `chromedriver`, driven by
selenium: tests/support/browser.py) against the local stack: moto's server, the control plane under
uvicorn, the local RunPod endpoint with real runpod SDK workers around the stand-in engine, and
the tick.

CI installs Chromium (.ci/run); without it these tests fail, they never skip. The screenshot is
written to a temporary folder (or to $HOTBATCH_DASHBOARD_SCREENSHOT) and its path printed.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from control_plane.health.sample import SAMPLE_TTL_S, HealthSample
from control_plane.ids import now_s
from control_plane.store import health as health_store
from infra.stack import LocalStack, StackConfig, worker_pool
from tests.support.browser import check_screenshot, start_chromium
from tests.support.lines import CHAT, request_line
from tests.support.stack import REPO, STANDIN_WORKER

pytestmark = pytest.mark.stack

STANDIN = STANDIN_WORKER
HISTORY_EVERY_S, HISTORY_SAMPLES = 300, 72  # six hours of a 5-minute tick, written below


@pytest.fixture(scope="module")
def flaky_switch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("switch") / "fail"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, flaky_switch: Path) -> Iterator[LocalStack]:
    pool = worker_pool(
        workers=1,
        max_workers=3,
        command=STANDIN,
        env={"PYTHONPATH": str(REPO), "STANDIN_FAIL_WHILE": str(flaky_switch)},
        workdir=tmp_path_factory.mktemp("stack"),
    )
    pool.stop_grace_s = 2.0  # a worker still holds the slow chunk at the end: no need to wait
    config = StackConfig(pool=pool, tick_interval_s=0.5, settings={"chunk_max_requests": 10})
    stack = LocalStack(config).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def sdk(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)


def base_url(stack: LocalStack) -> str:
    assert stack.api is not None
    return stack.api.url


def wait_for(
    driver: WebDriver, what: str, check: Callable[[WebDriver], Any], timeout: float = 60
) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(check, f"waited for {what}")


def row_text(driver: WebDriver, batch_id: str) -> list[str]:
    """The cells of the batch's row as the page shows them ([] while it is not listed)."""
    texts: list[str] = driver.execute_script(
        "const row = document.querySelector(`tr[data-batch-id='${arguments[0]}']`);"
        "return row ? [...row.cells].map((cell) => cell.innerText) : [];",
        batch_id,
    )
    return texts


def write_history(stack: LocalStack) -> None:
    """Six hours of samples as a 5-minute tick leaves them (the stack's own tick adds seconds
    of them at the end): GPU readings that swing between ~60 and ~95 %, and up to half of eight
    warm workers idle now and then."""
    assert stack.aws is not None
    now = now_s()
    for i in range(HISTORY_SAMPLES):
        at = now - 6 * 3600 + 150 + i * HISTORY_EVERY_S
        utilization = round(78 + 17 * math.sin(i / 6), 1)
        idle = max(0, round(1.5 + 2 * math.sin(i / 4 + 1)))  # of 8 warm workers
        gpu = {"name": "NVIDIA H100", "utilization_percent": utilization, "memory_percent": 62.0}
        sample = HealthSample.model_validate(
            {
                "at": at,
                "expires_at": at + SAMPLE_TTL_S,
                "schedule": "pending",
                "in_schedule": True,
                "keep_hot_workers": 1,
                "work_waiting": i % 9 != 0,
                "pending_chunks": 4 + i % 5,
                "in_flight_chunks": 2,
                "workers": {"idle": idle, "running": 8 - idle},
                "readings": [{"worker_id": "w1", "status": "ready", "gpus": [gpu]}],
            }
        )
        health_store.put_sample(stack.aws.table, sample.model_dump())


def submit(client: OpenAI, lines: list[str]) -> str:
    file = client.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    return batch.id


def wait_batch(
    client: OpenAI, batch_id: str, done: Callable[[Any], bool], timeout: float = 90
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch) or time.monotonic() > deadline:
            return batch
        time.sleep(0.2)


def test_dashboard_lists_batches_with_progress_dead_letters_health_and_redrives(
    stack: LocalStack,
    browser: WebDriver,
    flaky_switch: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = sdk(stack)
    write_history(stack)
    # A batch whose three FLAKY requests fail for good while the switch is on...
    flaky_body = {"model": "tiny", "messages": [{"role": "user", "content": "FLAKY"}]}
    flaky_switch.touch()
    done_id = submit(
        client,
        [request_line(f"ok{i}") for i in range(12)]
        + [request_line(f"flaky{i}", body=flaky_body) for i in range(3)],
    )
    done = wait_batch(client, done_id, lambda b: b.status in ("completed", "failed"))
    assert done.status == "completed" and done.request_counts.failed == 3
    # ...and one still running: two chunks done, the third held by a slow request.
    slow_body = {"model": "tiny", "messages": [{"role": "user", "content": "standin-sleep=900"}]}
    running_id = submit(
        client,
        [request_line(f"r{i}") for i in range(24)] + [request_line("slow", body=slow_body)],
    )
    running = wait_batch(client, running_id, lambda b: b.request_counts.completed >= 20)
    assert running.status == "in_progress" and running.request_counts.completed == 20

    browser.get(f"{base_url(stack)}/dashboard#key={stack.api_key}")

    # The key left the address bar for this tab's sessionStorage.
    assert browser.current_url == f"{base_url(stack)}/dashboard"
    stored = browser.execute_script("return sessionStorage.getItem('hotbatch.key')")
    assert stored == stack.api_key
    # Both batches listed, with their state and counts.
    wait_for(browser, "the finished batch", lambda d: "completed" in row_text(d, done_id)[1:2])
    cells = row_text(browser, done_id)
    assert cells[0].startswith(done_id)
    assert cells[3].splitlines() == ["15 / 15", "3 failed"]
    wait_for(browser, "the running batch", lambda d: "20 / 25" in row_text(d, running_id)[3:4])
    cells = row_text(browser, running_id)
    assert cells[1] == "in progress" and cells[2] == "80 %"
    bar_width = browser.execute_script(
        "const bar = document.querySelector(`tr[data-batch-id='${arguments[0]}'] .progress`);"
        "return bar.querySelector('.done').getBoundingClientRect().width"
        " / bar.getBoundingClientRect().width;",
        running_id,
    )
    assert bar_width == pytest.approx(0.8, abs=0.02)
    # The cache hit rate from OpenAI's usage (the stand-in engine reports 1 cached token of 3).
    usage = done.usage
    expected = round(100 * usage.input_tokens_details.cached_tokens / usage.input_tokens)
    assert cells[7] == f"{expected} %"
    # hotbatch's own figures where the batch carries them; a dash where it does not.
    extra = httpx.get(
        f"{base_url(stack)}/v1/batches/{running_id}",
        headers={"Authorization": f"Bearer {stack.api_key}"},
    ).json()
    cost = (extra.get("hotbatch") or {}).get("cost_usd")
    assert cells[6].startswith("$") if cost is not None else cells[6] == "—"

    # The health components and the charts drawn from the samples.
    wait_for(
        browser,
        "four health cards",
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#components .card")) == 4,
    )
    names = [
        e.get_attribute("data-component") for e in browser.find_elements(By.CSS_SELECTOR, ".card")
    ]
    assert names == ["gpu", "workers", "queue", "endpoint"]
    wait_for(
        browser,
        "the GPU chart",
        lambda d: (
            d.find_element(By.ID, "chart-gpu").get_attribute("data-points") == str(HISTORY_SAMPLES)
        ),
    )
    lines, dots = browser.execute_script(
        "const chart = document.getElementById('chart-gpu');"
        "const lines = [...chart.querySelectorAll('polyline.series.s0')];"
        "return [lines.map((line) => line.points.numberOfItems),"
        " chart.querySelectorAll('circle.series.s0').length];"
    )
    assert (lines, dots) == ([HISTORY_SAMPLES], 0)  # one line: the 5-minute tick leaves no gap
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-idle .series.s0")

    # A batch's dead letters, from its row.
    browser.find_element(By.CSS_SELECTOR, f"tr[data-batch-id='{done_id}'] button").click()
    letters = wait_for(
        browser,
        "three dead letters",
        lambda d: (
            (rows := d.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr"))
            and len(rows) == 3
            and rows
        ),
    )
    custom_ids = sorted(row.find_elements(By.TAG_NAME, "td")[1].text for row in letters)
    assert custom_ids == ["flaky0", "flaky1", "flaky2"]
    assert letters[0].find_elements(By.TAG_NAME, "td")[2].text == "500"
    assert browser.find_element(By.ID, "redrive").text == "Redrive all (3)"

    shot = Path(
        os.environ.get("HOTBATCH_DASHBOARD_SCREENSHOT")
        or tmp_path_factory.mktemp("dashboard") / "dashboard.png"
    ).resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
    with capsys.disabled():
        sys.stdout.write(f"\ndashboard screenshot: {shot}\n")
    check_screenshot(shot)

    # Redrive from the page: the upstream recovered, the three requests now succeed.
    flaky_switch.unlink()
    browser.find_element(By.ID, "redrive").click()
    wait_for(
        browser,
        "the redrive answer",
        lambda d: d.find_element(By.ID, "redrive-result").text.startswith("Redrive started"),
    )
    # The counts move back before the batch finishes again: wait for both.
    wait_for(
        browser,
        "the redriven batch",
        lambda d: row_text(d, done_id)[1:4] == ["completed", "100 %", "15 / 15"],
    )
    wait_for(
        browser, "no dead letters", lambda d: d.find_element(By.ID, "dead-empty").is_displayed()
    )
    after = client.batches.retrieve(done_id)
    assert after.status == "completed" and after.request_counts is not None
    assert after.request_counts.failed == 0

    # Nothing the CSP refused, no script error.
    log: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    severe = [entry for entry in log if entry["level"] == "SEVERE"]
    assert severe == []


def test_dashboard_asks_for_a_key_and_refuses_a_wrong_one(
    stack: LocalStack, browser: WebDriver
) -> None:
    url = f"{base_url(stack)}/dashboard"
    browser.get(url)
    browser.execute_script("sessionStorage.clear()")
    browser.get(url)
    form = browser.find_element(By.ID, "key-form")
    assert form.is_displayed() and not browser.find_element(By.ID, "content").is_displayed()

    browser.find_element(By.ID, "key-input").send_keys("hb-not-a-key\n")
    wait_for(
        browser,
        "the refusal",
        lambda d: "API key was refused" in d.find_element(By.ID, "message").text,
    )
    assert browser.execute_script("return sessionStorage.getItem('hotbatch.key')") is None
    assert "hb-not-a-key" not in browser.current_url

    browser.find_element(By.ID, "key-input").send_keys(stack.api_key + "\n")
    wait_for(
        browser,
        "the batches",
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#batches tbody tr")) >= 2,
    )
    assert not form.is_displayed()
    assert browser.current_url == url  # the typed key never reached the address bar
    browser.find_element(By.ID, "forget").click()
    assert browser.execute_script("return sessionStorage.getItem('hotbatch.key')") is None
    assert form.is_displayed()
