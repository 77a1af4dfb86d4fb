"""The control catalogue: stable ids, one entry each, everything a verdict needs."""

from __future__ import annotations

import dataclasses

from agent import controls
from agent.lab import faults
from agent.model import LabSettings

DESIGN_IDS = {
    "client-sg-egress",
    "endpoint-sg-ingress",
    "service-principal",
    "endpoint-acceptance",
    "nlb-sg-ingress",
    "nlb-sg-egress",
    "target-sg-ingress",
    "client-nacl",
    "provider-nacl",
    "route",
    "dns",
    "nlb-listener",
    "target-health",
    "target-service",
    "unknown",
}


def test_catalogue_has_exactly_the_stable_ids_of_the_design() -> None:
    assert set(controls.IDS) == DESIGN_IDS
    assert len(controls.IDS) == len(DESIGN_IDS)


def test_the_articles_five_controls_carry_their_numbers() -> None:
    numbers = {c.id: c.article for c in controls.CATALOGUE if c.article}
    assert numbers == {
        "client-sg-egress": "①",
        "endpoint-sg-ingress": "②",
        "service-principal": "③",
        "endpoint-acceptance": "③",
        "nlb-sg-ingress": "④",
        "nlb-sg-egress": "④",
        "target-sg-ingress": "⑤",
    }


def test_every_control_has_a_title_and_fix_text() -> None:
    for c in controls.CATALOGUE:
        assert c.title and len(c.fix) > 20, c.id


def test_every_breakable_control_is_in_the_catalogue() -> None:
    assert set(controls.BREAKABLE) <= set(controls.IDS)
    assert "unknown" not in controls.BREAKABLE


def test_the_lab_can_break_every_control_but_unknown_in_catalogue_order() -> None:
    assert tuple(i for i in controls.IDS if i != "unknown") == controls.BREAKABLE


def test_forward_candidates_are_the_endpoint_and_forward_controls_in_path_order() -> None:
    assert controls.FORWARD_PATH == (
        "client-sg-egress",
        "client-nacl",
        "route",
        "endpoint-sg-ingress",
        "endpoint-acceptance",
        "service-principal",
        "nlb-sg-ingress",
        "nlb-listener",
        "nlb-sg-egress",
        "provider-nacl",
        "target-sg-ingress",
        "target-health",
    )


def test_the_endpoint_stage_is_the_connection_state_and_the_allowed_principals() -> None:
    assert controls.ENDPOINT_STAGE == ("endpoint-acceptance", "service-principal")


def test_the_service_stage_is_only_the_service_on_the_target() -> None:
    assert controls.SERVICE_STAGE == ("target-service",)
    assert not controls.get("target-service").access


def test_only_the_stateless_nacls_and_the_routes_are_return_path_candidates() -> None:
    assert controls.RETURN_PATH == ("client-nacl", "route", "provider-nacl")


def test_a_route_is_diagnosed_with_reachability_analyzer_route_codes() -> None:
    route = controls.get("route")
    assert route.stage == "forward" and route.return_path and not route.resets
    assert {"NO_ROUTE_TO_DESTINATION", "BAD_STATE_ROUTE"} <= set(route.ra_codes)


def test_resets_come_from_listener_endpoint_and_target_health_most_common_first() -> None:
    assert controls.RESETTING == (
        "nlb-listener",
        "endpoint-acceptance",
        "service-principal",
        "target-health",
    )


def test_security_groups_and_nacls_drop_silently() -> None:
    for c in controls.CATALOGUE:
        if c.id.endswith(("-sg-egress", "-sg-ingress", "-nacl")):
            assert not c.resets, c.id


def test_every_control_on_a_stage_has_its_own_place_on_the_path() -> None:
    placed = [c for c in controls.CATALOGUE if c.id != "unknown"]
    assert all(c.path_position is not None for c in placed)
    assert len({c.path_position for c in placed}) == len(placed)
    assert controls.get("unknown").path_position is None
    assert controls.get("dns").path_position == 0


def test_the_analysis_emits_every_control_but_unknown_in_path_order() -> None:
    assert set(controls.EMITTED) == set(controls.IDS) - {"unknown"}
    assert controls.EMITTED[0] == "dns"
    assert controls.EMITTED[-2:] == ("target-service", "target-health")


def test_a_lab_symptom_is_a_client_outcome_or_a_lab_setting() -> None:
    settings = {f.name for f in dataclasses.fields(LabSettings)}
    for c in controls.CATALOGUE:
        if c.lab_fault is not None:
            assert c.lab_fault.description, c.id
            assert c.lab_fault.symptom in {"timeout", "refused", "no-dns"} | settings, c.id


def test_a_lab_symptom_that_a_setting_makes_a_reset_belongs_to_a_control_that_resets() -> None:
    for c in controls.CATALOGUE:
        if c.lab_fault is not None and c.lab_fault.symptom not in ("timeout", "refused", "no-dns"):
            assert c.resets, c.id


def test_the_lab_has_one_edit_per_breakable_control() -> None:
    assert set(faults.EDITS) == set(controls.BREAKABLE)


def test_the_labs_fault_table_is_the_catalogues_facts_with_the_labs_edits() -> None:
    assert tuple(faults.FAULTS) == controls.BREAKABLE
    for cid, fault in faults.FAULTS.items():
        spec = controls.get(cid).lab_fault
        assert spec is not None
        assert (fault.control, fault.edit) == (cid, faults.EDITS[cid])
        assert (fault.description, fault.per_client, fault.symptom) == (
            spec.description,
            spec.per_client,
            spec.symptom,
        )
        assert fault.recreate_endpoints == spec.recreate_endpoints


def test_only_the_principal_fault_recreates_the_endpoint() -> None:
    assert [c for c, f in faults.FAULTS.items() if f.recreate_endpoints] == ["service-principal"]


def test_unknown_id_lists_the_known_ones() -> None:
    try:
        controls.get("nlb-sg")
    except KeyError as exc:
        assert "nlb-sg-ingress" in str(exc)
    else:
        raise AssertionError("expected KeyError")
