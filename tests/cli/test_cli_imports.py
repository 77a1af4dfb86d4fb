"""The ``plprobe`` entry loads what the command given needs, not every command's machinery.

Why it matters: ``plprobe check`` should feel instant, and imports were half of its wall time.
Each test runs a fresh interpreter (imports are per process) and lists the modules loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cli

#: never needed by ``plprobe check`` without ``--aws`` on a config without a view
HEAVY = (
    "aiohttp.web",
    "agent.lab",
    "agent.daemon",
    "agent.api",
    "agent.analyze",
    "botocore",
    "boto3",
    "scapy",
)


def loaded_after(code: str) -> set[str]:
    """Top-level and dotted module names loaded by ``code`` in a new interpreter."""
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_naming_a_command_registers_only_that_command() -> None:
    parser = cli.build_parser(["check", "--config", "x.yaml"])
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == ["check", "version"]  # type: ignore[union-attr]


@pytest.mark.parametrize("argv", [[], ["--help"], ["nonsense"], ["--debug"]])
def test_without_a_known_command_every_command_is_registered(argv: list[str]) -> None:
    parser = cli.build_parser(argv)
    sub = next(a for a in parser._actions if a.dest == "command")
    names = {m.rsplit(".", 1)[-1] for m in cli.COMMAND_MODULES}
    assert names <= set(sub.choices)  # type: ignore[arg-type]


def test_the_debug_flag_before_the_command_still_selects_it() -> None:
    parser = cli.build_parser(["--debug", "probe", "--config", "x.yaml"])
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == ["probe", "version"]  # type: ignore[union-attr]


def test_check_loads_no_server_lab_daemon_aws_or_scapy_modules(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    code = (
        "from agent.cli import main\n"
        f"assert main(['check', '--config', {str(missing)!r}]) == 2\n"
        "from agent.cli.check import check_command\n"
        "import agent.diagnose.check, agent.probes.http, agent.probes.syn, agent.probes.dns\n"
    )
    assert heavy(loaded_after(code)) == []


def test_a_round_without_http_probes_does_not_load_aiohttp() -> None:
    modules = loaded_after("import agent.diagnose.check, agent.probes.tcp, agent.probes.syn")
    assert not any(m == "aiohttp" or m.startswith("aiohttp.") for m in modules)


def test_the_version_command_registers_no_command_module() -> None:
    parser = cli.build_parser(["version"])
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == ["version"]  # type: ignore[union-attr]
    assert cli.main(["version"]) == 0
