"""The wheel the Dockerfile and the EC2 install build is complete and runs outside the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("plprobe-*.whl")
    return path


def test_wheel_ships_every_module_and_the_lab_topologies(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "agent").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    for topology in ("reference.yaml", "multi-az.yaml", "provider.yaml", "client-2.yaml"):
        assert f"agent/lab/topologies/{topology}" in names


def test_installed_wheel_renders_the_reference_lab_outside_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import agent, sys; from agent.cli import main; print(agent.__file__); "
            "sys.exit(main(['lab', 'render']))",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(site))
    assert "10.3.0.100" in proc.stdout
