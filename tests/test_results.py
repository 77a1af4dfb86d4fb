"""The shared records: one path id for the runner, the config check and the analysis."""

from __future__ import annotations

from agent import analyze, config
from agent.results import path_id


def test_a_path_id_is_client_az_and_port() -> None:
    assert path_id("client-2", "apne1-az4", 80) == "client-2/apne1-az4/80"


def test_a_path_without_an_az_is_labelled_unknown_az() -> None:
    assert path_id("client-2", None, 80) == "client-2/unknown-az/80"
    assert path_id("client-2", "", 80) == "client-2/unknown-az/80"


def test_a_runner_label_stands_in_for_the_az_unchanged() -> None:
    assert path_id("client-2", "10.2.0.20", 443) == "client-2/10.2.0.20/443"


def test_config_and_analysis_share_the_one_definition() -> None:
    assert config.path_id is path_id
    assert analyze.path_id is path_id
