"""Helpers for tests that build a real lab (root + network namespaces).

Test modules under ``tests/lab/`` (name them ``test_lab_*.py``: pytest needs unique basenames)
get the fixtures of ``conftest.py`` (``reference_lab``, ``restore_after``) automatically and
import these helpers::

    from labfixtures import endpoint_name, lab_up

    pytestmark = pytest.mark.lab

    @pytest.fixture(scope="module")
    def my_lab():
        with lab_up(load_topology("configs/lab/multi-az.yaml"), "mz") as lab:
            yield lab

* every lab gets a unique name (other engineers run labs on the same machine);
* teardown always runs, then ``assert_no_leftovers`` checks that no namespace, /etc/netns
  entry, state directory or process of that lab remains, even when a test failed;
* without root or netns support the lab tests skip, or FAIL with a clear message when
  ``PLPROBE_REQUIRE_LAB=1`` (CI sets it, so a broken runner cannot pass silently).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from agent.lab.lab import Lab, lab_namespaces
from agent.lab.plan import NETNS_ETC, ns_prefix, state_dir
from agent.lab.procs import lab_pids
from agent.model import Topology


def lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab tests need root"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
        subprocess.run(["nft", "--version"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"network namespaces / nftables unavailable: {exc}"
    return None


def require_lab() -> None:
    """Skip (or fail, with PLPROBE_REQUIRE_LAB=1) when a lab cannot be built here."""
    reason = lab_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("PLPROBE_REQUIRE_LAB") == "1":
        pytest.fail(f"PLPROBE_REQUIRE_LAB=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def unique_lab_name(prefix: str = "t") -> str:
    """A lab name no concurrent run uses: ``<prefix><8 hex>`` (<= 12 characters)."""
    return f"{prefix[:4]}{secrets.token_hex(4)}"


def leftovers(name: str) -> list[str]:
    found = [f"netns {ns}" for ns in lab_namespaces(name)]
    with contextlib.suppress(FileNotFoundError):
        found += [f"/etc/netns/{e}" for e in os.listdir(NETNS_ETC) if e.startswith(ns_prefix(name))]
    if state_dir(name).exists():
        found.append(str(state_dir(name)))
    found += [f"process {pid}" for pid in sorted(lab_pids(name))]
    return found


def assert_no_leftovers(name: str) -> None:
    left = leftovers(name)
    assert not left, f"lab {name} left behind: {', '.join(left)}"


@contextlib.contextmanager
def lab_up(topology: Topology, prefix: str = "t") -> Iterator[Lab]:
    """A lab with a unique name, always torn down and checked for leftovers."""
    require_lab()
    lab = Lab(unique_lab_name(prefix))
    try:
        lab.up(topology)
        yield lab
    finally:
        lab.down()
        assert_no_leftovers(lab.name)


def endpoint_name(lab: Lab, az: str | None = None) -> str:
    """The regional DNS name of the lab's (first) endpoint, or its zonal name in ``az``."""
    topo = lab.topology
    ep = sorted(topo.endpoints.values(), key=lambda e: e.name)[0]
    names = sorted(topo.endpoint_dns_names(ep), key=len)
    if az is None:
        return names[0]
    return next(n for n in names if f"-{az}." in n)


#: plprobe's responder port in the lab topologies: its target group is healthy only while
#: provider agents run (``lab up --with-agents``), so service-health checks leave it out
RESPONDER_PORT = 9721


def service_health(lab: Lab, health: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    """``lab.target_health()`` without the responder port's target group."""
    groups = lab.topology.target_groups
    return {
        (tg, iid): state
        for (tg, iid), state in health.items()
        if tg not in groups or groups[tg].port != RESPONDER_PORT
    }
