"""The fault matrix of issue 4, end to end: each scenario breaks the lab, runs both agents and
checks the verdict of every path as deployed (the provider's evidence through the endpoint,
the consumer's own snapshot) and at the side-channel reference level (evidence handed over,
both accounts' snapshots).

The scenarios (edits and truths) live in ``bench/diagnosis_accuracy.py``, which also measures
accuracy with less evidence for docs/DIAGNOSIS.md: one definition, so table and tests agree.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from labfixtures import lab_up

from agent.lab import agents
from agent.lab.lab import Lab

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import diagnosis_accuracy as matrix

pytestmark = pytest.mark.lab


def _started(topology_kind: str, prefix: str) -> Iterator[Lab]:
    with lab_up(matrix.lab_topology(topology_kind), prefix) as lab:
        agents.start_agents(lab, lab.progress)
        assert matrix.wait_healthy(lab)
        yield lab


@pytest.fixture(scope="module")
def reference_matrix_lab() -> Iterator[Lab]:
    yield from _started("reference", "fm")


@pytest.fixture(scope="module")
def multi_az_matrix_lab() -> Iterator[Lab]:
    yield from _started("multi-az", "fz")


@pytest.fixture
def verdicts(request: pytest.FixtureRequest) -> Iterator[dict[str, dict[str, dict]]]:
    """The scenario's verdicts (level -> path -> verdict); the lab is restored afterwards."""
    scenario: matrix.Scenario = request.param
    fixture = "multi_az_matrix_lab" if scenario.lab == "multi-az" else "reference_matrix_lab"
    lab: Lab = request.getfixturevalue(fixture)
    try:
        yield matrix.run_scenario(lab, scenario)
    finally:
        matrix.restore_scenario(lab, scenario)


SCENARIOS = {f"{s.number:02d}": s for s in matrix.SCENARIOS}


@pytest.mark.parametrize(
    ("scenario", "verdicts"),
    [(s, s) for s in SCENARIOS.values()],
    ids=[f"{k}-{s.title.split(' (')[0][:40]}" for k, s in SCENARIOS.items()],
    indirect=["verdicts"],
)
def test_scenario_verdict_names_the_broken_control(
    scenario: matrix.Scenario, verdicts: dict[str, dict[str, dict]]
) -> None:
    """Through the endpoint: the exact control, or, where the mistake cuts the evidence
    channel too, no false blame, a verdict that names the cut and a stage no worse than the
    consumer's own evidence gives; and the side-channel reference level exactly."""
    endpoint = verdicts["endpoint"]
    assert set(endpoint) == set(scenario.expect), "one verdict per probed service path"
    cut = matrix.channel_cut(endpoint)
    for path, truth in scenario.expect.items():
        v = endpoint[path]
        if not cut:
            got = (v["status"], v["blocked_at"], v["stage"])
            assert got == (truth.status, truth.blocked_at, truth.stage), (path, v["explanation"])
        else:
            # no evidence from the provider: never worse than the consumer's side alone
            consumer_only = verdicts["client"][path]
            assert v["stage"] in (truth.stage, consumer_only["stage"]), (path, v["explanation"])
            assert v["blocked_at"] in (None, "unknown", truth.blocked_at), v["explanation"]
            if truth.status == "fail":
                assert matrix.names_cut(v), (path, v["evidence"])

    # the reference level (evidence handed over, both snapshots) names it exactly every time
    reference = verdicts["side-channel"]
    assert set(reference) == set(scenario.expect)
    for path, truth in scenario.expect.items():
        v = reference[path]
        got = (v["status"], v["blocked_at"], v["stage"])
        assert got == (truth.status, truth.blocked_at, truth.stage), (path, v["explanation"])


@pytest.mark.parametrize(
    ("verdicts"), [SCENARIOS["22"]], ids=["22-provider-agent-down"], indirect=True
)
def test_provider_agent_down_leaves_the_stage_open_lists_candidates_and_blames_nothing_unseen(
    verdicts: dict[str, dict[str, dict]],
) -> None:
    for v in verdicts["client"].values():
        assert v["stage"] == "unknown" and "forward" in v["stages"]
        assert v["blocked_at"] in (None, "unknown"), v["explanation"]
        assert "nlb-sg-ingress" in v["candidates"]
        blocked = {c["control"] for c in v["controls"] if c["state"] == "blocked"}
        assert not blocked, f"blames {blocked} without seeing it"
