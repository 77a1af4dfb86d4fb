"""deploy/iam: each side's policy grants exactly the actions the code calls, and no more."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.sources.aws_actions import calls_for, iam_actions, policy_document

IAM = Path(__file__).resolve().parents[2] / "deploy" / "iam"


def policy(side: str) -> dict:
    return json.loads((IAM / f"{side}-readonly.json").read_text())


def granted(side: str) -> set[str]:
    actions: set[str] = set()
    for st in policy(side)["Statement"]:
        acts = st["Action"]
        actions.update([acts] if isinstance(acts, str) else acts)
    return actions


@pytest.mark.parametrize("side", ["consumer", "provider"])
def test_policy_grants_every_action_the_code_calls(side):
    assert {c.iam_action for c in calls_for(side)} <= granted(side)


@pytest.mark.parametrize("side", ["consumer", "provider"])
def test_policy_grants_nothing_else(side):
    assert granted(side) == set(iam_actions(side))


@pytest.mark.parametrize("side", ["consumer", "provider"])
def test_policy_is_allow_only_without_wildcard_actions(side):
    for st in policy(side)["Statement"]:
        assert st["Effect"] == "Allow"
        assert set(st) <= {"Sid", "Effect", "Action", "Resource"}
        assert st["Resource"] == "*"  # Describe* support no resource-level permissions
        assert not any("*" in a for a in st["Action"])


@pytest.mark.parametrize("side", ["consumer", "provider"])
def test_policy_only_reads(side):
    # read-only: Describe* and Get* (GetManagedPrefixListEntries reads a list's entries)
    assert all(a.split(":", 1)[1].startswith(("Describe", "Get")) for a in granted(side))


@pytest.mark.parametrize("side", ["consumer", "provider"])
def test_policy_file_is_the_generated_document(side):
    assert policy(side) == policy_document(side)


def test_assume_role_is_in_no_read_only_policy():
    assert not any(a.startswith("sts:") for side in ("consumer", "provider") for a in granted(side))


def test_consumer_policy_cannot_read_the_providers_load_balancers():
    assert not any(a.startswith("elasticloadbalancing:") for a in granted("consumer"))
