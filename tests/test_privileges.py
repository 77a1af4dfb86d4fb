"""agent/privileges.py: root is refused unless asked for; capabilities not needed are dropped.

Dropping is done in a child process (``python -c``): the test process keeps its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.privileges import (
    CAP_NET_BIND_SERVICE,
    CAP_NET_RAW,
    RootRefused,
    capabilities,
    check_root,
    needed_capabilities,
)

REPO = Path(__file__).resolve().parents[1]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (capabilities to drop)")


def test_root_is_refused_with_a_message_that_says_how_to_run_instead() -> None:
    with pytest.raises(RootRefused) as info:
        check_root("run", euid=0, env={})
    assert info.value.exit_code == 2
    assert "CAP_NET_RAW" in str(info.value) and "--allow-root" in str(info.value)


def test_root_is_accepted_with_the_flag_or_the_environment() -> None:
    check_root("run", allow=True, euid=0, env={})
    check_root("run", euid=0, env={"PLPROBE_ALLOW_ROOT": "1"})


def test_an_unprivileged_user_is_never_refused() -> None:
    check_root("run", euid=10001, env={})


def test_capabilities_are_read_from_proc_status() -> None:
    caps = capabilities("CapInh:\t0000000000000000\nCapEff:\t0000000000002000\n")
    assert caps == {"CapInh": 0, "CapEff": 1 << CAP_NET_RAW}


def test_net_raw_is_kept_only_while_syn_probes_or_the_sniffer_may_reopen() -> None:
    assert needed_capabilities(raw=True, ports=[9720]) == {CAP_NET_RAW}
    assert needed_capabilities(raw=False, ports=[9720, 9721]) == set()
    assert needed_capabilities(raw=False, ports=[443]) == {CAP_NET_BIND_SERVICE}


def _caps_after_drop(keep: str) -> dict[str, int]:
    code = (
        "import json; from agent.privileges import drop_capabilities as d; "
        f"print(json.dumps(d({keep})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    return dict(__import__("json").loads(out.stdout))


@as_root
def test_dropping_keeps_only_net_raw_in_every_set() -> None:
    caps = _caps_after_drop("{13}")
    assert caps["CapEff"] == caps["CapPrm"] == 1 << CAP_NET_RAW
    assert caps["CapInh"] == 0 and caps["CapAmb"] == 0


@as_root
def test_dropping_everything_leaves_no_capability() -> None:
    caps = _caps_after_drop("set()")
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapInh"] == 0
