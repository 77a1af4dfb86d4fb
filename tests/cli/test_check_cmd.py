"""``plprobe check``: one round plus diagnosis, its exit codes and its two output formats.

Packets go to loopback only: a real responder (agent/observe/responder.py) on 127.0.0.1 in a
thread of its own (``check`` runs its own event loop), or a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from agent.cli.check import check_command
from agent.lab.snapshot import write_snapshot
from agent.observe.responder import Responder
from agent.observe.store import ObservationStore
from agent.sources.topology import load_topology


@pytest.fixture
def responder_port() -> Iterator[int]:
    """A plprobe responder on 127.0.0.1 (insecure, as the lab runs it), in its own loop."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Responder] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        responder = Responder(
            key=b"", insecure=True, agent_id="server-1", store=ObservationStore(100),
            host="127.0.0.1", port=0,
        )  # fmt: skip
        loop.run_until_complete(responder.start())
        box["r"] = responder
        ready.set()
        loop.run_forever()
        loop.run_until_complete(responder.stop(0.1))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield box["r"].bound_port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the with block ends


def write_config(tmp_path: Path, port: int, *, responder: bool = True, **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "role": "client",
        "agent_id": "c1",
        "insecure": True,
        "timeout": 0.5,
        "retries": 0,
        "provider_delay": 0,
        "paths": [
            {
                "name": "svc",
                "expected_ips": {"az1": "127.0.0.1"},
                "ports": [port],
                "probes": ["tcp"],
                "responder_ports": [port] if responder else [],
            }
        ],
        **extra,
    }
    path = tmp_path / "client.yaml"
    path.write_text(json.dumps(doc))
    return path


def plprobe(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("agent.cli.check",))
    return cli.main(["check", *argv])


def test_every_path_passing_exits_0(
    tmp_path: Path, responder_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plprobe(monkeypatch, "--config", str(write_config(tmp_path, responder_port))) == 0


def test_a_closed_port_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, closed_port(), responder=False)
    assert plprobe(monkeypatch, "--config", str(config)) == 1


def test_a_bad_config_exits_2_naming_file_line_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("role: client\nagent_id: c1\ninsecure: true\ntimeout: -1\npaths: []\n")
    assert plprobe(monkeypatch, "--config", str(path)) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and "Traceback" not in err


def test_a_provider_config_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "provider.yaml"
    path.write_text("role: provider\nagent_id: t1\ninsecure: true\n")
    assert plprobe(monkeypatch, "--config", str(path)) == 2


def test_a_missing_snapshot_directory_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, closed_port())
    assert plprobe(monkeypatch, "--config", str(config), "--snapshot", str(tmp_path / "no")) == 2


def test_json_has_status_verdicts_and_evidence_with_stable_names(tmp_path: Path) -> None:
    out = io.StringIO()
    code = check_command(
        str(write_config(tmp_path, closed_port(), responder=False)), output="json", out=out
    )
    body = json.loads(out.getvalue())
    assert code == 1 and body["status"] == "fail"
    [verdict] = body["verdicts"]
    for name in ("path", "status", "stage", "blocked_at", "candidates", "evidence", "fix"):
        assert name in verdict
    assert verdict["path"] == body["evidence"][0]["path"]
    assert body["evidence"][0]["outcome"] == "refused"


def test_the_table_has_one_row_per_path_and_no_colour_off_a_terminal(
    tmp_path: Path, responder_port: int
) -> None:
    out = io.StringIO()
    check_command(str(write_config(tmp_path, responder_port)), out=out)
    text = out.getvalue()
    rows = [line for line in text.splitlines() if line.startswith("c1/")]
    assert len(rows) == 1 and rows[0].split()[1:3] == ["pass", "pass"]
    assert "\033[" not in text
    assert text.splitlines()[0].split() == ["PATH", "STATUS", "STAGE", "BLOCKED", "AT"]


def test_a_failing_row_carries_the_explanation_and_the_fix(tmp_path: Path) -> None:
    out = io.StringIO()
    check_command(str(write_config(tmp_path, closed_port(), responder=False)), out=out)
    text = out.getvalue()
    assert "    why:" in text and "    fix:" in text


def test_with_a_snapshot_the_output_names_the_view_and_why_it_did_not_apply(
    tmp_path: Path, responder_port: int
) -> None:
    dirs = write_snapshot(load_topology(), tmp_path / "snap")
    out = io.StringIO()
    code = check_command(
        str(write_config(tmp_path, responder_port)),
        snapshot=[str(d) for d in dirs],
        output="json",
        out=out,
    )
    body = json.loads(out.getvalue())
    assert body["view"]["source"] == "snapshot" and body["view"]["error"] is None
    # 127.0.0.1 is no endpoint ENI of the reference topology: packets decide, nothing guessed
    assert "127.0.0.1" in body["notes"]["c1/az1/" + str(responder_port)]
    assert code == 0


def test_with_a_cut_snapshot_the_table_and_the_json_view_say_the_input_was_cut(
    tmp_path: Path, responder_port: int
) -> None:
    dirs = write_snapshot(load_topology(), tmp_path / "snap")
    vpcs = next(d for d in dirs if d.name == "consumer") / "ec2-describe-vpcs.json"
    body = json.loads(vpcs.read_text())
    body["NextToken"] = "eyJOZXh0VG9rZW4iOiBudWxsfQ=="
    vpcs.write_text(json.dumps(body))
    config = str(write_config(tmp_path, responder_port))
    table, as_json = io.StringIO(), io.StringIO()
    check_command(config, snapshot=[str(d) for d in dirs], out=table)
    check_command(config, snapshot=[str(d) for d in dirs], output="json", out=as_json)
    assert "ec2-describe-vpcs.json: input was cut" in table.getvalue()
    notes = json.loads(as_json.getvalue())["view"]["notes"]
    assert any("ec2-describe-vpcs.json: input was cut" in n for n in notes)
