"""Agent configs from hostile or broken files: always a ConfigError with file:line:col: key.

The loader is the input boundary of ``plprobe check/run/observe --config``: whatever the file
holds, the command exits 2 with one line naming where the problem is, never a traceback.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import agent.config
from agent import cli
from agent.config import load_config
from agent.errors import ConfigError

KEY = "k" * 32

PROVIDER = """\
role: provider
agent_id: server-1
insecure: true
"""

CLIENT = """\
role: client
agent_id: client-1
insecure: true
paths:
  - name: svc
    regional: vpce-1.example
    provider_url: http://10.0.0.1:9720
"""


@pytest.fixture
def write(tmp_path: Path):
    def _write(text: str | bytes, name: str = "agent.yaml") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text))
        return path

    return _write


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def test_a_list_as_role_is_a_config_error_at_role(write) -> None:
    err = error_of(write("role: [client]\nagent_id: a\ninsecure: true\n"))
    assert (err.line, err.col, err.key) == (1, 1, "role")
    assert "role must be 'client' or 'provider'" in err.message


def test_a_mapping_as_role_is_a_config_error_at_role(write) -> None:
    assert error_of(write("role: {client: 1}\n")).key == "role"


@pytest.mark.parametrize("key", ["api_token_file", "key_file"])
def test_a_path_under_an_unknown_users_home_is_a_config_error(write, key) -> None:
    text = PROVIDER.replace("insecure: true", "") if key == "key_file" else PROVIDER
    err = error_of(write(text + f"{key}: ~nosuchuser-plprobe/x\n"))
    assert err.key == key and err.line is not None and err.col == 1
    assert "'~nosuchuser-plprobe': no such user" in err.message


@pytest.mark.parametrize("key", ["api_token_file", "key_file"])
def test_a_path_with_a_nul_byte_is_a_config_error(write, key) -> None:
    text = PROVIDER.replace("insecure: true", "") if key == "key_file" else PROVIDER
    err = error_of(write(text + f'{key}: "a\\0b"\n'))
    assert err.key == key and err.message == "a path cannot contain a NUL byte"


def test_a_snapshot_dir_with_a_nul_byte_is_a_config_error(write) -> None:
    err = error_of(write(CLIENT + 'config_sources: {snapshot_dirs: ["s\\0"]}\n'))
    assert err.key == "config_sources.snapshot_dirs[0]"


def test_a_key_file_that_never_ends_is_a_config_error(write) -> None:
    err = error_of(write(PROVIDER.replace("insecure: true", "key_file: /dev/zero")))
    assert err.key == "key_file" and "larger than" in err.message


@pytest.mark.parametrize(
    "text",
    [
        "- role: client\n",
        "just a string\n",
        "42\n",
        "",
        "~\n",
    ],
    ids=["list", "string", "number", "empty", "null"],
)
def test_a_document_that_is_not_a_mapping_is_a_config_error(write, text) -> None:
    err = error_of(write(text))
    assert err.line == 1 and err.col == 1


@pytest.mark.parametrize(
    "edit",
    [
        ("agent_id: client-1", "agent_id: [client-1]"),
        ("agent_id: client-1", "agent_id: 1.5e+400"),
        ("insecure: true", "insecure: {a: b}"),
        ("paths:", "listen: [1]\npaths:"),
        ("  - name: svc", "  - 5\n  - name: svc"),
        ("    regional: vpce-1.example", "    regional: {a: [1]}"),
        ("    regional: vpce-1.example", "    expected_ips: [1, 2]"),
        ("    regional: vpce-1.example", "    expected_ips: {az: [1]}"),
        ("    regional: vpce-1.example", "    zonal: {'': x}\n    ports: [x]"),
        ("    provider_url: http://10.0.0.1:9720", "    provider_url: [[1]]"),
        ("    provider_url: http://10.0.0.1:9720", "    probes: [[dns]]"),
        ("    provider_url: http://10.0.0.1:9720", "    interval: .nan"),
        ("insecure: true", "insecure: true\nconfig_sources: [1]"),
    ],
)
def test_a_wrong_type_anywhere_is_a_config_error_with_a_position(write, edit) -> None:
    old, new = edit
    err = error_of(write(CLIENT.replace(old, new)))
    assert err.line is not None and err.col is not None and err.key


@pytest.mark.parametrize("exc", [TypeError, OverflowError, RecursionError, KeyError])
def test_an_unforeseen_exception_in_a_validator_is_a_config_error(write, monkeypatch, exc) -> None:
    def boom(value: str) -> str:
        raise exc("unforeseen")

    monkeypatch.setattr(agent.config, "_check_url", boom)
    err = error_of(write(CLIENT))
    assert exc.__name__ in err.message and err.line == 1 and err.col == 1
    assert isinstance(err.__cause__, exc)  # kept for plprobe --debug


def test_an_unforeseen_exception_in_a_later_check_is_a_config_error(write, monkeypatch) -> None:
    def boom(config, doc) -> None:
        raise TypeError("unforeseen")

    monkeypatch.setattr(agent.config, "_check_path_ids", boom)
    assert "TypeError" in error_of(write(CLIENT)).message


def test_the_message_drops_pydantics_value_error_prefix(write) -> None:
    err = error_of(write(CLIENT.replace("agent_id: client-1", "agent_id: '-x'")))
    assert err.message.startswith("1-32 characters")


@pytest.mark.parametrize(
    "content",
    [b"role: [client]\n", b"\xff\xfe\x00\x01", b"a: &x [*x]\n", b"role: !!int abc\n"],
    ids=["unhashable-role", "binary", "alias", "bad-tag"],
)
def test_check_exits_2_with_one_line_and_no_traceback(write, capsys, content) -> None:
    path = write(content)
    assert cli.main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(f"plprobe: {path}:1:") and err.count("\n") == 1
