"""Safe YAML: what the loader refuses, where it says so, and that it stays fast on abuse.

Every case ends in a ``ConfigError`` naming file:line:col (and the key when there is one);
none may take noticeable time or memory, whatever the input.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest
import yaml

from agent import yamlsrc
from agent.errors import ConfigError
from agent.yamlsrc import MAX_BYTES, MAX_DEPTH, MAX_NODES, load_yaml

SHIPPED = sorted(Path(__file__).resolve().parent.parent.glob("configs/**/*.yaml"))

#: 342 bytes, 9**9 (387 million) strings once every alias is expanded
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
)


@pytest.fixture(params=["libyaml", "pure-python"])
def parser(request, monkeypatch) -> str:
    """Both event sources must behave the same (libyaml is optional at install time)."""
    if request.param == "pure-python":
        monkeypatch.setattr(yamlsrc, "_LOADER", yaml.SafeLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("libyaml is not installed")
    return request.param


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_yaml("in.yaml", text)
    return info.value


def test_values_keep_their_line_and_column(parser) -> None:
    doc = load_yaml("in.yaml", "a:\n  b: [1, two]\n  c: {d: true}\n")
    assert doc.value == {"a": {"b": [1, "two"], "c": {"d": True}}}
    assert doc.where(("a", "b", 1)) == (2, 10)
    assert doc.where(("a", "c", "d")) == (3, 7)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_files_load_the_same_with_libyaml_and_pure_python(path, monkeypatch) -> None:
    fast = load_yaml(path)
    monkeypatch.setattr(yamlsrc, "_LOADER", yaml.SafeLoader)
    slow = load_yaml(path)
    assert (fast.value, fast.marks) == (slow.value, slow.marks)


def test_an_empty_document_is_an_empty_mapping(parser) -> None:
    assert load_yaml("in.yaml", "").value == {}
    assert load_yaml("in.yaml", "# only a comment\n").value == {}


def test_an_alias_is_refused_at_its_position(parser) -> None:
    err = refused("a: &x 1\nb: *x\n")
    assert (err.line, err.col, err.key) == (2, 4, "b")
    assert "aliases (*x) are not supported" in err.message


def test_a_self_referencing_alias_is_refused_not_a_recursion_error(parser) -> None:
    err = refused("a: &x [*x]\n")
    assert "aliases" in err.message and err.key == "a[0]"


def test_the_alias_bomb_is_refused_fast_with_bounded_memory(parser) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    err = refused(ALIAS_BOMB)
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB
    assert (err.line, err.col) == (2, 8)


def test_a_merge_key_is_refused(parser) -> None:
    assert "merge keys" in refused("a: {x: 1}\nb:\n  <<: {x: 1}\n").message


@pytest.mark.parametrize("key", ["80", "1.5", "true", "null", "~"])
def test_a_key_that_is_not_a_string_is_refused_with_its_position(parser, key) -> None:
    err = refused(f"ports:\n  {key}: x\n")
    assert (err.line, err.col, err.key) == (2, 3, "ports")
    assert "mapping keys must be strings" in err.message


def test_a_quoted_number_is_a_string_key(parser) -> None:
    assert load_yaml("in.yaml", "'80': x\n").value == {"80": "x"}


def test_a_list_as_key_is_refused(parser) -> None:
    err = refused("? [a, b]\n: 1\n")
    assert (err.line, err.col) == (1, 3) and "keys must be strings" in err.message


def test_a_tagged_key_that_does_not_construct_is_refused(parser) -> None:
    err = refused("!!int abc: 1\n")
    assert (err.line, err.col) == (1, 1) and "not a valid !!int" in err.message


def test_a_duplicate_key_is_refused_with_the_second_position(parser) -> None:
    err = refused("a: 1\nb: 2\na: 3\n")
    assert (err.line, err.col, err.key) == (3, 1, "a") and "duplicate key" in err.message


def test_an_invalid_explicit_int_is_refused_with_its_position(parser) -> None:
    err = refused("role: !!int abc\n")
    assert (err.line, err.col, err.key) == (1, 7, "role")
    assert err.message == "'abc' is not a valid !!int"


@pytest.mark.parametrize("tag", ["!foo", "!!binary", "!!set", "!!omap", "!!timestamp"])
def test_a_tag_other_than_the_plain_data_types_is_refused(parser, tag) -> None:
    err = refused(f"x: 1\nrole: {tag} aGk=\n")
    assert (err.line, err.col, err.key) == (2, 7, "role")
    assert "is not supported" in err.message


def test_a_python_object_tag_is_refused(parser) -> None:
    err = refused("a: !!python/object/apply:os.system [id]\n")
    assert "python/object/apply:os.system" in err.message and err.line == 1


def test_the_plain_data_tags_may_be_written(parser) -> None:
    doc = load_yaml("in.yaml", "a: !!str 80\nb: !!int '7'\nc: !!seq [1]\nd: !!map {e: !!null x}\n")
    assert doc.value == {"a": "80", "b": 7, "c": [1], "d": {"e": None}}


def test_a_date_stays_a_string(parser) -> None:
    assert load_yaml("in.yaml", "a: 2001-13-45\nb: 2001-01-01\n").value == {
        "a": "2001-13-45",
        "b": "2001-01-01",
    }


def test_a_5000_digit_integer_is_refused(parser) -> None:
    err = refused("concurrency: " + "9" * 5000 + "\n")
    assert (err.line, err.col, err.key) == (1, 14, "concurrency")
    assert "too long" in err.message


def test_an_integer_beyond_64_bits_is_refused(parser) -> None:
    err = refused("n: 0x1" + "0" * 16 + "\n")
    assert "out of range" in err.message and err.key == "n"


def test_a_64_bit_integer_is_accepted(parser) -> None:
    assert load_yaml("in.yaml", f"n: {2**63}\n").value == {"n": 2**63}


def test_deep_flow_nesting_is_refused_not_a_recursion_error(parser) -> None:
    err = refused("a: " + "[" * 2000 + "]" * 2000 + "\n")
    assert err.line == 1 and err.col is not None


def test_deep_block_nesting_is_refused_at_the_first_level_too_deep(parser) -> None:
    text = "".join(" " * i + "a:\n" for i in range(1000))
    err = refused(text)
    assert err.line == MAX_DEPTH + 1 and f"deeper than {MAX_DEPTH}" in err.message


def test_nesting_up_to_the_bound_is_accepted(parser) -> None:
    doc = load_yaml("in.yaml", "[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert doc.value is not None


def test_too_many_values_are_refused(parser, monkeypatch) -> None:
    monkeypatch.setattr(yamlsrc, "MAX_NODES", 1000)  # the same check, 100x less parsing
    err = refused("[" + ",".join(["1"] * 1000) + "]")  # the list itself is the 1001st value
    assert "more than 1000 values" in err.message
    assert (err.line, err.col, err.key) == (1, 2000, "[999]")


def test_the_node_bound_leaves_room_for_a_large_topology() -> None:
    largest = max(len(load_yaml(path).marks) for path in SHIPPED)
    assert largest * 100 <= MAX_NODES


def test_a_document_larger_than_the_bound_is_refused_before_parsing(parser) -> None:
    start = time.perf_counter()
    err = refused("a: " + "x" * MAX_BYTES)
    assert time.perf_counter() - start < 0.5 and (err.line, err.col) == (1, 1)


def test_a_file_larger_than_the_bound_is_refused_without_reading_it_all(tmp_path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_yaml(path)


def test_dev_zero_as_a_file_ends_in_a_config_error() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        load_yaml("/dev/zero")


def test_a_second_document_is_refused(parser) -> None:
    err = refused("a: 1\n---\nb: 2\n")
    assert err.line == 2 and "one YAML document" in err.message


def test_a_nul_byte_is_refused_at_its_line_and_column(parser) -> None:
    err = refused("a: 1\nrole: cl\0ient\n")
    assert (err.line, err.col) == (2, 9) and "NUL byte" in err.message


def test_a_control_character_is_refused_with_its_code(parser) -> None:
    assert "U+0007" in refused("a: \x07\n").message


def test_invalid_utf8_is_refused_at_its_line_and_column(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"a: 1\nb: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert (info.value.line, info.value.col) == (2, 4)
    assert "not UTF-8" in info.value.message


def test_a_path_with_a_nul_byte_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml("conf\0ig.yaml")


def test_a_directory_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path)


def test_a_syntax_error_has_line_and_column(parser) -> None:
    err = refused("a: [1, 2\nb: 3\n")
    assert err.message.startswith("invalid YAML") and err.line is not None and err.col is not None
