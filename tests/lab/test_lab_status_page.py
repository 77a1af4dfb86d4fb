"""The status page of a real client daemon in the lab, read in a real headless Chromium.

The lab as a user runs it: ``lab up --with-agents`` (``agent.lab.deploy.start_deployment``:
``plprobe run`` in each client, its API forwarded to 127.0.0.1 — Chromium runs in the root
namespace, which has no route into the VPCs), then ``plprobe lab break nlb-sg-ingress``. The
page must show the failing verdict, the control and the fix. A screenshot is saved under the
test's tmp dir (docs/status-page.png is one of these). The client daemons probe every
``INTERVAL_S`` (test-only: the lab's configs say 10 s).

Skips without chromium/chromium-driver/selenium (fails with ``PLPROBE_REQUIRE_TOOLS=1``) and
without root/netns (fails with ``PLPROBE_REQUIRE_LAB=1``).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium_driver, load_timing, require_browser
from labfixtures import lab_up

from agent import cli
from agent.lab.deploy import start_deployment
from agent.lab.lab import Lab
from agent.sources.topology import load_topology

pytestmark = pytest.mark.lab

PATH = "client-2/apne1-az4/80"
CONTROL = "nlb-sg-ingress"
INTERVAL_S = 2
WAIT_S = 40.0


def wait_for(what: str, fn, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            last = fn()
            if last:
                return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def deployed() -> Iterator[tuple[Lab, str]]:
    """The lab with its daemons; the client-2 daemon's API address on this host."""
    require_browser()
    with lab_up(load_topology(), "page") as lab:
        assert lab.wait_health(lambda h: "healthy" in h.values(), timeout=15)
        status = start_deployment(lab, lambda line: None, client_interval=INTERVAL_S)
        [client] = [a for a in status["agents"] if a["node"] == "client-2"]
        yield lab, client["host_url"]


def verdict(url: str) -> dict | None:
    with urllib.request.urlopen(f"{url}/v1/verdicts?path={PATH}", timeout=3) as resp:
        verdicts = json.loads(resp.read())["verdicts"]
    return verdicts[0] if verdicts else None


@pytest.fixture
def broken(deployed: tuple[Lab, str]) -> Iterator[str]:
    lab, url = deployed
    try:
        assert cli.main(["lab", "break", CONTROL, "--name", lab.name]) == 0
        yield url
    finally:
        assert cli.main(["lab", "restore", "--name", lab.name]) == 0


def test_a_broken_control_is_visible_on_the_page_with_its_verdict_and_fix(
    broken: str, tmp_path: Path
) -> None:
    blamed = wait_for(
        f"the daemon to blame {CONTROL}",
        lambda: (v := verdict(broken)) and v["blocked_at"] == CONTROL and v,
    )
    from selenium.webdriver.common.by import By

    with chromium_driver(tmp_path) as driver:
        started = time.monotonic()
        driver.get(broken + "/")
        wall_ms = (time.monotonic() - started) * 1e3
        row = driver.find_element(By.ID, f"path-{PATH}")
        text = row.text
        assert "FAIL" in text  # the verdict (text-transform: uppercase)
        assert CONTROL in text and "NLB security group ingress" in text
        assert blamed["fix"] and blamed["fix"] in text.replace("\n", " ")  # type: ignore[index]
        shot = tmp_path / "status-page.png"
        driver.save_screenshot(str(shot))
        body = driver.find_element(By.TAG_NAME, "body").text
        (tmp_path / "status-page.txt").write_text(body)
        rounds = body.split("Recent rounds", 1)[1]
        assert PATH in rounds and "TIMEOUT" in rounds  # text-transform: uppercase
        assert shot.stat().st_size > 10_000
        timing = load_timing(driver)
    print(f"\nstatus page: {timing} wall {wall_ms:.0f} ms, screenshot {shot}")
