"""Lab topologies from hostile or broken files: always a ConfigError with file:line:col."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError
from agent.sources import topology
from agent.sources.topology import REFERENCE, load_topology


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_topology("t.yaml", text)
    return info.value


def edited(old: str, new: str) -> str:
    text = REFERENCE.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize("text", ["", "- a\n", "just text\n", "~\n"])
def test_a_document_that_is_not_a_mapping_is_a_config_error_at_1_1(text) -> None:
    err = error_of(text)
    assert (err.line, err.col) == (1, 1)


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("accounts:", "accounts: 5\nx:", "accounts"),
        ("private_ip: 10.2.1.15", "private_ip: [10.2.1.15]", "private_ip"),
        ("private_ip: 10.2.1.15", "private_ip: {a: 1}", "private_ip"),
        ("cidr_blocks: [10.1.0.10/32]", "cidr_blocks: [[10.1.0.10/32]]", "cidr_blocks[0]"),
        ("protocol: tcp", "protocol: [tcp]", "protocol"),
        ("protocol: tcp", "protocol: .nan", "protocol"),
        ("private_ip: 10.2.1.15", "private_ip: 10.2.1.15, tags: {1: x}", "tags"),
    ],
)
def test_a_wrong_type_names_its_key_and_position(old, new, key) -> None:
    err = error_of(edited(old, new))
    assert err.line is not None and err.col is not None
    assert err.key is not None and key in err.key


def test_a_port_beyond_64_bits_is_refused_by_the_yaml_layer() -> None:
    err = error_of(edited("port: 80", "port: 99999999999999999999999"))
    assert "out of range" in err.message and err.key.endswith("port")


def test_an_alias_in_a_topology_is_refused() -> None:
    err = error_of(edited("region: ", "x: &r 1\ny: *r\nregion: "))
    assert "aliases" in err.message and err.key == "y"


def test_an_unforeseen_exception_in_the_layout_checks_is_a_config_error(monkeypatch) -> None:
    def boom(self) -> None:
        raise OverflowError("unforeseen")

    monkeypatch.setattr(topology._Builder, "subnets", boom)
    err = error_of(REFERENCE.read_text())
    assert "OverflowError" in err.message and err.line is not None and err.col == 1
    assert isinstance(err.__cause__, OverflowError)
