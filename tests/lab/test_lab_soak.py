"""The 3-minute soak (bench/soak.py, the hour is not CI): both daemons in the lab, faults
flapping, SIGHUP reloads and a provider restart; verdicts follow every change, nothing stale is
left behind, memory and descriptors stay flat."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from labfixtures import require_lab

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(scope="module")
def report() -> dict:
    require_lab()
    import soak  # bench/soak.py

    result: dict = soak.soak(minutes=2.5, flap_s=15.0, reload_s=20.0, restart_s=50.0)
    print(json.dumps({k: v for k, v in result.items() if k != "changes"}))  # shown with -s
    return result


def test_every_change_is_reflected_in_the_verdict_within_a_few_intervals(report: dict) -> None:
    assert report["changes_n"] >= 6 and report["changes_unsettled"] == 0
    assert report["max_latency_s"] < 5 * report["client_interval_s"]


def test_no_stale_verdict_or_blocked_series_is_left_behind(report: dict) -> None:
    assert report["stale_verdicts"] == []
    assert report["blocked_series_after_final_restore"] == []


def test_every_sighup_reload_succeeds_and_the_provider_restarts(report: dict) -> None:
    assert report["reloads"] >= 10 and report["reload_failures"] == 0
    assert report["provider_restarts"] >= 2


def test_memory_and_descriptors_stay_flat(report: dict) -> None:
    for who in ("client", "server-1"):
        assert report[who]["rss_growth_pct"] < 5, report[who]
        assert report[who]["fds_last"] <= report[who]["fds_first"] + 2, report[who]
