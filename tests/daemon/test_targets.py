"""The /probe target index (agent/daemon/targets.py): only configured paths are probed."""

from __future__ import annotations

import pytest

from agent.config import ClientConfig
from agent.daemon.targets import TargetIndex, declared_paths, parse_target
from agent.results import PathRef


def config() -> ClientConfig:
    return ClientConfig.model_validate(
        {
            "role": "client",
            "agent_id": "c1",
            "insecure": True,
            "paths": [
                {
                    "name": "svc",
                    "regional": "vpce-1.example.com",
                    "expected_ips": {"az1": "10.0.0.1", "az2": "10.0.0.2"},
                    "ports": [80, 443],
                },
                {"name": "other", "expected_ips": {"az1": "10.9.0.1"}, "ports": [8080]},
            ],
        }
    )


def index(*refs: PathRef) -> TargetIndex:
    targets = TargetIndex()
    targets.rebuild(config(), refs)
    return targets


def test_declared_paths_are_every_expected_az_times_every_port() -> None:
    paths = declared_paths(config())
    assert sorted(paths) == ["c1/az1/443", "c1/az1/80", "c1/az1/8080", "c1/az2/443", "c1/az2/80"]
    assert paths["c1/az2/443"].name == "svc"


@pytest.mark.parametrize(
    ("target", "expected"),
    [("10.0.0.1:80", ("10.0.0.1", 80)), ("[fd00::1]:443", ("fd00::1", 443)), ("a.b:1", ("a.b", 1))],
)
def test_parse_target_splits_host_and_port(target: str, expected: tuple[str, int]) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize("target", ["10.0.0.1", ":80", "10.0.0.1:0", "10.0.0.1:65536", "h:x"])
def test_parse_target_refuses_anything_but_host_colon_port(target: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_target(target)


def test_a_target_outside_the_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="not a configured path"):
        index().resolve("169.254.169.254:80", "tcp", {}, "c1")


def test_a_configured_host_on_a_port_it_does_not_serve_is_refused() -> None:
    with pytest.raises(ValueError, match="not a configured path"):
        index().resolve("10.0.0.1:8080", "tcp", {}, "c1")


def test_a_configured_target_no_round_has_labelled_gets_a_probe_path_id() -> None:
    host, ref, endpoint = index().resolve("VPCE-1.example.com.:443", "tcp", {}, "c1")
    assert host == "VPCE-1.example.com."
    assert (ref.id, ref.name, ref.ip, ref.port) == ("c1/probe/443", host, None, 443)
    assert endpoint is not None and endpoint.name == "svc"


def test_an_ip_target_no_round_has_labelled_keeps_its_ip() -> None:
    _, ref, _ = index().resolve("10.0.0.2:80", "tcp", {}, "c1")
    assert ref.ip == "10.0.0.2"


def test_a_target_a_round_labelled_resolves_to_that_path_and_its_owner() -> None:
    ref = PathRef(id="c1/az1/80", agent="c1", name="vpce-1.example.com", ip="10.0.0.1", port=80)
    owner = config().paths[0]
    host, found, endpoint = index(ref).resolve("10.0.0.1:80", "tcp", {ref.id: owner}, "c1")
    assert (host, found, endpoint) == ("10.0.0.1", ref, owner)


def test_a_module_that_names_an_endpoint_chooses_its_settings() -> None:
    _, _, endpoint = index().resolve("10.0.0.1:80", "other", {}, "c1")
    assert endpoint is not None and endpoint.name == "other"


def test_a_forgotten_run_time_path_is_no_longer_a_target() -> None:
    ref = PathRef(
        id="c1/10.7.0.7/80", agent="c1", name="vpce-1.example.com", ip="10.7.0.7", port=80
    )
    targets = index()
    targets.add(ref)
    assert targets.resolve("10.7.0.7:80", "tcp", {}, "c1").ref == ref
    targets.forget(ref.id)
    with pytest.raises(ValueError, match="not a configured path"):
        targets.resolve("10.7.0.7:80", "tcp", {}, "c1")
