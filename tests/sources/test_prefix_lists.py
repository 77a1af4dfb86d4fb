"""Customer-managed prefix lists in SG rules: read from a snapshot (describe-managed-prefix-lists
+ get-managed-prefix-list-entries, the published aws-cli examples in ``fixtures/real/``),
declared in a lab topology (``aws_ec2_managed_prefix_list`` and its entries), and evaluated by
the SG evaluator through the list's CIDRs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from agent.analyze.sg import evaluate_sg
from agent.errors import TopologyError
from agent.sources.aws_actions import BY_STEM
from agent.sources.aws_snapshot import load_snapshot
from agent.sources.topology import load_topology

REAL = Path(__file__).parent / "fixtures" / "real"
REFERENCE = Path(__file__).resolve().parents[2] / "configs" / "lab" / "reference.yaml"
LIST_ID = "pl-0123456abcabcabc1"  # "vpc-cidrs" in the aws-cli examples: 10.0.0.0/16, 10.2.0.0/16
ENTRIES = BY_STEM["ec2-get-managed-prefix-list-entries"]


def real(rel: str) -> Any:
    return json.loads((REAL / rel).read_text())


def account(tmp_path: Path, files: dict[str, Any]) -> Path:
    d = tmp_path / "consumer"
    d.mkdir()
    meta = {"name": "consumer", "id": "123456789012", "role": "consumer", "region": "us-west-2"}
    (d / "account.json").write_text(json.dumps(meta))
    for rel, body in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(json.dumps(body))
    return d


def group_naming_the_list() -> dict[str, Any]:
    """The aws-cli describe-security-groups example's group, with an HTTPS rule from the list
    (the shape AWS prints: ``PrefixListIds`` beside ``IpRanges``)."""
    body = real("ec2-describe-security-groups/awscli-1.json")
    group = body["SecurityGroups"][0]
    perm = copy.deepcopy(group["IpPermissions"][0])
    perm.update(IpProtocol="tcp", FromPort=443, ToPort=443, IpRanges=[], Ipv6Ranges=[])
    perm["UserIdGroupPairs"] = []
    perm["PrefixListIds"] = [{"PrefixListId": LIST_ID, "Description": "partners"}]
    group["IpPermissions"] = [perm]
    return body


def snapshot_files(*, with_entries: bool = True) -> dict[str, Any]:
    files = {
        "ec2-describe-security-groups.json": group_naming_the_list(),
        "ec2-describe-managed-prefix-lists.json": real(
            "ec2-describe-managed-prefix-lists/awscli-1.json"
        ),
    }
    if with_entries:
        files[ENTRIES.resource_file(LIST_ID)] = real(
            "ec2-get-managed-prefix-list-entries/awscli-1.json"
        )
    return files


# --- snapshots ---------------------------------------------------------------------------------


def test_a_published_prefix_list_is_read_with_its_entries(tmp_path: Path):
    t = load_snapshot([account(tmp_path, snapshot_files())])
    plist = t.prefix_lists[LIST_ID]
    assert (plist.name, plist.address_family, plist.max_entries) == ("vpc-cidrs", "IPv4", 10)
    assert plist.cidrs == ["10.0.0.0/16", "10.2.0.0/16"]


def test_a_list_whose_entries_were_not_read_is_left_out(tmp_path: Path):
    """The IPv6 list of the same example has no entries file: its contents are unknown."""
    t = load_snapshot([account(tmp_path, snapshot_files())])
    assert "pl-11223344556677aab" not in t.prefix_lists


@pytest.mark.parametrize(("peer", "allowed"), [("10.2.3.4", True), ("10.5.0.1", False)])
def test_a_rule_naming_the_list_allows_exactly_its_cidrs(tmp_path: Path, peer: str, allowed: bool):
    t = load_snapshot([account(tmp_path, snapshot_files())])
    d = evaluate_sg(t, ["sg-903004f8"], "ingress", peer, "tcp", 443)
    assert (d.allowed, d.undetermined) == (allowed, False)


def test_a_rule_naming_a_list_whose_entries_were_not_read_is_undetermined_with_a_note(
    tmp_path: Path,
):
    t = load_snapshot([account(tmp_path, snapshot_files(with_entries=False))])
    d = evaluate_sg(t, ["sg-903004f8"], "ingress", "10.5.0.1", "tcp", 443)
    assert d.status == "not_visible" and LIST_ID in d.reason
    assert any(LIST_ID in n and "entries were not read" in n for n in t.notes)


# --- the lab topology ------------------------------------------------------------------------

PREFIX_LISTS = """
  aws_ec2_managed_prefix_list:
    consumer-clients:
      account: provider
      name: consumer-clients
      address_family: IPv4
      max_entries: 5
      entry:
        - {cidr: 10.1.0.0/24, description: client-1}
  aws_ec2_managed_prefix_list_entry:
    client-2-subnet: {account: provider, prefix_list_id: consumer-clients, cidr: 10.2.1.0/24}
