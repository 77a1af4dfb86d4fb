"""Privileges in the lab: root is refused unless asked for, and a running provider agent keeps
only CAP_NET_RAW (its sniffer may reopen on reload), nothing else root had.

The lab's agents run as root inside ``ip netns exec`` and say so explicitly
(``PLPROBE_ALLOW_ROOT=1`` in every lab process's environment, agent/lab/procs.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from labfixtures import lab_up

from agent.lab import agents
from agent.lab.lab import Lab
from agent.privileges import ALLOW_ROOT_ENV, CAP_NET_RAW, capabilities
from agent.sources.topology import load_topology

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def priv_lab() -> Iterator[Lab]:
    with lab_up(load_topology(), "pv") as lab:
        agents.start_agents(lab, lab.progress)
        yield lab


def test_a_provider_agent_in_the_lab_keeps_only_cap_net_raw(priv_lab: Lab) -> None:
    running = agents.agents_running(priv_lab)
    assert running and all(running.values())
    for node in running:
        pid = agents._pid(priv_lab, node)
        assert pid is not None
        caps = capabilities(Path(f"/proc/{pid}/status").read_text())
        assert caps["CapEff"] == caps["CapPrm"] == 1 << CAP_NET_RAW, node
        assert caps["CapInh"] == caps["CapAmb"] == 0, node


def test_plprobe_observe_as_root_without_the_flag_exits_2_in_the_lab(priv_lab: Lab) -> None:
    node = next(iter(agents.agents_running(priv_lab)))
    env = {k: v for k, v in priv_lab.env().items() if k != ALLOW_ROOT_ENV}
    argv = [sys.executable, "-m", "agent", "observe", "--config", str(agents.PROVIDER_CONFIG)]
    proc = subprocess.run(
        ["ip", "netns", "exec", priv_lab.ns(node), *argv],
        env={**env, "PLPROBE_KEY": "k" * 64},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refuses to run as root" in proc.stderr and "Traceback" not in proc.stderr


def test_the_lab_says_root_is_intended_for_its_processes(priv_lab: Lab) -> None:
    assert priv_lab.env()[ALLOW_ROOT_ENV] == "1"
    assert os.geteuid() == 0
