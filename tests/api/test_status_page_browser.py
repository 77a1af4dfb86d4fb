"""The status page in a real headless Chromium: escaping, CSP and layout as a browser sees them.

The lab test (tests/lab/test_lab_status_page.py) checks the page of a real daemon after a real
break; this one needs no root: an API server in the test's loop with hostile values, and the
browser (driven from a worker thread, so the loop keeps serving) loads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from browser import chromium_driver, console_errors, load_timing, require_browser
from prometheus_client import CollectorRegistry
from test_status_page import EVIL, hostile_data, sample_data

from agent.api.server import ApiConfig, ApiDeps, build_app
from agent.metrics import make_metrics


@pytest.fixture(autouse=True)
def _browser_present() -> None:
    require_browser()


async def serve_page(deps: ApiDeps) -> TestServer:
    server = TestServer(build_app(deps), host="127.0.0.1")
    await server.start_server()
    return server


def deps_from(data: Any) -> ApiDeps:
    reg = CollectorRegistry()
    deps = ApiDeps(registry=reg, metrics=make_metrics(reg), config=ApiConfig(agent_id="client-2"))
    deps.verdicts = data.verdicts
    deps.evidence = data.evidence
    for rec in reversed(data.rounds):
        deps.history.record(
            rec.endpoint, rec.started_at, rec.finished_at, rec.evidence, rec.provider_error
        )
    return deps


@pytest.fixture
async def page_url() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(data: Any) -> str:
        server = await serve_page(deps_from(data))
        servers.append(server)
        return str(server.make_url("/"))

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


def visit(tmp_path: Path, url: str) -> dict[str, Any]:
    """Load ``url`` and read what a person would see (runs in a worker thread)."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    with chromium_driver(tmp_path) as driver:
        driver.get(url)
        alert = True
        try:
            driver.switch_to.alert.dismiss()
        except NoAlertPresentException:
            alert = False
        fail_cells = driver.find_elements(By.CSS_SELECTOR, "td.grid.fail")
        return {
            "text": driver.find_element(By.TAG_NAME, "body").text,
            "alert": alert,
            "scripts": len(driver.find_elements(By.TAG_NAME, "script")),
            "imgs": len(driver.find_elements(By.TAG_NAME, "img")),
            "fail_bg": fail_cells[0].value_of_css_property("background-color")
            if fail_cells
            else None,
            "errors": console_errors(driver),
            "timing": load_timing(driver),
            "width": driver.execute_script("return document.documentElement.scrollWidth"),
        }


async def test_injected_markup_is_shown_as_text_and_never_runs(tmp_path: Path, page_url) -> None:
    seen = await asyncio.to_thread(visit, tmp_path, await page_url(hostile_data()))
    assert not seen["alert"]
    assert seen["scripts"] == 0 and seen["imgs"] == 0
    assert EVIL in seen["text"]  # the hostile value, shown literally


async def test_the_inline_style_applies_under_the_strict_csp(tmp_path: Path, page_url) -> None:
    seen = await asyncio.to_thread(visit, tmp_path, await page_url(sample_data()))
    assert seen["fail_bg"] == "rgba(255, 235, 233, 1)"  # .fail: the stylesheet's hash matched
    assert not [e for e in seen["errors"] if "Content Security Policy" in e], seen["errors"]


async def test_a_blocked_path_reads_on_a_laptop_screen_without_scrolling_sideways(
    tmp_path: Path, page_url
) -> None:
    seen = await asyncio.to_thread(visit, tmp_path, await page_url(sample_data()))
    assert "FAIL" in seen["text"] and "nlb-sg-ingress" in seen["text"]
    assert "add an inbound rule for tcp/80" in seen["text"]
    assert seen["width"] <= 1366
