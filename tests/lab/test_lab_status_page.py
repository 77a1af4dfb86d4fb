"""The status page of a real client daemon in the lab, read in a real headless Chromium.

A reference lab; ``plprobe run`` (client role) inside client-2 with a 2 s interval and the
lab's snapshot as its configuration view; its API exposed on 127.0.0.1 by
``agent.lab.expose`` (Chromium runs in the root namespace, which has no route into the VPCs).
``lab break nlb-sg-ingress``, the snapshot re-written (as ``lab break`` does for deployed
agents), then the page must show the failing verdict, the control and the fix. A screenshot
is saved under the test's tmp dir (docs/status-page.png is one of these).

Skips without chromium/chromium-driver/selenium (fails with ``PLPROBE_REQUIRE_TOOLS=1``) and
without root/netns (fails with ``PLPROBE_REQUIRE_LAB=1``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from browser import chromium_driver, load_timing, require_browser
from labfixtures import lab_up

from agent.lab.expose import exposed
from agent.lab.lab import Lab
from agent.lab.snapshot import write_snapshot
from agent.sources.topology import TOPOLOGIES, load_topology

pytestmark = pytest.mark.lab

CLIENT_CONFIG = TOPOLOGIES / "client-2.yaml"
PATH = "client-2/apne1-az4/80"
CONTROL = "nlb-sg-ingress"
AGENT_PORT = 9720
WAIT_S = 40.0


@dataclass
class Deployed:
    lab: Lab
    work: Path
    url: str  # the client daemon's API, exposed on loopback

    def snapshot(self) -> None:
        write_snapshot(self.lab.aws_view(), self.work / "snapshot", self.lab.target_health())

    def verdict(self) -> dict | None:
        with urllib.request.urlopen(f"{self.url}/v1/verdicts?path={PATH}", timeout=3) as resp:
            verdicts = json.loads(resp.read())["verdicts"]
        return verdicts[0] if verdicts else None


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
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    require_browser()
    work = tmp_path_factory.mktemp("status-page")
    with lab_up(load_topology(), "page") as lab:
        assert lab.wait_health(lambda h: "healthy" in h.values(), timeout=15)
        st = Deployed(lab=lab, work=work, url="")
        st.snapshot()
        client = yaml.safe_load(CLIENT_CONFIG.read_text())
        client.update(
            interval=2,
            config_sources={
                "snapshot_dirs": [str(work / "snapshot" / d) for d in ("consumer", "provider")],
                "refresh_interval": 1,
            },
        )
        config = work / "client-2.yaml"
        config.write_text(yaml.safe_dump(client, sort_keys=False))
        log = work / "client-2.log"
        argv = [sys.executable, "-m", "agent", "run", "--config", str(config)]
        with open(log, "w") as fh:
            proc = lab.spawn(
                "client-2",
                argv,
                env={"PLPROBE_KEY": "lab-status-page-test-key-0123456789abcdef"},
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )

        def listening() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"client daemon exited: {log.read_text()[-800:]}", pytrace=False)
            return "plprobe run: API on" in log.read_text()

        wait_for("the client daemon to listen", listening, timeout=15)
        with exposed(lab.ns("client-2"), AGENT_PORT) as port:
            st.url = f"http://127.0.0.1:{port}"
            yield st


@pytest.fixture
def broken(deployed: Deployed) -> Iterator[Deployed]:
    try:
        deployed.lab.break_control(CONTROL)
        deployed.snapshot()
        yield deployed
    finally:
        deployed.lab.restore()
        deployed.snapshot()


def test_a_broken_control_is_visible_on_the_page_with_its_verdict_and_fix(
    broken: Deployed, tmp_path: Path
) -> None:
    verdict = wait_for(
        f"the daemon to blame {CONTROL}",
        lambda: (v := broken.verdict()) and v["blocked_at"] == CONTROL and v,
    )
    from selenium.webdriver.common.by import By

    with chromium_driver(tmp_path) as driver:
        started = time.monotonic()
        driver.get(broken.url + "/")
        wall_ms = (time.monotonic() - started) * 1e3
        row = driver.find_element(By.ID, f"path-{PATH}")
        text = row.text
        assert "FAIL" in text  # the verdict (text-transform: uppercase)
        assert CONTROL in text and "NLB security group ingress" in text
        assert verdict["fix"] and verdict["fix"].split()[0] in text  # type: ignore[index]
        shot = tmp_path / "status-page.png"
        driver.save_screenshot(str(shot))
        body = driver.find_element(By.TAG_NAME, "body").text
        (tmp_path / "status-page.txt").write_text(body)
        rounds = body.split("Recent rounds", 1)[1]
        assert PATH in rounds and "TIMEOUT" in rounds  # text-transform: uppercase
        assert shot.stat().st_size > 10_000
        timing = load_timing(driver)
    print(f"\nstatus page: {timing} wall {wall_ms:.0f} ms, screenshot {shot}")
