"""The dashboard's pictures in docs, from a real local run: every figure on them is measured.

    python bench/dashboard_screenshot.py [--out docs] [--requests 12000] [--workers 1]

Starts the local stack (moto, the control plane, the local RunPod endpoint) with real workers
(`python -m handler` on vLLM's CPU build, the tiny generated model) and, through the openai SDK:

- `nightly-eval`: 400 requests, 5 of which ask for more tokens than the model's context holds;
  vLLM refuses those five, which end as dead letters. Completed.
- `import`: a file whose line 3 has no custom_id. Failed by the split, with its error.
- `ad-hoc`: 4,000 requests, cancelled from the dashboard's batch page (two clicks) once a fifth
  of them is done.
- `summaries`: `--requests` requests, still running when the pictures are taken.

Then it opens /dashboard in headless Chromium and saves `dashboard.png` (the overview, the
fleet over the last 15 minutes) and `dashboard-batch.png` (the running batch's page, in the dark
theme) in `--out`.
Costs are engine time at `--gpu-price-per-hour`, a price set for the run (the engine ran on the
CPU); there is no GPU, so the GPU chart says it has no reading. Takes 3–5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from stack_runs import wait_for_idle_workers, wait_until_done, worker_env

from infra.wait import wait_for

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch
    from selenium.webdriver.chrome.webdriver import WebDriver

REPO = Path(__file__).resolve().parents[1]
CHAT: Final = "/v1/chat/completions"
TOPICS = (
    "a batch of invoices",
    "a support ticket about a late order",
    "the release notes of version 2.3",
    "a customer review of a coffee grinder",
    "a meeting about the quarterly budget",
    "an incident report from the night shift",
)


def request(custom_id: str, text: str, max_tokens: int) -> str:
    body = {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "You write one short sentence."},
            {"role": "user", "content": text},
        ],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body})


def requests(prefix: str, count: int, max_tokens: int) -> list[str]:
    return [
        request(f"{prefix}-{i}", f"Summarise {TOPICS[i % len(TOPICS)]} (#{i}).", max_tokens)
        for i in range(count)
    ]


def submit(client: OpenAI, lines: list[str], name: str, **extra: Any) -> Batch:
    file = client.files.create(file=(f"{name}.jsonl", "\n".join(lines).encode()), purpose="batch")
    return client.batches.create(
        input_file_id=file.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"job": name},
        **extra,
    )


def done_share(client: OpenAI, batch_id: str) -> float:
    counts = client.batches.retrieve(batch_id).request_counts
    if counts is None or not counts.total:
        return 0.0
    return (counts.completed + counts.failed) / counts.total


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_page(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(driver, 60, poll_frequency=0.2).until(check, f"waited for {what}")


def run_batches(client: OpenAI, driver: WebDriver, url: str, summaries: int) -> Batch:
    """The four batches, the third cancelled on its page; the last one's id once it is
    running and a good part done."""
    from selenium.webdriver.common.by import By

    too_long = [request(f"eval-long-{i}", "Write a novel.", 100_000) for i in range(5)]
    nightly = submit(client, requests("eval", 395, 32) + too_long, "nightly-eval")
    nightly = wait_until_done(client, nightly)
    say(f"nightly-eval {nightly.status}: {nightly.request_counts}")

    broken = requests("import", 6, 16)
    broken[2] = broken[2].replace('"custom_id": "import-2", ', "")
    failed = wait_until_done(client, submit(client, broken, "import"))
    say(f"import {failed.status}: {failed.errors}")

    adhoc = submit(client, requests("adhoc", 4000, 32), "ad-hoc")
    wait_for(lambda: done_share(client, adhoc.id) >= 0.2, "ad-hoc at 20 %", timeout=600)
    driver.get(f"{url}#/batches/{adhoc.id}")
    cancel = wait_page(
        driver, "Cancel", lambda d: (b := d.find_element(By.ID, "cancel")).is_displayed() and b
    )
    cancel.click()
    cancel.click()
    cancelled = wait_until_done(client, adhoc)
    say(f"ad-hoc {cancelled.status}: {cancelled.request_counts}")

    running = submit(
        client, requests("sum", summaries, 48), "summaries", extra_body={"priority": "high"}
    )
    wait_for(lambda: done_share(client, running.id) >= 0.4, "summaries at 40 %", timeout=900)
    return client.batches.retrieve(running.id)


def pictures(driver: WebDriver, url: str, running: Batch, out: Path) -> list[Path]:
    from selenium.webdriver.common.by import By

    from tests.support.browser import save_whole_page

    overview, page = out / "dashboard.png", out / "dashboard-batch.png"
    driver.get(f"{url}#/")
    wait_page(
        driver,
        "the batches",
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#batches tbody tr")) >= 4,
    )
    driver.execute_script(
        "const hours = document.getElementById('hours');"
        "hours.value = '0.25'; hours.dispatchEvent(new Event('change'));"
    )
    wait_page(
        driver,
        "the fleet charts",
        lambda d: d.find_element(By.ID, "history").get_attribute("data-hours") == "0.25",
    )
    wait_page(
        driver,
        "the health cards",
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#components .card")) == 4,
    )
    time.sleep(1)  # one more poll: every figure of the same moment
    say(f"overview: {save_whole_page(driver, overview)}")
    driver.get(f"{url}#/batches/{running.id}")
    driver.find_element(By.ID, "theme").click()  # this one in the dark theme
    wait_page(
        driver,
        "the batch page",
        lambda d: d.find_element(By.ID, "view-batch").get_attribute("data-batch-id") == running.id,
    )
    time.sleep(1)
    say(f"batch page: {save_whole_page(driver, page)}")
    driver.execute_script("localStorage.removeItem('hotbatch.theme')")
    return [overview, page]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--requests", type=int, default=6000, help="of the running batch")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--gpu-price-per-hour", type=float, default=2.0)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # tests.support.browser: the tests' own Chromium

    from openai import OpenAI

    from infra.stack import LocalStack, StackConfig, worker_pool
    from infra.tiny_model import KV_CACHE_BYTES, generate
    from tests.support.browser import launch_chromium

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = str(generate(work / "tiny-model"))
        env = {**worker_env(model), "KV_CACHE_MEMORY_BYTES": KV_CACHE_BYTES}
        pool = worker_pool(
            workers=args.workers, env=env, workdir=work / "stack", idle_timeout_s=600
        )
        settings = {
            "chunk_max_requests": args.chunk_size,
            "gpu_price_per_hour": args.gpu_price_per_hour,
        }
        stack = LocalStack(StackConfig(pool=pool, tick_interval_s=1.0, settings=settings)).start()
        driver = launch_chromium(work / "chromium")
        try:
            assert stack.endpoint is not None and stack.endpoint.backend is not None
            say("waiting for the workers' engines")
            wait_for_idle_workers(stack.endpoint.backend)
            client = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
            assert stack.api is not None
            url = f"{stack.api.url}/dashboard"
            driver.get(f"{url}#key={stack.api_key}")
            running = run_batches(client, driver, url, args.requests)
            for path in pictures(driver, url, running, args.out):
                say(f"wrote {path}")
        finally:
            driver.quit()
            stack.stop()


if __name__ == "__main__":
    main()
