"""NACL semantics: ordered by rule number, first match wins, explicit and implicit deny."""

from __future__ import annotations

from agent.analyze.nacl import entry_text, evaluate_nacl, evaluate_nacl_range
from agent.model import Nacl, NaclEntry


def nacl(*entries: NaclEntry) -> Nacl:
    return Nacl("acl-1", "test", "consumer", "vpc-1", ["subnet-1"], list(entries))


def test_the_lowest_rule_number_decides_not_the_listing_order() -> None:
    n = nacl(
        NaclEntry(200, True, "tcp", "allow", "0.0.0.0/0", 80, 80),
        NaclEntry(100, True, "tcp", "deny", "0.0.0.0/0", 80, 80),
    )
    d = evaluate_nacl(n, True, "10.0.0.1", "tcp", 80)
    assert not d.allowed and d.entry is not None and d.entry.rule_number == 100


def test_an_allow_before_a_deny_wins() -> None:
    n = nacl(
        NaclEntry(100, False, "tcp", "allow", "10.0.0.0/8", 80, 80),
        NaclEntry(110, False, "-1", "deny", "0.0.0.0/0"),
    )
    d = evaluate_nacl(n, False, "10.1.2.3", "tcp", 80)
    assert d.allowed and d.entry is not None and d.entry.rule_number == 100
    assert [e.rule_number for e in d.checked] == [100]


def test_nothing_matching_is_the_implicit_deny() -> None:
    n = nacl(NaclEntry(100, False, "tcp", "allow", "10.0.0.0/8", 443, 443))
    d = evaluate_nacl(n, False, "10.1.2.3", "tcp", 80)
    assert not d.allowed and d.entry is None
    assert entry_text(d.entry).startswith("#* deny")


def test_directions_are_independent() -> None:
    n = nacl(NaclEntry(100, False, "-1", "allow", "0.0.0.0/0"))
    assert evaluate_nacl(n, False, "1.2.3.4", "tcp", 80).allowed
    assert not evaluate_nacl(n, True, "1.2.3.4", "tcp", 80).allowed


def test_the_peer_address_must_be_inside_the_entry_cidr() -> None:
    n = nacl(NaclEntry(100, True, "tcp", "allow", "10.3.0.0/24", 0, 65535))
    assert evaluate_nacl(n, True, "10.3.0.100", "tcp", 80).allowed
    assert not evaluate_nacl(n, True, "10.3.1.10", "tcp", 80).allowed


def test_a_range_is_allowed_only_when_every_port_is() -> None:
    n = nacl(NaclEntry(100, True, "tcp", "allow", "0.0.0.0/0", 1024, 65535))
    assert evaluate_nacl_range(n, True, "10.3.0.100", "tcp", (1024, 65535)).allowed


def test_a_range_half_covered_reports_the_denied_part_as_partial() -> None:
    n = nacl(NaclEntry(100, True, "tcp", "allow", "0.0.0.0/0", 32768, 65535))
    d = evaluate_nacl_range(n, True, "10.3.0.100", "tcp", (1024, 65535))
    assert not d.allowed and d.partial
    assert d.denied_ports == [(1024, 32767)]


def test_an_explicit_deny_in_the_middle_of_a_range_is_found() -> None:
    n = nacl(
        NaclEntry(90, False, "tcp", "deny", "0.0.0.0/0", 40000, 40010),
        NaclEntry(100, False, "tcp", "allow", "0.0.0.0/0", 1024, 65535),
    )
    d = evaluate_nacl_range(n, False, "10.2.0.20", "tcp", (32768, 60999))
    assert d.denied_ports == [(40000, 40010)]
    assert d.entry is not None and d.entry.rule_number == 90


def test_a_range_with_nothing_allowed_is_not_partial() -> None:
    d = evaluate_nacl_range(nacl(), False, "10.2.0.20", "tcp", (32768, 60999))
    assert not d.allowed and not d.partial and d.denied_ports == [(32768, 60999)]
