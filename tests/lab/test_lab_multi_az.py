"""Two AZs, targets in one, cross-zone off: the AZ without targets fails, the other passes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labfixtures import endpoint_name, lab_up

from agent.lab.lab import Lab
from agent.sources.topology import load_topology

pytestmark = pytest.mark.lab

MULTI_AZ = Path(__file__).resolve().parents[2] / "configs" / "lab" / "multi-az.yaml"


@pytest.fixture(scope="module")
def multi_az_lab() -> Iterator[Lab]:
    with lab_up(load_topology(MULTI_AZ), "maz") as lab:
        yield lab


def test_the_az_with_targets_passes(multi_az_lab: Lab) -> None:
    name = endpoint_name(multi_az_lab, "ap-northeast-1a")
    assert multi_az_lab.http_get("client-2", name, timeout=1.0)["result"] == "ok"


def test_the_az_without_targets_fails_silently(multi_az_lab: Lab) -> None:
    name = endpoint_name(multi_az_lab, "ap-northeast-1c")
    assert multi_az_lab.http_get("client-2", name, timeout=1.0)["result"] == "timeout"


def test_only_the_az_with_targets_has_healthy_targets(multi_az_lab: Lab) -> None:
    # every NLB node checks every target: wait for the 1a node itself, not for any node
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        healthy = multi_az_lab.healthy_targets()
        if healthy.get("ap-northeast-1a") == ["server-1", "server-2"]:
            break
        time.sleep(0.1)
    assert healthy["ap-northeast-1a"] == ["server-1", "server-2"]
    status = multi_az_lab.status()["health"]
    assert status["nlb-ap-northeast-1c"]["active"] == {}
