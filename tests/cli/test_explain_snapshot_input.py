"""``plprobe explain --snapshot``: what the reader could not take as given is printed, and a
bad value is bad input (exit 2, file and member named, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import cli
from agent.lab.snapshot import write_snapshot
from agent.sources.topology import load_topology

ARGV = ("--from", "client-2", "--port", "80")


@pytest.fixture(autouse=True)
def _with_explain(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lead wires the command into COMMAND_MODULES; the tests do it themselves."""
    if "agent.cli.explain" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "agent.cli.explain"))


@pytest.fixture
def dirs(tmp_path: Path) -> list[Path]:
    return write_snapshot(load_topology(), tmp_path)


def cut_short(dirs: list[Path]) -> None:
    """As ``aws ec2 describe-network-acls --max-items 1`` prints it: one page and a token."""
    path = next(d for d in dirs if d.name == "consumer") / "ec2-describe-network-acls.json"
    body = json.loads(path.read_text())
    body["NetworkAcls"] = body["NetworkAcls"][:1]
    body["NextToken"] = "eyJOZXh0VG9rZW4iOiBudWxsfQ=="
    path.write_text(json.dumps(body))


def test_a_cut_input_is_named_below_the_verdict_table(
    dirs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cut_short(dirs)
    cli.main(["explain", "--snapshot", *map(str, dirs), *ARGV])
    out = capsys.readouterr().out
    assert "note: " in out and "ec2-describe-network-acls.json: input was cut" in out


def test_a_cut_input_is_listed_in_the_json_notes(
    dirs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cut_short(dirs)
    cli.main(["explain", "--snapshot", *map(str, dirs), *ARGV, "--output", "json"])
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any("input was cut (NextToken present)" in n for n in notes)


def test_a_complete_snapshot_prints_no_notes(
    dirs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["explain", "--snapshot", *map(str, dirs), *ARGV, "--output", "json"]) == 0
    assert "notes" not in json.loads(capsys.readouterr().out)


def test_a_vpc_cidr_that_is_not_a_cidr_is_bad_input_not_a_pass(
    dirs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    consumer = next(d for d in dirs if d.name == "consumer")
    path = consumer / "ec2-describe-vpcs.json"
    body = json.loads(path.read_text())
    body["Vpcs"][0]["CidrBlock"] = "banana"
    path.write_text(json.dumps(body))
    assert cli.main(["explain", "--snapshot", *map(str, dirs), *ARGV]) == 2
    err = capsys.readouterr().err
    assert "consumer/ec2-describe-vpcs.json: Vpcs[0].CidrBlock: 'banana' is not a CIDR" in err
    assert "Traceback" not in err
