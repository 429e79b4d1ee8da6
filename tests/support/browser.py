"""Headless Chromium for the dashboard tests and bench/dashboard_screenshot.py: Debian's
`chromium` driven through its own `chromedriver` (the same version, both from apt) by selenium,
so nothing downloads a browser.

Missing Chromium fails the test (CI installs it in .ci/run); it never skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = Path(os.environ.get("HOTBATCH_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("HOTBATCH_CHROMEDRIVER", "/usr/bin/chromedriver"))
VIEWPORT = (1440, 1120)
PROGRESS_GREEN = (0x1A, 0x7F, 0x37)  # app.css --green: the done part of a progress bar
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def start_chromium(profile: Path, viewport: tuple[int, int] = VIEWPORT) -> WebDriver:
    """A fresh headless Chromium (its own profile folder) whose console log can be read; the
    test fails where Chromium is missing."""
    try:
        return launch_chromium(profile, viewport)
    except FileNotFoundError as missing:
        pytest.fail(str(missing), pytrace=False)


def launch_chromium(profile: Path, viewport: tuple[int, int] = VIEWPORT) -> WebDriver:
    """`start_chromium` outside pytest: FileNotFoundError names what to install."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"Chromium is needed for the dashboard and {', '.join(missing)} is missing: "
            "apt-get install -y chromium chromium-driver (.ci/run does)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={viewport[0]},{viewport[1]}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    # The viewport exactly (--window-size counts the window's frame too), so a screenshot's size
    # is known.
    set_viewport(driver, viewport)
    driver.set_page_load_timeout(30)
    return driver


def set_viewport(driver: WebDriver, viewport: tuple[int, int]) -> None:
    metrics = {"width": viewport[0], "height": viewport[1], "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def save_whole_page(driver: WebDriver, path: Path, width: int = VIEWPORT[0]) -> tuple[int, int]:
    """A screenshot of the whole page, not only what the viewport shows; its size."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    size = (width, height)
    set_viewport(driver, size)
    try:
        if not driver.save_screenshot(str(path)):
            raise RuntimeError(f"Chromium wrote no screenshot to {path}")
    finally:
        set_viewport(driver, VIEWPORT)
    return size


def check_screenshot(path: Path, viewport: tuple[int, int] = VIEWPORT) -> None:
    """Not blank: the viewport's size, many colours, none covering nearly everything, and the
    green of the progress bars painted."""
    assert path.stat().st_size > 30_000
    with Image.open(path) as image:
        assert image.size == viewport
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200
    assert max(count for count, _ in colours) < 0.9 * viewport[0] * viewport[1]
    green = next((count for count, colour in colours if colour == PROGRESS_GREEN), 0)
    assert green > 500
