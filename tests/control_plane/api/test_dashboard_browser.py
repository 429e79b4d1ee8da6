"""`/dashboard` in real headless Chromium (Debian's `chromium` and `chromedriver`, driven by
selenium: tests/support/browser.py) against the local stack: moto's server, the control plane under
uvicorn, the local RunPod endpoint with real runpod SDK workers around the stand-in engine, and
the tick.

One stack, one browser and three batches for the whole module (a finished one with three dead
letters, one held running by a slow request, one failed by the split); the tests run in file
order and the later ones change the batches (retry, cancel). CI installs Chromium (.ci/run);
without it these tests fail, they never skip. The screenshot is written to a temporary folder
(or to $HOTBATCH_DASHBOARD_SCREENSHOT) and its path printed; docs/dashboard.png comes from a
real run instead (bench/dashboard_screenshot.py).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from selenium.common.exceptions import StaleElementReferenceException
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

HISTORY_EVERY_S, HISTORY_SAMPLES = 300, 72  # six hours of a 5-minute tick, written below
LIGHT_BG, DARK_BG = "rgb(246, 247, 249)", "rgb(13, 17, 23)"  # app.css --bg, both themes


@dataclass
class Batches:
    done: str  # completed, three requests dead-lettered
    running: str  # in progress, its last chunk held by a slow request
    failed: str  # failed by the split: line 2 has no custom_id


@pytest.fixture(scope="module")
def flaky_switch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("switch") / "fail"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, flaky_switch: Path) -> Iterator[LocalStack]:
    pool = worker_pool(
        workers=1,
        max_workers=3,
        command=STANDIN_WORKER,
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


@pytest.fixture(scope="module")
def batches(stack: LocalStack, flaky_switch: Path) -> Batches:
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
    # ...one the split fails (line 2 has no custom_id)...
    no_id = request_line("x").replace('"custom_id": "x", ', "")
    failed_id = submit(client, [request_line("a"), no_id, request_line("c")])
    done = wait_batch(client, done_id, lambda b: b.status in ("completed", "failed"))
    assert done.status == "completed" and done.request_counts.failed == 3
    assert wait_batch(client, failed_id, lambda b: b.status == "failed").status == "failed"
    # ...and one still running: two chunks done, the third held by a slow request.
    slow_body = {"model": "tiny", "messages": [{"role": "user", "content": "standin-sleep=900"}]}
    running_id = submit(
        client,
        [request_line(f"r{i}") for i in range(24)] + [request_line("slow", body=slow_body)],
    )
    running = wait_batch(client, running_id, lambda b: b.request_counts.completed >= 20)
    assert running.status == "in_progress" and running.request_counts.completed == 20
    return Batches(done=done_id, running=running_id, failed=failed_id)


@pytest.fixture(scope="module")
def page(stack: LocalStack, browser: WebDriver, batches: Batches) -> WebDriver:
    """The dashboard, opened with the key in the fragment, once for the module."""
    browser.get(f"{base_url(stack)}/dashboard#key={stack.api_key}")
    return browser


def sdk(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)


def base_url(stack: LocalStack) -> str:
    assert stack.api is not None
    return stack.api.url


def wait_for(
    driver: WebDriver, what: str, check: Callable[[WebDriver], Any], timeout: float = 60
) -> Any:
    # The page redraws what a poll changed: an element found a moment ago may be gone.
    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(check, f"waited for {what}")


def go(driver: WebDriver, fragment: str) -> None:
    """Follow an in-page link (no reload: the page's own router)."""
    driver.execute_script("location.hash = arguments[0]", fragment)


def row_text(driver: WebDriver, batch_id: str) -> list[str]:
    """The cells of the batch's row as the page shows them ([] while it is not listed)."""
    texts: list[str] = driver.execute_script(
        "const row = document.querySelector(`tr[data-batch-id='${arguments[0]}']`);"
        "return row ? [...row.cells].map((cell) => cell.innerText) : [];",
        batch_id,
    )
    return texts


def listed(driver: WebDriver) -> list[str]:
    ids: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#batches tbody tr')].map((r) => r.dataset.batchId)"
    )
    return ids


