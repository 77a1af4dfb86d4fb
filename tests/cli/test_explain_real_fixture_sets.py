"""``plprobe explain`` on every set of real AWS output names no wrong control.

The sets are the published describe-* examples of ``tests/sources/fixtures/real/``
(``SOURCES.md`` names each): every example alone, as the one file of an account directory,
and two whole snapshots glued from them (the first, and the last, example of every call, in
the side(s) that read it). They belong to no one path, so a verdict may say ``unknown`` (with
its candidates) or ``pass``; it may name a control only where the data itself shows that
control blocking (``JUSTIFIED``, with the reason). Explained from every instance, the first
address of every subnet and a bare IP, on every listener port and 80.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from agent.sources.aws_actions import CALLS
from agent.sources.aws_snapshot import load_snapshot

REAL = Path(__file__).parents[1] / "sources" / "fixtures" / "real"
FIXTURES = sorted(REAL.glob("*/*.json"))
#: examples the reader refuses on purpose (tests/sources/test_real_fixtures.py)
REFUSED = {"ec2-describe-instances/awscli-1.json"}
CONSUMER_ID, PROVIDER_ID = "111122223333", "123456789012"
#: set -> controls the data itself shows blocking, and why
JUSTIFIED: dict[str, set[str]] = {
    # the published connection is pendingAcceptance: it carries no traffic until accepted
    "ec2-describe-vpc-endpoint-connections/awscli-1.json": {"endpoint-acceptance"},
}


@pytest.fixture(autouse=True)
def _with_explain(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lead wires the command into COMMAND_MODULES; the tests do it themselves."""
    if "agent.cli.explain" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "agent.cli.explain"))


def rel_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def body_of(path: Path) -> Any:
    body = json.loads(path.read_text())
    if path.parent.name == "elbv2-describe-load-balancers":
        # every published example is an ALB; plprobe follows NLBs only
        for lb in body["LoadBalancers"]:
            lb["Type"] = "network"
    return body


def files_of(chosen: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """role -> {file: body}: each call's body in the side(s) that read it; a per-resource
    body belongs to the first resource of its listing (itself a chosen example)."""
    sides: dict[str, dict[str, Any]] = {"consumer": {}, "provider": {}}
    for call in CALLS:
        if call.stem not in chosen:
            continue
        for side in call.sides:
            if call.per is None:
                sides[side][call.file] = chosen[call.stem]
                continue
            listing = chosen.get(call.per.source)
            if listing is None:
                listing = body_of(sorted((REAL / call.per.source).glob("*.json"))[0])
                sides[side][f"{call.per.source}.json"] = listing
            for item in listing[call.per.list_key][:1]:
                sides[side][call.resource_file(item[call.per.id_key])] = chosen[call.stem]
    return {side: files for side, files in sides.items() if files}


def fixture_sets() -> list[tuple[str, dict[str, Any]]]:
    sets = [(rel_id(p), {p.parent.name: body_of(p)}) for p in FIXTURES if rel_id(p) not in REFUSED]
    for name, pick in (("first", 0), ("last", -1)):
        chosen = {}
        for call in CALLS:
            examples = [p for p in sorted((REAL / call.stem).glob("*.json"))]
            examples = [p for p in examples if rel_id(p) not in REFUSED]
            if examples:
                chosen[call.stem] = body_of(examples[pick])
        sets.append((f"all calls, {name} example each", chosen))
    return sets


def write(root: Path, chosen: dict[str, Any]) -> list[Path]:
    """Account directories; the consumer's copy of an example gets its own account id (the
    examples all print 123456789012), so the two sides stay two accounts."""
    dirs = []
    for role, files in files_of(chosen).items():
        d = root / role
        d.mkdir()
        ident = CONSUMER_ID if role == "consumer" else PROVIDER_ID
        meta = {"name": role, "id": ident, "role": role, "region": "us-east-1"}
        (d / "account.json").write_text(json.dumps(meta))
        for rel, body in files.items():
            text = json.dumps(body)
            if role == "consumer":
                text = text.replace(PROVIDER_ID, CONSUMER_ID)
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
        dirs.append(d)
    return dirs


SETS = fixture_sets()


def test_every_call_is_in_the_glued_sets():
    glued = dict(SETS)["all calls, first example each"]
    # describe-instances: its only published example is refused (clients are then bare IPs)
    assert set(glued) == {c.stem for c in CALLS} - {"ec2-describe-instances"}


@pytest.mark.parametrize(("name", "chosen"), SETS, ids=[s for s, _ in SETS])
def test_explain_on_a_real_fixture_set_names_no_wrong_control(
    name: str, chosen: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    dirs = write(tmp_path, chosen)
    t = load_snapshot(dirs)
    clients = [i.name for i in t.instances.values()]
    clients += [str(next(ipaddress.ip_network(s.cidr).hosts())) for s in t.subnets.values()]
    clients.append("10.0.0.5")
    ports = sorted({li.port for li in t.listeners.values()} | {80})
    allowed = {None, "unknown"} | JUSTIFIED.get(name, set())
    for client in clients:
        for port in ports:
            argv = ["explain", "--snapshot", *map(str, dirs), "--from", client]
            code = cli.main([*argv, "--port", str(port), "--output", "json"])
            out, err = capsys.readouterr()
            if code == 2:
                # the only refusal on these sets: several endpoints could be meant
                assert "--endpoint" in err, err
                continue
            verdicts = json.loads(out)["verdicts"]
            named = {v["blocked_at"] for v in verdicts}
            assert named <= allowed, (client, port, verdicts)
