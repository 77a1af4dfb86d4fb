"""Property: no input makes the config or topology loader, or ``plprobe check``, crash.

Inputs are the shipped files (``configs/*.yaml``, ``configs/lab/*.yaml``) after a few random
edits (bytes flipped, inserted, deleted, duplicated; YAML syntax and hostile tokens spliced
in) and plain random bytes. Loading must return a config/topology or raise ConfigError;
``plprobe check --config F`` on a file that does not load must exit 2 with one line and no
traceback. Bounded to ~15 s; ``bench/fuzz_parsers.py`` runs the long version.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import cli
from agent.config import load_config
from agent.errors import ConfigError
from agent.sources.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
AGENT_CONFIGS = sorted(
    p
    for p in [*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/lab/*.yaml")]
    if re.search(r"^role:", p.read_text(), re.MULTILINE)
)
TOPOLOGIES = sorted(p for p in ROOT.glob("configs/lab/*.yaml") if "resources:" in p.read_text())

#: spliced into the files: YAML syntax, the tokens that used to crash, and hostile values
TOKENS = [
    b"&a ",
    b"*a",
    b"!!int ",
    b"!!binary ",
    b"!foo ",
    b"<<: ",
    b"? ",
    b"- ",
    b": ",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"\n",
    b"\n  ",
    b"\t",
    b"'",
    b'"',
    b"#",
    b"---\n",
    b"...",
    b"|",
    b">",
    b"\x00",
    b"\\0",
    b"\xff",
    b"\xc3",
    b"~nosuchuser/",
    b"9" * 40,
    b"0x" + b"f" * 30,
    b".inf",
    b".nan",
    b"-1",
    b"null",
    b"true",
    b"2001-13-45",
    b"[client]",
    b"{}",
    b"[]",
    b"1e+999",
]
FUZZ = settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@st.composite
def mutated(draw: st.DrawFn, files: list[Path]) -> bytes:
    """One shipped file with 1-6 random edits."""
    data = bytearray(draw(st.sampled_from(files)).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "token", "delete", "duplicate"]))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
    return bytes(data)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def key_in_env() -> Iterator[None]:
    """The shipped configs name ``key_env: PLPROBE_KEY``; a valid one must load fully."""
    with mock.patch.dict(os.environ, {"PLPROBE_KEY": "k" * 32}):
        yield


def loads_or_config_error(loader, path: Path) -> ConfigError | None:
    """The property: a result, or a ConfigError that says where (file:line:col)."""
    try:
        loader(path)
    except ConfigError as exc:
        assert exc.path == str(path) and exc.line is not None and exc.col is not None, exc
        return exc
    return None


def test_the_base_files_load(workdir) -> None:
    """The mutations start from valid files (else the property tests only the first check)."""
    with key_in_env():
        for path in AGENT_CONFIGS:
            load_config(path)
    for path in TOPOLOGIES:
        load_topology(path)
    assert len(AGENT_CONFIGS) >= 4 and len(TOPOLOGIES) >= 3


@FUZZ
@given(data=mutated(AGENT_CONFIGS))
def test_a_mutated_config_loads_or_is_a_config_error(workdir, data) -> None:
    path = workdir / "agent.yaml"
    path.write_bytes(data)
    with key_in_env():
        loads_or_config_error(load_config, path)


@FUZZ
@given(data=mutated(TOPOLOGIES))
def test_a_mutated_topology_loads_or_is_a_config_error(workdir, data) -> None:
    path = workdir / "topology.yaml"
    path.write_bytes(data)
    loads_or_config_error(load_topology, path)


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_are_a_config_or_a_config_error(workdir, data) -> None:
    path = workdir / "random.yaml"
    path.write_bytes(data)
    with key_in_env():
        loads_or_config_error(load_config, path)
    loads_or_config_error(load_topology, path)


@settings(FUZZ, max_examples=200)
@given(data=st.one_of(mutated(AGENT_CONFIGS), st.binary(max_size=256)))
def test_check_exits_2_without_a_traceback_on_a_config_that_does_not_load(workdir, data) -> None:
    path = workdir / "check.yaml"
    path.write_bytes(data)
    with key_in_env():
        error = loads_or_config_error(load_config, path)
        if error is None:
            return  # a valid config: check would probe for real
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["check", "--config", str(path)])
    assert code == 2
    assert "Traceback" not in err.getvalue()
    assert err.getvalue() == f"plprobe: {error}\n"
