"""Replay end to end: ``lab snapshot`` of the reference lab -> ``lab up --from-snapshot`` ->
``lab check`` gives the same verdicts as the original lab, healthy and with a control broken;
``lab export`` of the replayed lab re-creates it.

Both labs run their provider agents, as deployed: the verdicts rest on the provider's evidence,
which comes back over the responder listener (port 9721) through the endpoint, and that
listener's target group is healthy only while the agents answer on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labfixtures import assert_no_leftovers, require_lab, unique_lab_name

from agent.lab import agents
from agent.lab.lab import Lab
from agent.model import to_plain
from agent.sources.topology import load_topology

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
#: what a verdict says about a path (not when it was checked or the raw evidence)
VERDICT_KEYS = ("path", "status", "stage", "blocked_at", "candidates", "fix")


def plprobe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "NO_COLOR": "1"},
    )


def healthy(lab: Lab) -> bool:
    """Every target group healthy: the service's and, with the agents up, the responder's."""
    return lab.wait_health(lambda h: bool(h) and all(s == "healthy" for s in h.values()), 20)


def verdicts(lab: Lab) -> dict[str, Any]:
    """Client -> (status, verdicts) of ``plprobe lab check --output json``."""
    proc = plprobe("lab", "check", "--name", lab.name, "--output", "json")
    assert proc.returncode in (0, 1), proc.stderr
    clients = json.loads(proc.stdout)["clients"]
    return {
        client: (
            body["status"],
            [{k: v.get(k) for k in VERDICT_KEYS} for v in body["verdicts"]],
        )
        for client, body in clients.items()
    }


@pytest.fixture(scope="module")
def replayed(reference_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A second lab built by ``lab up --from-snapshot`` from the reference lab's snapshot."""
    require_lab()
    agents.start_agents(reference_lab, reference_lab.progress)
    assert healthy(reference_lab)
    out = tmp_path_factory.mktemp("snapshot")
    proc = plprobe("lab", "snapshot", str(out), "--name", reference_lab.name)
    assert proc.returncode == 0, proc.stderr
    lab = Lab(unique_lab_name("rp"))
    try:
        proc = plprobe(
            "lab", "up", "--name", lab.name, "--output", "json",
            "--from-snapshot", str(out / "consumer"), str(out / "provider"),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["omitted"] == [], "the lab's own snapshot replays completely"
        assert "replay: assumed" in proc.stderr, "assumptions are printed"
        agents.start_agents(lab, lab.progress)
        assert healthy(lab)
        yield lab
    finally:
        lab.down()
        assert_no_leftovers(lab.name)


def test_a_replayed_healthy_lab_checks_like_the_original(reference_lab: Lab, replayed: Lab) -> None:
    original = verdicts(reference_lab)
    assert {status for status, _ in original.values()} == {"pass"}
    assert verdicts(replayed) == original


def test_a_replayed_lab_with_a_broken_control_checks_like_the_original(
    restore_after: Lab, replayed: Lab
) -> None:
    restore_after.break_control("nlb-sg-ingress", "client-2")
    proc = plprobe(
        "lab", "break", "nlb-sg-ingress", "--client", "client-2", "--name", replayed.name
    )
    assert proc.returncode == 0, proc.stderr
    try:
        assert healthy(restore_after)
        assert healthy(replayed)
        original = verdicts(restore_after)
        assert original["client-2"][1][0]["blocked_at"] == "nlb-sg-ingress"
        assert verdicts(replayed) == original
    finally:
        replayed.restore()


def test_lab_export_of_the_replayed_lab_loads_to_its_topology(replayed: Lab) -> None:
    proc = plprobe("lab", "export", "--name", replayed.name)
    assert proc.returncode == 0, proc.stderr
    exported = to_plain(load_topology("<export>", text=proc.stdout))
    running = to_plain(replayed.topology)
    assert isinstance(exported, dict) and isinstance(running, dict)
    exported.pop("source")
    running.pop("source")
    assert exported == running


def test_the_replayed_document_is_kept_in_the_state_dir_for_lab_apply(replayed: Lab) -> None:
    text = (replayed.dir / "replay.yaml").read_text()
    assert text.startswith("# plprobe lab up --from-snapshot")
    assert load_topology("<kept>", text=text).endpoints.keys() == replayed.topology.endpoints.keys()