"""


def topology_with(extra: str, rule: str) -> str:
    """The reference topology with ``extra`` resources and the NLB's two client rules
    replaced by ``rule``."""
    text = REFERENCE.read_text()
    lines = [
        line
        for line in text.splitlines()
        if not line.lstrip().startswith(("nlb-from-client-1:", "nlb-from-client-2:"))
    ]
    out = []
    for line in lines:
        out.append(line)
        if line.strip() == "aws_security_group_rule:":
            out.append(f"    {rule}")
    return "\n".join(out).replace("\nresources:\n", "\nresources:\n" + extra.lstrip("\n") + "\n")


NLB_RULE = (
    "nlb-from-clients: {account: provider, security_group_id: nlb, type: ingress, "
    "protocol: tcp, from_port: 80, to_port: 80, prefix_list_ids: [consumer-clients]}"
)


def test_a_topology_prefix_list_gathers_its_entries_and_entry_resources():
    t = load_topology(text=topology_with(PREFIX_LISTS, NLB_RULE))
    (plist,) = t.prefix_lists.values()
    assert (plist.name, plist.account) == ("consumer-clients", "provider")
    assert plist.cidrs == ["10.1.0.0/24", "10.2.1.0/24"]
    nlb_sg = t.sg_by_name("nlb")
    assert nlb_sg is not None
    on_80 = [r for r in nlb_sg.ingress() if r.from_port <= 80 <= r.to_port]
    assert [r.prefix_list for r in on_80] == [plist.id]


@pytest.mark.parametrize(("client", "allowed"), [("10.2.1.15", True), ("10.9.0.1", False)])
def test_an_sg_rule_naming_a_topology_list_allows_its_cidrs(client: str, allowed: bool):
    t = load_topology(text=topology_with(PREFIX_LISTS, NLB_RULE))
    nlb_sg = t.sg_by_name("nlb")
    assert nlb_sg is not None
    assert evaluate_sg(t, [nlb_sg.id], "ingress", client, "tcp", 80).allowed is allowed


def test_more_entries_than_max_entries_are_refused():
    with pytest.raises(TopologyError, match="exceed max_entries 1"):
        load_topology(
            text=topology_with(PREFIX_LISTS.replace("max_entries: 5", "max_entries: 1"), NLB_RULE)
        )


def test_an_ipv6_entry_in_an_ipv4_list_is_refused():
    with pytest.raises(TopologyError, match="not an IPv4 block"):
        load_topology(
            text=topology_with(PREFIX_LISTS.replace("10.1.0.0/24", "fd00::/64"), NLB_RULE)
        )


def test_a_rule_naming_another_accounts_list_is_refused():
    rule = NLB_RULE.replace("nlb-from-clients", "endpoint-from-list").replace(
        "account: provider, security_group_id: nlb",
        "account: consumer, security_group_id: endpoint",
    )
    with pytest.raises(TopologyError, match="prefix list"):
        load_topology(text=topology_with(PREFIX_LISTS, rule))


def test_an_unknown_list_name_is_refused_with_the_known_ones():
    rule = NLB_RULE.replace("[consumer-clients]", "[partners]")
    with pytest.raises(TopologyError, match=r"unknown prefix list 'partners'.*consumer-clients"):
        load_topology(text=topology_with(PREFIX_LISTS, rule))


def test_a_rule_naming_two_lists_becomes_one_rule_per_list():
    two = PREFIX_LISTS.replace(
        "  aws_ec2_managed_prefix_list_entry:",
        "    other:\n      account: provider\n      entry: [{cidr: 10.8.0.0/24}]\n"
        "  aws_ec2_managed_prefix_list_entry:",
    )
    rule = NLB_RULE.replace("[consumer-clients]", "[consumer-clients, other]")
    t = load_topology(text=topology_with(two, rule))
    nlb_sg = t.sg_by_name("nlb")
    assert nlb_sg is not None
    names = {t.prefix_lists[r.prefix_list].name for r in nlb_sg.ingress() if r.prefix_list}
    assert names == {"consumer-clients", "other"}
