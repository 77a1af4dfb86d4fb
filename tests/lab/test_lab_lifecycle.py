"""lab up rolls back when it fails half way; lab down also cleans a crashed run's leftovers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

import pytest
from labfixtures import assert_no_leftovers, leftovers, require_lab, unique_lab_name

from agent.errors import ApplyError, LabError
from agent.lab.commands import SubprocessRunner
from agent.lab.lab import Lab, teardown
from agent.sources.topology import load_topology

pytestmark = pytest.mark.lab


class _FailOnNlbRuleset(SubprocessRunner):
    """The real runner, except that applying the NLB node's ruleset fails."""

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        if "nft" in argv and "-c" not in argv and any("-nlb-" in a for a in argv):
            raise ApplyError(argv, 1, "injected failure")
        return super().run(argv, input=input, check=check, timeout=timeout)


def test_a_lab_up_that_fails_half_way_is_rolled_back() -> None:
    require_lab()
    lab = Lab(unique_lab_name("rb"), runner=_FailOnNlbRuleset())
    try:
        with pytest.raises(LabError, match="rolled back"):
            lab.up(load_topology())
        assert_no_leftovers(lab.name)
    finally:
        teardown(lab.name)


def test_lab_down_removes_the_leftovers_of_a_crashed_run() -> None:
    require_lab()
    lab = Lab(unique_lab_name("cr"))
    try:
        lab.up(load_topology())
        shutil.rmtree(lab.dir)  # the state is gone, namespaces and daemons are not
        assert leftovers(lab.name)
        assert teardown(lab.name) == 9
        assert_no_leftovers(lab.name)
        assert teardown(lab.name) == 0, "down is idempotent"
    finally:
        teardown(lab.name)
