"""How bench/diagnosis_accuracy.py scores a verdict's stage: strict, and honest (left open)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import diagnosis_accuracy as matrix

PATH = "client-1/apne1-az4/80"
TRUTH = matrix.fail("endpoint-acceptance", "endpoint")
SCENARIO = matrix.Scenario(99, "endpoint not accepted", None, {PATH: TRUTH})


def _verdict(stage: str, stages: list[str], blocked_at: str | None = "unknown") -> dict:
    return {"status": "fail", "stage": stage, "stages": stages, "blocked_at": blocked_at}


def test_an_unknown_stage_listing_the_truth_is_right_only_in_the_open_count() -> None:
    s = matrix.score(SCENARIO, {PATH: _verdict("unknown", ["endpoint", "forward", "return"])})
    assert (s.stage, s.open_stage, s.false_blame) == (False, True, False)


def test_an_unknown_stage_without_the_truth_is_wrong_in_both_counts() -> None:
    s = matrix.score(SCENARIO, {PATH: _verdict("unknown", ["forward", "return"])})
    assert (s.stage, s.open_stage) == (False, False)


def test_a_claimed_wrong_stage_is_wrong_in_both_counts() -> None:
    s = matrix.score(SCENARIO, {PATH: _verdict("forward", [])})
    assert (s.stage, s.open_stage) == (False, False)


def test_the_right_stage_counts_in_both() -> None:
    s = matrix.score(SCENARIO, {PATH: _verdict("endpoint", [], "endpoint-acceptance")})
    assert (s.exact, s.stage, s.open_stage) == (True, True, True)


def test_the_cell_shows_the_stages_left_open() -> None:
    cell = matrix._cell(_verdict("unknown", ["endpoint", "forward"]))
    assert cell == "fail · endpoint/forward? · unknown"
