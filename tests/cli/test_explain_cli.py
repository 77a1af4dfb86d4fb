"""``plprobe explain``: static verdicts per path, exit 0 pass / 1 fail / 2 bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import cli
from agent.cli.explain import render_table
from agent.sources.topology import REFERENCE


@pytest.fixture(autouse=True)
def _with_explain(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lead wires the command into COMMAND_MODULES; the tests do it themselves."""
    if "agent.cli.explain" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "agent.cli.explain"))


def topology_file(tmp_path: Path, drop: str | None = None) -> Path:
    lines = REFERENCE.read_text().splitlines()
    if drop is not None:
        assert any(line.strip().startswith(drop) for line in lines)
        lines = [line for line in lines if not line.strip().startswith(drop)]
    path = tmp_path / "topology.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*argv: str) -> int:
    return cli.main(["explain", *argv])


def test_a_healthy_path_exits_0_with_a_pass_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--topology", str(REFERENCE), "--from", "client-2", "--port", "80") == 0
    out = capsys.readouterr().out
    assert "client-2/apne1-az4/80" in out and "pass" in out
    assert "\033[" not in out  # not a TTY: no colour


def test_a_blocked_path_exits_1_naming_control_rule_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = topology_file(tmp_path, drop="nlb-from-client-2:")
    assert run("--topology", str(path), "--from", "client-2", "--port", "80") == 1
    out = capsys.readouterr().out
    assert "nlb-sg-ingress" in out
    assert "rule:" in out and "nlb-from-client-1" in out
    assert "fix:" in out and "10.2.1.15/32 (client-2)" in out


def test_json_output_has_the_verdict_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = topology_file(tmp_path, drop="client-2-egress-endpoint:")
    code = run("--topology", str(path), "--from", "client-2", "--port", "80", "--output", "json")
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["status"] == "fail"
    (verdict,) = data["verdicts"]
    assert verdict["blocked_at"] == "client-sg-egress"
    assert verdict["path"] == "client-2/apne1-az4/80"
    assert {c["control"] for c in verdict["controls"]} >= {"client-sg-egress", "nlb-sg-ingress"}


def test_the_other_client_still_passes(tmp_path: Path) -> None:
    path = topology_file(tmp_path, drop="client-2-egress-endpoint:")
    assert run("--topology", str(path), "--from", "client-1", "--port", "80") == 0


def test_an_unknown_client_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--topology", str(REFERENCE), "--from", "client-9", "--port", "80") == 2
    assert "client-9" in capsys.readouterr().err


def test_a_broken_topology_file_is_bad_input_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("region: x\naccounts: 3\n")
    assert run("--topology", str(path), "--from", "client-2", "--port", "80") == 2
    assert "bad.yaml:" in capsys.readouterr().err


def test_a_missing_snapshot_directory_is_bad_input(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert run("--snapshot", str(missing), "--from", "client-2", "--port", "80") == 2


def test_topology_and_snapshot_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        run(
            "--topology", str(REFERENCE), "--snapshot", str(tmp_path), "--from", "c", "--port", "80"
        )
    assert exc.value.code == 2


def test_a_port_out_of_range_is_bad_input() -> None:
    assert run("--topology", str(REFERENCE), "--from", "client-2", "--port", "70000") == 2


def test_colour_marks_the_status_only_when_asked() -> None:
    from agent.results import Verdict

    v = Verdict("p", "fail", "forward", "client-sg-egress")
    assert "\033[31m" in render_table([v], colour=True)
    assert "\033[" not in render_table([v], colour=False)


def test_snapshot_directories_of_both_accounts_explain_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.lab.snapshot import write_snapshot
    from agent.sources.topology import load_topology

    dirs = write_snapshot(load_topology(), tmp_path)
    argv = ["--from", "client-2", "--port", "80", "--output", "json"]
    assert run("--snapshot", *map(str, dirs), *argv) == 0
    capsys.readouterr()
    consumer = [d for d in dirs if d.name == "consumer"]
    assert run("--snapshot", *map(str, consumer), *argv) == 1
    (verdict,) = json.loads(capsys.readouterr().out)["verdicts"]
    assert (verdict["status"], verdict["blocked_at"]) == ("unknown", None)
    assert "nlb-sg-ingress" in verdict["candidates"]
