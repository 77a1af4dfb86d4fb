"""Shared records (agent/results.py): one path id, one ip:port spelling, observations from JSON."""

from __future__ import annotations

import ipaddress

import pytest

from agent import analyze, config
from agent.results import Observation, hostport, path_id

OBSERVATION = Observation(
    kind="token",
    target="t1",
    seen_at=1_700_000_000.5,
    src_ip="10.2.0.7",
    src_port=40001,
    dst_ip="10.2.0.20",
    dst_port=80,
    via="responder",
    probe_id="00" * 16,
    path="client-1/apne1-az4/80",
    agent="client-1",
    proxy_endpoint_id="vpce-0a1b2c3d4e5f60718",
    proxy_src="10.1.0.5:51000",
    proxy_dst="10.2.0.20:80",
)


def test_ipv4_hostport_is_ip_colon_port() -> None:
    assert hostport("10.2.0.20", 80) == "10.2.0.20:80"
    assert hostport(ipaddress.IPv4Address("10.2.0.20"), 80) == "10.2.0.20:80"


def test_ipv6_hostport_puts_the_address_in_brackets() -> None:
    assert hostport("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert hostport(ipaddress.IPv6Address("2001:db8::1"), 443) == "[2001:db8::1]:443"


def test_hostport_of_a_missing_address_or_port_is_none() -> None:
    assert hostport(None, 80) is None
    assert hostport("10.2.0.20", None) is None


def test_an_observation_round_trips_through_json() -> None:
    assert Observation.from_json(OBSERVATION.to_json()) == OBSERVATION


def test_unknown_observation_keys_from_a_newer_agent_are_ignored() -> None:
    raw = {**OBSERVATION.to_json(), "added_in_a_later_release": 1}
    assert Observation.from_json(raw) == OBSERVATION


def test_an_observation_that_is_not_an_object_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        Observation.from_json(["token"])


def test_an_observation_without_a_required_field_is_a_type_error() -> None:
    raw = OBSERVATION.to_json()
    del raw["src_ip"]
    with pytest.raises(TypeError):
        Observation.from_json(raw)


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
