"""The control catalogue: stable ids, one entry each, everything a verdict needs."""

from __future__ import annotations

from agent import controls

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


def test_unknown_id_lists_the_known_ones() -> None:
    try:
        controls.get("nlb-sg")
    except KeyError as exc:
        assert "nlb-sg-ingress" in str(exc)
    else:
        raise AssertionError("expected KeyError")
