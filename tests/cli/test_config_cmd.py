"""``plprobe config schema`` and ``plprobe config check FILE`` (agent/cli/config.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from agent import cli
from agent.cli.config import check_file, config_schema

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [
    REPO / "configs" / "client.example.yaml",
    REPO / "configs" / "provider.example.yaml",
    REPO / "configs" / "lab" / "client-1.yaml",
    REPO / "configs" / "lab" / "client-2.yaml",
    REPO / "configs" / "lab" / "provider.yaml",
]
KEY = "config-check-test-key-0123456789abcdef"


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


CLIENT = """\
role: client
agent_id: client-9
key_env: PLPROBE_TEST_KEY
interval: 15
paths:
  - name: orders
    regional: localhost
    expected_ips: {apne1-az1: 127.0.0.1, apne1-az4: 127.0.0.2}
    ports: [80, 443]
    probes: [dns, tcp]
"""


# -- schema --------------------------------------------------------------------------------


def test_the_schema_is_printed_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates_against_the_schema(shipped: Path) -> None:
    jsonschema.validate(yaml.safe_load(shipped.read_text()), config_schema())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"role": "consumer"}, "unknown role"),
        ({"intervall": 10}, "misspelt key"),
        ({"interval": 0}, "interval must be positive"),
        ({"paths": []}, "a client needs a path"),
        ({"log_format": "xml"}, "unknown log format"),
    ],
)
def test_the_schema_rejects_what_the_loader_rejects(change: dict, why: str) -> None:
    doc = {**yaml.safe_load(CLIENT), **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, config_schema())


def test_agent_id_may_be_left_out_as_the_loader_allows() -> None:
    doc = yaml.safe_load(CLIENT)
    del doc["agent_id"]
    jsonschema.validate(doc, config_schema())


# -- check: valid files --------------------------------------------------------------------


def test_a_valid_file_exits_0_and_lists_the_paths_it_would_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY)
    assert cli.main(["config", "check", str(write(tmp_path, CLIENT))]) == 0
    out = capsys.readouterr().out
    assert "valid client config, agent client-9" in out
    assert "would probe 4 path(s)" in out
    for path in ("client-9/apne1-az1/80", "client-9/apne1-az1/443", "client-9/apne1-az4/443"):
        assert path in out
    assert "127.0.0.2:443" in out and "15s" in out


def test_check_resolves_the_names_and_compares_them_with_the_expected_ips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY)
    report = check_file(str(write(tmp_path, CLIENT)))
    [localhost] = report.resolved
    assert localhost.name == "localhost" and "127.0.0.1" in localhost.addresses
    assert localhost.matches is False  # localhost is not both ENI IPs
    assert any("localhost resolves to" in w for w in report.warnings)


def test_without_expected_ips_the_paths_are_labelled_by_the_resolved_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY)
    text = CLIENT.replace("    expected_ips: {apne1-az1: 127.0.0.1, apne1-az4: 127.0.0.2}\n", "")
    report = check_file(str(write(tmp_path, text)))
    addresses = [a for a in report.resolved[0].addresses if ":" not in a]
    assert {p.path for p in report.plan if p.port == 80} >= {f"client-9/{a}/80" for a in addresses}


def test_a_name_that_does_not_resolve_here_is_a_warning_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY)
    text = CLIENT.replace("regional: localhost", "regional: vpce-0abc.invalid")
    report = check_file(str(write(tmp_path, text)))
    assert report.valid and report.exit_code == 0
    assert report.resolved[0].error
    assert any("do not resolve here" in w for w in report.warnings)


def test_a_key_missing_on_the_checking_host_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLPROBE_TEST_KEY", raising=False)
    report = check_file(str(write(tmp_path, CLIENT)), resolve=False)
    assert report.valid
    assert any("PLPROBE_TEST_KEY is not set" in w for w in report.warnings)


def test_a_provider_config_reports_what_it_would_listen_on(tmp_path: Path) -> None:
    report = check_file(str(REPO / "configs" / "provider.example.yaml"))
    assert report.valid and report.role == "provider"
    assert report.provider["responder"].endswith(":9721")
    assert report.plan == []


def test_check_answers_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY)
    path = write(tmp_path, CLIENT)
    assert cli.main(["config", "check", "--no-resolve", "--output", "json", str(path)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["valid"] is True and body["errors"] == []
    assert [p["path"] for p in body["plan"]][:2] == [
        "client-9/apne1-az1/80",
        "client-9/apne1-az1/443",
    ]


# -- check: invalid files ------------------------------------------------------------------

BROKEN = """\
role: client
agent_id: "bad id"
interval: -1
key_env: PLPROBE_TEST_KEY
paths:
  - name: orders
    regional: localhost
    ports: [0, 80]
    probez: [tcp]
"""


def test_every_error_is_reported_with_file_line_and_column_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BROKEN)
    assert cli.main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:2:1: agent_id: ")
    assert err[1].startswith(f"{path}:3:1: interval: ")
    assert err[2].startswith(f"{path}:8:13: paths[0].ports[0]: ")
    assert err[3] == (
        f"{path}:9:5: paths[0].probez: unknown key (check the spelling; see the configuration "
        "reference)"
    )
    assert err[4] == f"{path}: invalid (4 error(s))"


def test_yaml_that_does_not_parse_is_reported_at_its_position(tmp_path: Path) -> None:
    report = check_file(str(write(tmp_path, "role: client\npaths: [\n")))
    assert report.exit_code == 2
    [error] = report.errors
    assert error.startswith(f"{tmp_path / 'agent.yaml'}:3:1: invalid YAML")


def test_checks_of_the_whole_config_run_after_the_schema(tmp_path: Path) -> None:
    text = CLIENT + "api_token_file: missing-token\n"
    report = check_file(str(write(tmp_path, text)))
    assert report.exit_code == 2
    assert report.errors == [
        f"{tmp_path / 'agent.yaml'}:11:1: api_token_file: file not found: "
        f"{tmp_path / 'missing-token'}"
    ]


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