def dead_letters(driver: WebDriver) -> list[list[str]]:
    """The dead letters' cells, read in one go (a poll may redraw the rows in between)."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll('#dead-letters tbody tr')]"
        ".map((row) => [...row.cells].map((cell) => cell.innerText));"
    )
    return rows


def figure(driver: WebDriver, name: str) -> str:
    text: str = driver.execute_script(
        "const f = document.querySelector(`[data-figure='${arguments[0]}']`);"
        "return f ? f.innerText : '';",
        name,
    )
    return text


def background(driver: WebDriver) -> str:
    colour: str = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    return colour


def write_history(stack: LocalStack) -> None:
    """Six hours of samples as a 5-minute tick leaves them (the stack's own tick adds seconds
    of them at the end): GPU readings that swing between ~60 and ~95 %, and up to half of eight
    warm workers idle now and then. Test data for the charts' drawing only: the screenshot in
    docs is of a real run."""
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


def test_dashboard_lists_batches_with_progress_health_and_fleet_charts(
    stack: LocalStack,
    page: WebDriver,
    batches: Batches,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The key left the address bar for this tab's sessionStorage.
    assert page.current_url == f"{base_url(stack)}/dashboard"
    assert page.execute_script("return sessionStorage.getItem('hotbatch.key')") == stack.api_key
    # Every batch listed, with its state, counts and figures.
    wait_for(page, "the finished batch", lambda d: "completed" in row_text(d, batches.done)[1:2])
    cells = row_text(page, batches.done)
    assert cells[0].startswith(batches.done)
    assert cells[3].splitlines() == ["15 / 15", "3 failed"]
    assert cells[4].endswith("req/s")  # its throughput, from its own timestamps
    wait_for(page, "the running batch", lambda d: "20 / 25" in row_text(d, batches.running)[3:4])
    cells = row_text(page, batches.running)
    assert cells[1] == "in progress" and cells[2] == "80 %"
    bar_width = page.execute_script(
        "const bar = document.querySelector(`tr[data-batch-id='${arguments[0]}'] .progress`);"
        "return bar.querySelector('.done').getBoundingClientRect().width"
        " / bar.getBoundingClientRect().width;",
        batches.running,
    )
    assert bar_width == pytest.approx(0.8, abs=0.02)
    # hotbatch's own figures where the batch carries them; a dash where it does not.
    extra = httpx.get(
        f"{base_url(stack)}/v1/batches/{batches.running}",
        headers={"Authorization": f"Bearer {stack.api_key}"},
    ).json()
    cost = (extra.get("hotbatch") or {}).get("cost_usd")
    assert cells[6].startswith("$") if cost is not None else cells[6] == "—"
    # A failed batch says why in its row (the split's message names the line).
    errors = sdk(stack).batches.retrieve(batches.failed).errors
    assert errors is not None and errors.data and errors.data[0].message
    assert "Line 2" in errors.data[0].message
    assert row_text(page, batches.failed)[1].splitlines() == ["failed", errors.data[0].message]

    # The health components under readable names, and the charts drawn from the samples.
    wait_for(
        page,
        "four health cards",
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#components .card")) == 4,
    )
    cards = page.find_elements(By.CSS_SELECTOR, "#components .card")
    assert [c.get_attribute("data-component") for c in cards] == [
        "gpu",
        "workers",
        "queue",
        "endpoint",
    ]
    assert [c.find_element(By.TAG_NAME, "strong").text for c in cards] == [
        "GPUs",
        "Workers",
        "Queue",
        "Endpoint",
    ]
    labels = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#components dt")]
    assert "Chunks waiting" in labels and "Circuit breaker" in labels
    assert not [label for label in labels if "_" in label]
    wait_for(
        page,
        "the GPU chart",
        lambda d: (
            d.find_element(By.ID, "chart-gpu").get_attribute("data-points") == str(HISTORY_SAMPLES)
        ),
    )
    lines, dots = page.execute_script(
        "const chart = document.getElementById('chart-gpu');"
        "const lines = [...chart.querySelectorAll('polyline.series.s0')];"
        "return [lines.map((line) => line.points.numberOfItems),"
        " chart.querySelectorAll('circle.series.s0').length];"
    )
    assert (lines, dots) == ([HISTORY_SAMPLES], 0)  # one line: the 5-minute tick leaves no gap
    for chart in ("chart-busy", "chart-workers", "chart-queue"):
        assert page.find_elements(By.CSS_SELECTOR, f"#{chart} .series.s0"), chart

    shot = Path(
        os.environ.get("HOTBATCH_DASHBOARD_SCREENSHOT")
        or tmp_path_factory.mktemp("dashboard") / "dashboard.png"
    ).resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert page.save_screenshot(str(shot))
    with capsys.disabled():
        sys.stdout.write(f"\ndashboard screenshot: {shot}\n")
    check_screenshot(shot)


def test_status_filter_shows_only_the_batches_in_that_state(
    page: WebDriver, batches: Batches
) -> None:
    page.find_element(By.CSS_SELECTOR, "#filters [data-filter='failed']").click()
    wait_for(page, "only the failed batch", lambda d: listed(d) == [batches.failed])
    assert page.current_url.endswith("#/?status=failed")
    pressed = page.find_element(By.CSS_SELECTOR, "#filters [aria-pressed='true']")
    assert pressed.text.split() == ["Failed", "1"]

    page.find_element(By.CSS_SELECTOR, "#filters [data-filter='active']").click()
    wait_for(page, "only the running batch", lambda d: listed(d) == [batches.running])
    page.find_element(By.CSS_SELECTOR, "#filters [data-filter='cancelled']").click()
    wait_for(page, "no cancelled batch", lambda d: listed(d) == [])
    assert page.find_element(By.ID, "batches-empty").text.startswith("No cancelled batches")
    page.find_element(By.CSS_SELECTOR, "#filters [data-filter='all']").click()
    wait_for(page, "every batch", lambda d: len(listed(d)) == 3)


def test_failed_batch_page_shows_its_errors_and_no_cancel(
    stack: LocalStack, page: WebDriver, batches: Batches
) -> None:
    go(page, "#/?status=failed")
    wait_for(page, "the failed batch", lambda d: listed(d) == [batches.failed])
    page.find_element(By.CSS_SELECTOR, f"tr[data-batch-id='{batches.failed}'] a").click()

    errors = wait_for(
        page,
        "the batch's errors",
        lambda d: (e := d.find_element(By.ID, "batch-errors")).is_displayed() and e,
    )
    assert page.current_url.endswith(f"#/batches/{batches.failed}")
    expected = sdk(stack).batches.retrieve(batches.failed).errors
    assert expected is not None and expected.data
    first = expected.data[0]
    assert first.message
    row = errors.find_elements(By.CSS_SELECTOR, "tbody tr")[0]
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells == [str(first.line), first.code, first.param or "—", first.message]
    assert page.find_element(By.ID, "batch-status").text == "failed"
    assert not page.find_element(By.ID, "cancel").is_displayed()
    assert page.find_element(By.ID, "download-input").is_displayed()
    assert not page.find_element(By.ID, "download-output").is_displayed()


def test_finished_batch_page_shows_figures_progress_dead_letters_and_retries(
    stack: LocalStack,
    page: WebDriver,
    batches: Batches,
    flaky_switch: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    downloads = tmp_path_factory.mktemp("downloads")
    page.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    go(page, f"#/batches/{batches.done}")
    wait_for(page, "its figures", lambda d: figure(d, "requests").startswith("Requests\n15 / 15"))
    assert page.find_element(By.ID, "batch-id").text == batches.done
    assert figure(page, "requests").splitlines()[-1] == "3 failed"
    assert figure(page, "throughput").splitlines()[-1].endswith("req/s")
    assert figure(page, "chunks").splitlines()[1:] == ["2", "2 done"]
    assert not page.find_element(By.ID, "cancel").is_displayed()
    assert not page.find_element(By.ID, "batch-errors").is_displayed()
    # Progress over time: the start, then one point per chunk result.
    points = page.find_element(By.ID, "chart-progress").get_attribute("data-points")
    assert points in ("2", "3")  # two chunks: one point each unless they ended in one second
    steps = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#timeline .step")]
    assert steps == ["created", "in progress", "finalizing", "completed"]
    letters = wait_for(
        page, "three dead letters", lambda d: len(dead_letters(d)) == 3 and dead_letters(d)
    )
    assert sorted(cells[1] for cells in letters) == ["flaky0", "flaky1", "flaky2"]
    assert {cells[2] for cells in letters} == {"500"}
    assert page.find_element(By.ID, "redrive").text == "Retry all (3)"

    # Download: the output file, fetched with the key and saved from the page.
    page.find_element(By.ID, "download-output").click()
    saved = downloads / f"{batches.done}_output.jsonl"
    wait_for(page, "the download", lambda d: saved.is_file(), timeout=10)
    assert len(saved.read_bytes().splitlines()) == 12

    # Retry from the page: the upstream recovered, the three requests now succeed.
    flaky_switch.unlink()
    page.find_element(By.ID, "redrive").click()
    wait_for(
        page,
        "the retry answer",
        lambda d: d.find_element(By.ID, "redrive-result").text.startswith("Retry started"),
    )
    wait_for(
        page,
        "the retried batch",
        lambda d: (
            d.find_element(By.ID, "batch-status").text == "completed"
            and figure(d, "requests").splitlines()[1:] == ["15 / 15", "none failed"]
        ),
    )
    wait_for(page, "no dead letters", lambda d: d.find_element(By.ID, "dead-empty").is_displayed())
    after = sdk(stack).batches.retrieve(batches.done)
    assert after.status == "completed" and after.request_counts is not None
    assert after.request_counts.failed == 0


def test_running_batch_page_cancels_it(
    stack: LocalStack, page: WebDriver, batches: Batches
) -> None:
    go(page, f"#/batches/{batches.running}")
    cancel = wait_for(
        page,
        "the cancel button",
        lambda d: (b := d.find_element(By.ID, "cancel")).is_displayed() and b,
    )
    # 20 from finished chunks, then the held chunk's own progress reports: all but the slow one.
    assert figure(page, "requests").splitlines()[1] in ("20 / 25", "24 / 25")
    assert page.find_element(By.ID, "batch-status").text == "in progress"
    cancel.click()  # arms it
    assert cancel.text == "Click again to cancel"
    assert sdk(stack).batches.retrieve(batches.running).status == "in_progress"
    cancel.click()
    wait_for(
        page,
        "the cancel answer",
        lambda d: d.find_element(By.ID, "action-result").text.startswith("Cancel requested"),
    )
    after = wait_batch(sdk(stack), batches.running, lambda b: b.status == "cancelled", timeout=30)
    assert after.status == "cancelled"
    wait_for(
        page,
        "the page to say so",
        lambda d: d.find_element(By.ID, "batch-status").text == "cancelled",
    )
    assert not page.find_element(By.ID, "cancel").is_displayed()

    # Nothing the CSP refused, no script error, on any page so far.
    log: list[dict[str, Any]] = page.get_log("browser")  # type: ignore[no-untyped-call]
    severe = [entry for entry in log if entry["level"] == "SEVERE"]
    assert severe == []


def test_dark_theme_follows_the_system_and_the_toggle(page: WebDriver) -> None:
    go(page, "#/")
    page.execute_script("localStorage.removeItem('hotbatch.theme')")
    page.refresh()
    toggle = page.find_element(By.ID, "theme")
    assert background(page) == LIGHT_BG and toggle.text == "Dark theme"
    dark = {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    page.execute_cdp_cmd("Emulation.setEmulatedMedia", dark)
    try:
        wait_for(page, "the system's dark theme", lambda d: background(d) == DARK_BG, timeout=5)
        assert toggle.text == "Light theme"
        toggle.click()
        assert background(page) == LIGHT_BG and toggle.text == "Dark theme"
        page.refresh()  # the choice is kept
        assert background(page) == LIGHT_BG
        page.find_element(By.ID, "theme").click()
        assert background(page) == DARK_BG
    finally:
        page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        page.execute_script("localStorage.removeItem('hotbatch.theme')")


def test_dashboard_asks_for_a_key_and_refuses_a_wrong_one(
    stack: LocalStack, page: WebDriver
) -> None:
    url = f"{base_url(stack)}/dashboard"
    page.execute_script("sessionStorage.clear()")
    page.get(url)
    form = page.find_element(By.ID, "key-form")
    assert form.is_displayed() and not page.find_element(By.ID, "content").is_displayed()

    page.find_element(By.ID, "key-input").send_keys("hb-not-a-key\n")
    wait_for(
        page,
        "the refusal",
        lambda d: "API key was refused" in d.find_element(By.ID, "message").text,
    )
    assert page.execute_script("return sessionStorage.getItem('hotbatch.key')") is None
    assert "hb-not-a-key" not in page.current_url

    page.find_element(By.ID, "key-input").send_keys(stack.api_key + "\n")
    wait_for(
        page,
        "the batches",
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#batches tbody tr")) >= 2,
    )
    assert not form.is_displayed()
    assert page.current_url == url  # the typed key never reached the address bar
    page.find_element(By.ID, "forget").click()
    assert page.execute_script("return sessionStorage.getItem('hotbatch.key')") is None
    assert form.is_displayed()
