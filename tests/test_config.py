"""Agent configuration: what loads, and how every kind of mistake is reported (file:line:key)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent.config import (
    ClientConfig,
    ProviderConfig,
    load_config,
    load_key,
    path_id,
    require_role,
)
from agent.errors import ConfigError

KEY = "k" * 32

CLIENT = """\
role: client
agent_id: client-2
key_file: key
paths:
  - name: svc
    regional: vpce-1.example
    zonal: {apne1-az4: vpce-1-az4.example}
    expected_ips: {apne1-az4: 10.2.0.20}
    ports: [80, 9721]
    probes: [dns, tcp, http]
    responder_ports: [9721]
"""

PROVIDER = """\
role: provider
agent_id: server-1
key_env: PLPROBE_TEST_KEY
responder: {port: 9721, proxy_v2: true, max_connections: 10, read_timeout: 1, max_bytes: 512}
sniffer: {interface: eth0, ports: [80], enabled: false}
expected_endpoint_ids: [vpce-0b6bf7bc8d96f3ea9]
"""


@pytest.fixture
def write(tmp_path: Path):
    (tmp_path / "key").write_text(KEY + "\n")
    (tmp_path / "key").chmod(0o600)

    def _write(text: str, name: str = "agent.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return _write


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def test_a_client_config_loads_with_its_paths(write) -> None:
    config = load_config(write(CLIENT))
    assert isinstance(config, ClientConfig)
    assert config.paths[0].expected_ips == {"apne1-az4": "10.2.0.20"}
    assert config.paths[0].responder_ports == [9721]
    assert config.listen == "0.0.0.0:9720"


def test_a_provider_config_loads_with_responder_and_sniffer(write, monkeypatch) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY)
    config = load_config(write(PROVIDER))
    assert isinstance(config, ProviderConfig)
    assert config.responder.proxy_v2 is True
    assert config.sniffer.enabled is False
    assert load_key(config) == KEY.encode()


def test_the_key_file_is_relative_to_the_config_and_trailing_newline_is_cut(write) -> None:
    config = load_config(write(CLIENT))
    assert load_key(config) == KEY.encode()


def test_config_objects_are_frozen(write) -> None:
    config = load_config(write(CLIENT))
    with pytest.raises(Exception, match="frozen"):
        config.agent_id = "other"  # type: ignore[misc]


def test_an_unknown_key_names_file_line_and_key(write) -> None:
    path = write(
        CLIENT.replace("    ports: [80, 9721]\n", "    ports: [80, 9721]\n    prots: [1]\n")
    )
    err = error_of(path)
    assert (err.path, err.line, err.key) == (str(path), 10, "paths[0].prots")
    assert "unknown key" in str(err)
    assert str(err).startswith(f"{path}:10:")


def test_a_wrong_type_names_the_line_of_the_value(write) -> None:
    err = error_of(write(CLIENT.replace("ports: [80, 9721]", "ports: [80, eighty]")))
    assert (err.line, err.key) == (9, "paths[0].ports[1]")


def test_an_unknown_probe_kind_is_rejected_with_the_known_ones(write) -> None:
    err = error_of(write(CLIENT.replace("probes: [dns, tcp, http]", "probes: [dns, icmp]")))
    assert err.key == "paths[0].probes"
    assert err.line == 10
    assert "'icmp'" in err.message and "tcp" in err.message


def test_an_inline_key_is_rejected_and_says_where_the_key_belongs(write) -> None:
    err = error_of(write(CLIENT.replace("key_file: key\n", "key_file: key\nkey: hunter2hunter2\n")))
    assert (err.line, err.key) == (4, "key")
    assert "key_file" in err.message and "key_env" in err.message


def test_a_missing_key_file_points_at_the_key_file_line(write) -> None:
    err = error_of(write(CLIENT.replace("key_file: key", "key_file: nope.key")))
    assert (err.line, err.key) == (3, "key_file")
    assert "nope.key" in err.message


def test_an_unset_key_variable_is_an_error_at_key_env(write, monkeypatch) -> None:
    monkeypatch.delenv("PLPROBE_TEST_KEY", raising=False)
    err = error_of(write(PROVIDER))
    assert (err.line, err.key) == (3, "key_env")


def test_a_short_key_is_rejected(write, monkeypatch) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", "short")
    err = error_of(write(PROVIDER))
    assert err.key == "key_env" and "at least" in err.message


def test_a_duplicate_yaml_key_is_an_error_not_last_one_wins(write) -> None:
    err = error_of(write(CLIENT.replace("agent_id: client-2\n", "agent_id: a\nagent_id: b\n")))
    assert (err.line, err.key) == (3, "agent_id")
    assert "duplicate" in err.message


def test_no_key_at_all_requires_an_explicit_insecure(write) -> None:
    err = error_of(write(CLIENT.replace("key_file: key\n", "")))
    assert "insecure: true" in err.message


def test_insecure_runs_without_a_key_and_says_so(write) -> None:
    config = load_config(write(CLIENT.replace("key_file: key\n", "insecure: true\n")))
    assert config.insecure is True
    assert load_key(config) == b""


def test_insecure_together_with_a_key_is_contradictory(write) -> None:
    err = error_of(write(CLIENT.replace("key_file: key\n", "key_file: key\ninsecure: true\n")))
    assert "insecure" in err.message


def test_a_role_that_is_neither_client_nor_provider_is_named(write) -> None:
    err = error_of(write(CLIENT.replace("role: client", "role: consumer")))
    assert (err.line, err.key) == (1, "role")


def test_a_responder_port_must_be_one_of_the_probed_ports(write) -> None:
    err = error_of(write(CLIENT.replace("responder_ports: [9721]", "responder_ports: [9999]")))
    assert err.key == "paths[0]" and "9999" in err.message


def test_a_path_without_names_or_ips_has_nothing_to_probe(write) -> None:
    text = """\
    role: client
    agent_id: c
    insecure: true
    paths:
      - name: svc
        ports: [80]
    """
    err = error_of(write(text))
    assert err.key == "paths[0]" and "nothing to probe" in err.message


def test_two_endpoints_producing_the_same_path_id_are_rejected(write) -> None:
    text = """\
    role: client
    agent_id: c
    insecure: true
    paths:
      - name: a
        expected_ips: {apne1-az4: 10.0.0.1}
      - name: b
        expected_ips: {apne1-az4: 10.0.0.2}
    """
    err = error_of(write(text))
    assert err.key == "paths[1]" and err.line == 7
    assert "c/apne1-az4/80" in err.message


def test_an_agent_id_that_would_overflow_the_token_is_rejected(write) -> None:
    text = f"""\
    role: client
    agent_id: {"a" * 30}
    insecure: true
    paths:
      - name: a
        expected_ips: {{apne1-az4: 10.0.0.1}}
    """
    err = error_of(write(text))
    assert "token" in err.message


def test_agent_id_defaults_to_the_environment(write, monkeypatch) -> None:
    monkeypatch.setenv("PLPROBE_AGENT_ID", "server-7")
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY)
    config = load_config(write(PROVIDER.replace("agent_id: server-1\n", "")))
    assert config.agent_id == "server-7"


def test_per_path_overrides_win_over_client_defaults(write) -> None:
    text = CLIENT.replace("    ports: [80, 9721]\n", "    ports: [80, 9721]\n    timeout: 7\n")
    config = load_config(write(text + "timeout: 3\nretries: 2\n"))
    assert isinstance(config, ClientConfig)
    settings = config.for_path(config.paths[0])
    assert (settings.timeout, settings.retries) == (7.0, 2)


def test_path_ids_follow_the_design_format() -> None:
    assert path_id("client-2", "apne1-az4", 80) == "client-2/apne1-az4/80"


def test_a_bad_expected_ip_names_the_az_key(write) -> None:
    err = error_of(write(CLIENT.replace("{apne1-az4: 10.2.0.20}", "{apne1-az4: 10.2.0.300}")))
    assert err.key is not None and err.key.startswith("paths[0].expected_ips")
    assert err.line == 8


def test_a_key_file_every_user_can_read_is_refused(write, tmp_path: Path) -> None:
    path = write(CLIENT)
    (tmp_path / "key").chmod(0o644)
    with pytest.raises(ConfigError, match="accessible to every user") as exc:
        load_config(path)
    assert exc.value.key == "key_file"


def test_a_key_file_readable_by_the_agents_group_is_accepted(write, tmp_path: Path) -> None:
    path = write(CLIENT)
    (tmp_path / "key").chmod(0o640)
    assert load_config(path).agent_id


def test_mark_gives_the_line_and_column_of_a_key_in_the_file(write) -> None:
    config = load_config(write("# a client\n" + CLIENT))
    assert config.mark(("role",)) == (2, 1)
    assert config.mark(("paths", 0, "ports")) == (10, 5)


def test_mark_of_a_key_the_file_leaves_out_is_none(write) -> None:
    assert load_config(write(CLIENT)).mark(("listen",)) == (None, None)


def test_require_role_returns_a_config_of_the_wanted_role(write) -> None:
    config = load_config(write(CLIENT))
    assert require_role(config, ClientConfig, command="check") is config


def test_require_role_refuses_the_other_role_at_the_role_line(write, monkeypatch) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY)
    path = write("# a provider\n" + PROVIDER)
    with pytest.raises(ConfigError) as info:
        require_role(load_config(path), ClientConfig, command="probe", hint="use plprobe observe")
    err = info.value
    assert (err.path, err.line, err.col, err.key) == (str(path), 2, 1, "role")
    assert err.message == (
        "plprobe probe needs role: client (this is a provider config; use plprobe observe)"
    )
    assert err.exit_code == 2


def test_require_role_names_the_provider_role_for_provider_commands(write) -> None:
    with pytest.raises(ConfigError) as info:
        require_role(load_config(write(CLIENT)), ProviderConfig, command="observe")
    assert info.value.message == "plprobe observe needs role: provider (this is a client config)"
