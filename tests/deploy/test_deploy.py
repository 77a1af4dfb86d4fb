"""Deployment artifacts: everything that can be checked without AWS or a container engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import botocore.session
import hcl2
import pytest
from botocore.validate import ParamValidator

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
REQUIRE_TOOLS = os.environ.get("PLPROBE_REQUIRE_TOOLS") == "1"


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        if REQUIRE_TOOLS:
            pytest.fail(f"{name} is required (PLPROBE_REQUIRE_TOOLS=1) but not installed")
        pytest.skip(f"{name} not installed")
    return path


# --- ECS ---------------------------------------------------------------------------------
ECS = botocore.session.get_session().get_service_model("ecs")
TASKS = sorted((DEPLOY / "ecs").glob("task-definition-*.json"))
SERVICES = sorted((DEPLOY / "ecs").glob("service-*.json"))


def test_there_is_a_task_definition_and_a_service_per_role() -> None:
    assert [p.name for p in TASKS] == [
        "task-definition-client.json",
        "task-definition-provider.json",
    ]
    assert [p.name for p in SERVICES] == ["service-client.json", "service-provider.json"]


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.name)
def test_task_definition_matches_register_task_definition_input(path: Path) -> None:
    report = ParamValidator().validate(
        json.loads(path.read_text()), ECS.operation_model("RegisterTaskDefinition").input_shape
    )
    assert not report.has_errors(), report.generate_report()


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_service_definition_matches_create_service_input(path: Path) -> None:
    doc = json.loads(path.read_text())
    report = ParamValidator().validate(doc, ECS.operation_model("CreateService").input_shape)
    assert not report.has_errors(), report.generate_report()
    assert doc["schedulingStrategy"] == "DAEMON"


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.name)
def test_task_runs_on_the_host_network_with_only_net_raw(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert doc["networkMode"] == "host"
    (container,) = doc["containerDefinitions"]
    caps = container["linuxParameters"]["capabilities"]
    assert caps == {"add": ["NET_RAW"], "drop": ["ALL"]}
    assert container.get("privileged") is not True
    assert not container["user"].startswith("0")


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.name)
def test_task_takes_the_key_from_parameter_store_and_logs_to_cloudwatch(path: Path) -> None:
    (container,) = json.loads(path.read_text())["containerDefinitions"]
    (secret,) = container["secrets"]
    assert secret["name"] == "PLPROBE_KEY"
    assert secret["valueFrom"].startswith(("arn:aws:ssm:", "arn:aws:secretsmanager:"))
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert "/healthz" in " ".join(container["healthCheck"]["command"])


# --- systemd -----------------------------------------------------------------------------
UNIT = DEPLOY / "systemd" / "plprobe.service"


def _unit() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_systemd_unit_runs_unprivileged_with_only_net_raw() -> None:
    unit = _unit()
    assert unit["User"] == "plprobe"
    assert unit["AmbientCapabilities"] == "CAP_NET_RAW"
    assert unit["CapabilityBoundingSet"] == "CAP_NET_RAW"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[key] == "yes", key
    assert unit["ProtectSystem"] == "strict"


def test_systemd_unit_restarts_and_reloads_on_sighup() -> None:
    unit = _unit()
    assert unit["Restart"] == "on-failure"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["ExecStart"].endswith("plprobe run --config /etc/plprobe/plprobe.yaml")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    plprobe = Path(sys.executable).parent / "plprobe"
    unit = tmp_path / "plprobe.service"
    # verify checks that ExecStart exists: point it at this checkout's installed command
    unit.write_text(UNIT.read_text().replace("/opt/plprobe/venv/bin/plprobe", str(plprobe)))
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in proc.stderr.splitlines()
        if "plprobe.service" in line and "Failed to" not in line
    ]
    assert proc.returncode == 0 and not problems, proc.stderr


# --- Dockerfile --------------------------------------------------------------------------
DOCKERFILE = ROOT / "Dockerfile"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert re.search(r"^HEALTHCHECK .*\n?.*healthz", text, re.M)


def test_dockerfile_installs_the_package_like_make_does() -> None:
    text = DOCKERFILE.read_text()
    assert "COPY pyproject.toml" in text and "pip wheel" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# --- Terraform ---------------------------------------------------------------------------
TF_DIR = DEPLOY / "terraform"
TF_FILES = sorted(TF_DIR.rglob("*.tf"))


def _strip(name: str) -> str:
    return name.strip('"')


def _tf(dir_: Path) -> dict[str, list]:
    merged: dict[str, list] = {}
    for path in sorted(dir_.glob("*.tf")):
        with path.open() as fh:
            for key, blocks in hcl2.load(fh).items():
                merged.setdefault(key, []).extend(blocks)
    return merged


def _declared(doc: dict[str, list]) -> set[str]:
    names: set[str] = set()
    for block in doc.get("resource", []):
        for rtype, body in block.items():
            for rname in body:
                names.add(f"{_strip(rtype)}.{_strip(rname)}")
    for block in doc.get("data", []):
        for rtype, body in block.items():
            for rname in body:
                names.add(f"data.{_strip(rtype)}.{_strip(rname)}")
    for block in doc.get("variable", []):
        names.update(f"var.{_strip(n)}" for n in block)
    for block in doc.get("module", []):
        names.update(f"module.{_strip(n)}" for n in block)
    for block in doc.get("locals", []):
        names.update(f"local.{_strip(n)}" for n in block)
    return names


REF = re.compile(
    r"(?<![\w.])((?:data\.)?aws_[a-z0-9_]+\.[A-Za-z0-9_-]+|var\.[A-Za-z0-9_]+|"
    r"module\.[A-Za-z0-9_]+|local\.[A-Za-z0-9_]+)"
)


def test_every_terraform_file_parses() -> None:
    assert len(TF_FILES) >= 5
    for path in TF_FILES:
        with path.open() as fh:
            hcl2.load(fh)


@pytest.mark.parametrize("module", [TF_DIR, TF_DIR / "modules" / "egress"], ids=str)
def test_every_terraform_reference_is_declared(module: Path) -> None:
    doc = _tf(module)
    declared = _declared(doc)
    text = "\n".join(re.sub(r"#.*", "", p.read_text()) for p in sorted(module.glob("*.tf")))
    used = set(REF.findall(text))
    missing = sorted(u for u in used if u not in declared)
    assert not missing, f"undeclared references in {module}: {missing}"


def test_every_root_resource_names_its_account_provider_unquoted() -> None:
    doc = _tf(TF_DIR)
    for kind in ("resource", "data"):
        for block in doc.get(kind, []):
            for rtype, body in block.items():
                if not _strip(rtype).startswith("aws_"):
                    continue  # random_password etc. belong to no account
                for rname, attrs in body.items():
                    assert attrs.get("provider") in ("${aws.consumer}", "${aws.provider}"), (
                        f"{kind} {_strip(rtype)}.{_strip(rname)} has no account provider "
                        f"(got {attrs.get('provider')!r})"
                    )
    for block in doc.get("module", []):
        for name, attrs in block.items():
            providers = attrs.get("providers")
            assert providers in ({"aws": "${aws.consumer}"}, {"aws": "${aws.provider}"}), name


def test_terraform_files_are_formatted() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not in the package registries reachable here")
    proc = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TF_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout
