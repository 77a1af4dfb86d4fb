"""A real headless browser for tests of the status page: Debian's chromium + chromium-driver.

``chromium_driver(tmp_path)`` yields a selenium WebDriver on a fresh profile under
``tmp_path``, sized like a laptop screen. Without chromium, its driver or selenium the test
skips, or fails with the reason when ``PLPROBE_REQUIRE_TOOLS=1`` (``make test`` installs
them: APT_PACKAGES in the Makefile, selenium in the ``test`` extra).

The flags keep Chromium from reaching out on its own (no sync, component updates, QUIC or
background networking): a test must not depend on, or wait for, the internet.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"
#: a common laptop viewport
WINDOW = (1366, 900)
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
)


def _missing(reason: str) -> None:
    if os.environ.get("PLPROBE_REQUIRE_TOOLS") == "1":
        pytest.fail(f"PLPROBE_REQUIRE_TOOLS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_browser() -> tuple[str, str]:
    """(chromium binary, chromedriver binary), or skip/fail naming what is missing."""
    binary = next((b for b in map(shutil.which, CHROMIUM) if b), None)
    driver = shutil.which(DRIVER)
    if binary is None or driver is None:
        _missing("chromium and chromium-driver are not installed (Debian packages)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[test]')")
    assert binary is not None and driver is not None
    return binary, driver


@contextlib.contextmanager
def chromium_driver(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium driven by selenium, on a fresh profile; always quit."""
    binary, driver_path = require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def load_timing(driver: Any) -> dict[str, float]:
    """The Navigation Timing of the loaded page, in ms: response, DOM ready, load end, bytes.

    Read through WebDriver (not a page script: the page's CSP allows none).
    """
    entry = driver.execute_script(
        "const e = performance.getEntriesByType('navigation')[0];"
        "return {response: e.responseEnd - e.requestStart,"
        " dom: e.domContentLoadedEventEnd - e.startTime,"
        " load: e.loadEventEnd - e.startTime, bytes: e.transferSize,"
        " body: e.decodedBodySize};"
    )
    return {k: float(v) for k, v in entry.items()}


def console_errors(driver: Any) -> list[str]:
    """Browser console errors (CSP violations appear here), when the driver exposes them."""
    with contextlib.suppress(Exception):
        return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    return []
