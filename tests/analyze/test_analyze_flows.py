"""Flow lookup: a user-named client and a probed path find the same flow."""

from __future__ import annotations

import pytest
from scenarios import consumer_only, multi_az, reference

from agent.analyze.flows import (
    az_of_subnet,
    client_at_ip,
    client_named,
    flows,
    path_flow,
    resolve_client,
)
from agent.errors import ConfigError
from agent.results import PathRef


def test_a_probed_path_finds_the_flow_explain_walks_for_each_az() -> None:
    t = multi_az()
    for named in flows(t, "client-2", 80):
        ref = PathRef(named.path_id, "client-2", "x", named.eni_ip, 80, named.az_id)
        probed = path_flow(t, ref, resolve_client(t, "client-2"))
        assert (probed.endpoint, probed.eni, probed.az_id, probed.path_id) == (
            named.endpoint,
            named.eni,
            named.az_id,
            named.path_id,
        )


def test_a_client_is_found_by_name_or_id_then_by_ip_else_kept_as_a_bare_ip() -> None:
    t = reference()
    inst = t.instance_by_name("client-2")
    assert inst is not None
    assert resolve_client(t, "client-2") == ("client-2", inst.ip, inst)
    assert resolve_client(t, inst.id) == ("client-2", inst.ip, inst)
    assert resolve_client(t, inst.ip) == ("client-2", inst.ip, inst)
    assert client_at_ip(t, "10.2.1.99") == ("10.2.1.99", "10.2.1.99", None)


def test_an_unknown_client_name_lists_the_known_clients() -> None:
    with pytest.raises(ConfigError, match="client-1"):
        resolve_client(reference(), "client-9")


def test_the_first_name_that_is_an_instance_wins() -> None:
    t = reference()
    found = client_named(t, ("host-abc", "client-1", "client-2"))
    assert found is not None and found[0] == "client-1"
    assert client_named(t, ("host-abc",)) is None


def test_a_path_whose_endpoint_is_absent_from_a_consumer_view_is_not_guessed() -> None:
    t = reference()
    ref = PathRef("client-1/apne1-az4/80", "client-1", "nowhere.example", "10.9.9.9", 80)
    with pytest.raises(LookupError, match=r"10\.9\.9\.9"):
        path_flow(t, ref, resolve_client(t, "client-1"))


def test_a_provider_view_walks_the_path_without_an_endpoint() -> None:
    t = reference()
    provider = {a.name for a in t.accounts.values() if a.role == "provider"}
    t.visible_accounts = provider
    ref = PathRef("client-1/apne1-az4/80", "client-1", "x", "10.9.9.9", 80, "apne1-az4")
    flow = path_flow(t, ref, ("client-1", "10.1.0.10", None))
    assert (flow.endpoint, flow.eni, flow.az_id) == (None, None, "apne1-az4")


def test_a_subnet_outside_the_view_has_no_az() -> None:
    assert az_of_subnet(consumer_only(reference()), "subnet-missing") is None
