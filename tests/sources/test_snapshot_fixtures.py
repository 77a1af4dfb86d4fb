"""Topologies and comparisons shared by the snapshot, live-AWS and IAM tests.

``enriched()`` is the reference topology with every field the snapshot must carry set to a
non-default value (NACL port ranges and denies, multi-CIDR / prefix-list / all-traffic rules,
a pending endpoint with private DNS, proxy protocol, an HTTP health check on its own port,
enforce off, cross-zone on), so a round trip that drops a field fails.
"""

from __future__ import annotations

from agent.model import NaclEntry, PrefixList, Rule, Topology, to_plain
from agent.sources.topology import load_topology


def reference() -> Topology:
    return load_topology()


def multi_az() -> Topology:
    from agent.sources.topology import REFERENCE

    return load_topology(REFERENCE.parent / "multi-az.yaml")


def enriched() -> Topology:
    t = load_topology()
    vpc2 = next(v for v in t.vpcs.values() if v.name == "vpc-2")
    nacl = next(n for n in t.nacls.values() if n.vpc_id == vpc2.id)
    nacl.entries += [
        NaclEntry(90, False, "tcp", "deny", "10.9.0.0/16", 80, 80),
        NaclEntry(110, True, "tcp", "allow", "10.3.0.0/16", 1024, 65535),
        NaclEntry(120, False, "udp", "allow", "10.2.0.0/16", 53, 53),
    ]
    nlb_sg = t.sg_by_name("nlb")
    assert nlb_sg is not None
    nlb_sg.rules += [
        Rule(
            "two-cidrs",
            "ingress",
            "tcp",
            8000,
            8100,
            ("10.8.0.0/24", "10.8.1.0/24"),
            None,
            None,
            "two ranges",
        ),
        Rule("pl", "ingress", "tcp", 443, 443, (), None, "pl-0123456789abcdef0", "a list"),
        Rule("all", "egress", "-1", 0, 65535, ("10.3.0.0/16",)),
    ]
    t.prefix_lists["pl-0123456789abcdef0"] = PrefixList(
        "pl-0123456789abcdef0", "partners", "provider", ["10.8.0.0/24", "10.9.0.0/16"]
    )
    ep = next(iter(t.endpoints.values()))
    ep.state = "pendingAcceptance"
    ep.private_dns_enabled = True
    svc = next(iter(t.endpoint_services.values()))
    svc.acceptance_required = True
    svc.allowed_principals.append("arn:aws:iam::111111111111:role/client")
    svc.private_dns_name = "api.example.com"
    svc.private_dns_state = "verified"
    nlb = next(iter(t.nlbs.values()))
    nlb.enforce_sg_inbound_on_privatelink = False
    nlb.cross_zone = True
    tg = next(iter(t.target_groups.values()))
    tg.proxy_protocol_v2 = True
    tg.health_check.protocol = "HTTP"
    tg.health_check.port = 8080
    tg.health_check.path = "/health"
    tg.health_check.interval_s = 5
    tg.targets[0].health = "healthy"
    tg.targets[1].health = "unhealthy"
    return t


def analysis_view(t: Topology) -> dict:
    """Every analysis-relevant field, with what AWS cannot carry normalised away.

    Security group rules become one atom per source (AWS's IpPermissions group rules and
    carry no rule names); NACL entries are compared in evaluation order; ``source`` and the
    lab settings are not configuration; an endpoint's requester is in no describe output.
    """
    plain = to_plain(t)
    assert isinstance(plain, dict)
    plain.pop("source")
    plain.pop("lab")
    for nacl in plain["nacls"].values():  # evaluation order is rule_number, not list order
        nacl["entries"].sort(key=lambda e: (e["egress"], e["rule_number"]))
    for sg in plain["security_groups"].values():
        atoms = set()
        for r in sg.pop("rules"):
            sources = [("cidr", c) for c in r["cidrs"]]
            sources += [("sg", r["sg_ref"])] if r["sg_ref"] else []
            sources += [("pl", r["prefix_list"])] if r["prefix_list"] else []
            sources += [("stale", r["stale_ref"])] if r["stale_ref"] else []
            for kind, value in sources:
                atoms.add(
                    (
                        r["direction"],
                        r["protocol"],
                        r["from_port"],
                        r["to_port"],
                        kind,
                        value,
                        r["description"],
                    )
                )
        sg["rule_atoms"] = sorted(atoms)
    for ep in plain["endpoints"].values():  # no describe call says which principal created it
        ep.pop("requester")
    return plain


def test_enriched_topology_differs_from_the_reference_in_every_enriched_field():
    ref, rich = analysis_view(reference()), analysis_view(enriched())
    for key in (
        "nacls",
        "security_groups",
        "endpoints",
        "endpoint_services",
        "nlbs",
        "target_groups",
    ):
        assert ref[key] != rich[key], key
