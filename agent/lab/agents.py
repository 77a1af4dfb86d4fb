"""The agents in the lab: provider agents on the targets, client rounds inside client nodes.

``plprobe lab up --with-agents`` / ``start_agents(lab)`` starts one provider agent
(``plprobe observe --config configs/lab/provider.yaml``) inside each provider instance's
namespace, with ``PLPROBE_AGENT_ID=<instance name>`` and the lab's HMAC key in ``PLPROBE_KEY``.
The key is generated once per lab and kept in ``<state dir>/agents/key`` (mode 0600), so every
agent of the lab — and every later ``lab probe``/``lab check`` — shares it.

How provider evidence reaches a client round: as deployed, through the endpoint
------------------------------------------------------------------------------
As on AWS, a client namespace has no route to the provider VPC, and neither has the root
namespace. ``lab probe``/``lab check`` run the round in a helper process *inside the client
namespace* (``python -m agent.lab.agents run ...``: real packets from the client's address),
and the round asks the provider fleet for its evidence the way a deployment does: an
authenticated query to the endpoint ENI on the responder port 9721, which the lab topologies
route through every control like the service port (``EndpointEvidenceSource``). The provider
agents answer for each other (their generated config lists the other targets as peers) and
share their findings for the client's flow, computed from the provider account's snapshot.
The client's own configuration view is the consumer account's snapshot only.

The side channel the lab used before — ``NamespaceObservationSource``, an ``ip netns exec``
into each target namespace to read ``/v1/observations`` — does not exist on AWS. It is kept
only as the explicitly named reference level ``side-channel`` of the fault matrix
(``bench/diagnosis_accuracy.py``): what diagnosis would say if evidence were handed over.

The snapshots are what ``plprobe lab snapshot`` writes: ``write_snapshot(topology,
<state dir>/snapshot, target_health)`` — one AWS-CLI-shaped directory per account, refreshed
before every ``lab check`` so they carry the health checker's current view. The consumer's
goes to the client round; the provider's is read by the provider agents
(``config_sources``), as each account reads only its own.

Client configs: the shipped ``configs/lab/<client>.yaml`` when its endpoint names, ENI IPs and
ports are the lab's (they are for the reference topology: ids are deterministic), else one
generated from the topology of ``lab up`` into ``<state dir>/agents/<client>.yaml``.

Evidence levels (for the fault matrix and ``bench/diagnosis_accuracy.py``): one round, then
diagnosis with ``endpoint`` (both agents, evidence through the endpoint + the consumer
snapshot: what ``lab check`` shows), ``side-channel`` (the reference: observations handed over
by ``ip netns exec`` + both accounts' snapshots), ``client`` (client packets + the consumer
snapshot) and ``packets`` (client packets alone).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agent.errors import LabError, PlprobeError
from agent.lab.procs import answer as run_answer
from agent.lab.procs import kill_group, pid_alive
from agent.sources.topology import TOPOLOGIES

if TYPE_CHECKING:
    from agent.config import ClientConfig
    from agent.lab.lab import Lab
    from agent.model import Topology

__all__ = [
    "LEVELS",
    "ClientRun",
    "agents_running",
    "check_answers",
    "check_clients",
    "client_config_path",
    "endpoint_paths",
    "ensure_key",
    "generated_client_config",
    "main",
    "probe_answers",
    "probe_clients",
    "provider_config_path",
    "shipped_config_matches",
    "start_agents",
    "stop_agents",
    "write_lab_snapshot",
]

SHIPPED_CONFIGS = TOPOLOGIES
PROVIDER_CONFIG = SHIPPED_CONFIGS / "provider.yaml"
KEY_ENV = "PLPROBE_KEY"
AGENT_ID_ENV = "PLPROBE_AGENT_ID"
#: the provider agent's API port inside each target namespace (configs/lab/provider.yaml)
API_PORT = 9720
#: evidence levels: the deployed one first, then the side-channel reference, then less
LEVELS: tuple[str, ...] = ("endpoint", "side-channel", "client", "packets")
#: plprobe's responder port in the lab topologies (mirrored through every control)
RESPONDER_PORT = 9721
START_TIMEOUT_S = 10.0
#: the helper process runs a whole round: probes, provider fetch, snapshot read
RUN_TIMEOUT_S = 60.0
_READY_LINE = "observations API on"


# --- state: key, pidfiles, configs -------------------------------------------------------


def _agents_dir(lab: Lab) -> Path:
    return lab.dir / "agents"


def ensure_key(lab: Lab) -> str:
    """The lab's shared HMAC key (base64 of 32 random bytes), created once, mode 0600."""
    path = _agents_dir(lab) / "key"
    with contextlib.suppress(FileNotFoundError):
        key = path.read_text().strip()
        if key:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.chmod(path, 0o600)
    return key


def _provider_nodes(topology: Topology) -> list[str]:
    """Provider-account instances: where a provider agent runs (registered or not)."""
    provider = {a.name for a in topology.accounts.values() if a.role == "provider"}
    return sorted(i.name for i in topology.instances.values() if i.account in provider)


def _pidfile(lab: Lab, node: str) -> Path:
    return _agents_dir(lab) / f"{node}.pid"


def _pid(lab: Lab, node: str) -> int | None:
    try:
        pid = int(_pidfile(lab, node).read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def agents_enabled(lab: Lab) -> bool:
    """Were agents started (``--with-agents``) and not stopped since?"""
    return (_agents_dir(lab) / "enabled").exists()


def agents_running(lab: Lab) -> dict[str, bool]:
    """Provider node -> is its agent process alive."""
    return {n: _pid(lab, n) is not None for n in _provider_nodes(lab.original)}


def _key_env(lab: Lab) -> dict[str, str]:
    return {KEY_ENV: ensure_key(lab)}


def start_agents(lab: Lab, progress: Callable[[str], None] | None = None) -> list[str]:
    """Start a provider agent in every provider node that has none running; idempotent.

    Returns the nodes where an agent was started. Waits until each agent's API listens
    (its log says so), or raises LabError with the log's tail.
    """
    say = progress or (lambda line: None)
    lab.plan()  # raises when the lab is not up
    env = _key_env(lab)
    _agents_dir(lab).mkdir(parents=True, exist_ok=True)
    (_agents_dir(lab) / "enabled").touch()
    started: list[tuple[str, subprocess.Popen, Path]] = []
    for node in _provider_nodes(lab.original):
        if _pid(lab, node) is not None:
            continue
        log = lab.dir / "logs" / f"agent-{node}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        config = provider_config_path(lab)
        argv = [sys.executable, "-m", "agent", "observe", "--config", str(config)]
        with open(log, "w") as fh:
            proc = lab.spawn(
                node,
                argv,
                env={**env, AGENT_ID_ENV: node},
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _pidfile(lab, node).write_text(str(proc.pid))
        started.append((node, proc, log))
    deadline = time.monotonic() + START_TIMEOUT_S
    for node, proc, log in started:
        while _READY_LINE not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"provider agent on {node} did not start: {log.read_text()[-600:]}")
            time.sleep(0.02)
    if started:
        say(f"lab agents: provider agent on {', '.join(n for n, _, _ in started)}")
    return [n for n, _, _ in started]


def stop_agents(lab: Lab, nodes: Sequence[str] | None = None) -> list[str]:
    """Stop provider agents (all by default; then ``lab probe`` no longer restarts them)."""
    which = list(nodes) if nodes is not None else _provider_nodes(lab.original)
    if nodes is None:
        (_agents_dir(lab) / "enabled").unlink(missing_ok=True)
    stopped = []
    for node in which:
        pid = _pid(lab, node)
        _pidfile(lab, node).unlink(missing_ok=True)
        if pid is None:
            continue
        kill_group(pid, grace_s=2.0)
        stopped.append(node)
    return stopped


def provider_config(lab: Lab) -> dict[str, Any]:
    """The shipped provider config plus what this lab's fleet needs to answer through the
    endpoint: the other targets as peers, the provider account's snapshot as its view, and
    PROXY v2 on the responder port when its target group has it."""
    topology = lab.original
    data = yaml.safe_load(PROVIDER_CONFIG.read_text())
    nodes = _provider_nodes(topology)
    peers = [f"{topology.instance_by_name(n).ip}:{RESPONDER_PORT}" for n in nodes]  # type: ignore[union-attr]
    provider = next((a.name for a in topology.accounts.values() if a.role == "provider"), None)
    proxy = any(
        tg.port == RESPONDER_PORT and tg.proxy_protocol_v2 for tg in topology.target_groups.values()
    )
    data.setdefault("responder", {})["proxy_v2"] = proxy
    data["evidence"] = {**data.get("evidence", {}), "peers": peers}
    if provider is not None:
        data["config_sources"] = {"snapshot_dirs": [str(lab.dir / "snapshot" / provider)]}
    return data


def provider_config_path(lab: Lab) -> Path:
    """``<state dir>/agents/provider.yaml``, written from ``provider_config`` (module doc)."""
    path = _agents_dir(lab) / "provider.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# generated by plprobe lab from configs/lab/provider.yaml and the lab's topology\n"
        + yaml.safe_dump(provider_config(lab), sort_keys=False)
    )
    return path


def endpoint_paths(topology: Topology) -> list[dict[str, Any]]:
    """One client-config path per endpoint: names, ENI IPs, listener ports, responder port.

    Only endpoints to the lab's endpoint services: an interface endpoint to an AWS service
    (``logs``) in the consumer VPC is not a path the clients probe.
    """
    out = []
    for ep in sorted(topology.endpoints.values(), key=lambda e: e.name):
        if ep.service_id not in topology.endpoint_services:
            continue
        names = topology.endpoint_dns_names(ep)
        zonal: dict[str, str] = {}
        expected: dict[str, str] = {}
        for eni in ep.enis:
            subnet = topology.subnets[eni.subnet_id]
            zonal[subnet.az_id] = next(n for n, ips in names.items() if f"-{subnet.az}." in n)
            expected[subnet.az_id] = eni.ip
        regional = min(names, key=len)
        svc = topology.endpoint_services.get(ep.service_id)
        nlb = topology.nlb_of_service(svc) if svc else None
        ports = sorted({li.port for li in topology.listeners_of(nlb.id)}) if nlb else [80]
        path: dict[str, Any] = {
            "name": ep.name,
            "regional": regional,
            "zonal": dict(sorted(zonal.items())),
            "expected_ips": dict(sorted(expected.items())),
            "ports": ports,
        }
        if RESPONDER_PORT in ports:
            path["responder_ports"] = [RESPONDER_PORT]
        path["probes"] = ["dns", "tcp", "syn", "http"]
        out.append(path)
    return out


def generated_client_config(topology: Topology, client: str) -> dict[str, Any]:
    """A client agent config for ``client`` in ``topology`` (the shape of the shipped ones)."""
    return {
        "role": "client",
        "agent_id": client,
        "listen": "0.0.0.0:9720",
        "key_env": KEY_ENV,
        "log_format": "text",
        "interval": 10,
        "timeout": 1,
        "retries": 1,
        "concurrency": 32,
        "provider_delay": 0.2,
        "paths": endpoint_paths(topology),
    }


def shipped_config_matches(shipped: Path, topology: Topology) -> bool:
    """Does the shipped config probe exactly the lab's endpoint names, IPs and ports?"""
    try:
        data = yaml.safe_load(shipped.read_text())
    except (OSError, yaml.YAMLError):
        return False
    want = [
        (p["regional"], p["zonal"], p["expected_ips"], p["ports"], p.get("responder_ports", []))
        for p in endpoint_paths(topology)
    ]
    have = [
        (
            p.get("regional"),
            p.get("zonal"),
            p.get("expected_ips"),
            p.get("ports"),
            p.get("responder_ports", []),
        )
        for p in data.get("paths", [])
    ]
    return have == want


def client_config_path(lab: Lab, client: str) -> Path:
    """The shipped ``configs/lab/<client>.yaml`` if it fits the lab, else a generated one."""
    topology = lab.original
    if topology.instance_by_name(client) not in topology.clients():
        names = ", ".join(c.name for c in topology.clients())
        raise LabError(f"lab {lab.name} has no client {client!r}; clients: {names}")
    shipped = SHIPPED_CONFIGS / f"{client}.yaml"
    if shipped.is_file() and shipped_config_matches(shipped, topology):
        return shipped
    path = _agents_dir(lab) / f"{client}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# generated by plprobe lab from the topology of lab up\n"
        + yaml.safe_dump(generated_client_config(topology, client), sort_keys=False)
    )
    return path


def write_lab_snapshot(lab: Lab) -> dict[str, Path]:
    """Both accounts' snapshots of the lab as it is now; account role -> directory."""
    topology = lab.topology
    dirs = lab.snapshot(lab.dir / "snapshot")
    roles = {a.name: a.role for a in topology.accounts.values()}
    return {roles.get(d.name, d.name): d for d in dirs}


# --- orchestration (root namespace) --------------------------------------------------------


@dataclass
class ClientRun:
    """One client's helper run: its exit code, JSON answer (``--output json``) or text."""

    client: str
    returncode: int
    data: dict[str, Any] | None
    stdout: str
    stderr: str


def _clients(lab: Lab, client: str | None) -> list[str]:
    names = [c.name for c in lab.original.clients()]
    if client is None:
        return names
    if client not in names:
        raise LabError(f"lab {lab.name} has no client {client!r}; clients: {', '.join(names)}")
    return [client]


def _provider_namespaces(lab: Lab) -> list[str]:
    """Namespaces of running provider agents (restarting dead ones when agents are on).

    Restarting matters for every level (the agents answer through the endpoint); the
    namespaces themselves are used only by the ``side-channel`` reference level.
    """
    if not agents_enabled(lab):
        return []
    start_agents(lab)  # after a rebuild (structural apply) the agents are gone: bring them back
    return [lab.ns(n) for n, up in agents_running(lab).items() if up]


def _run_clients(
    lab: Lab, clients: list[str], args: list[str], *, capture: bool
) -> list[ClientRun]:
    """The helper in every client namespace at once (rounds are independent)."""
    env = _key_env(lab)
    procs = []
    for c in clients:
        argv = [sys.executable, "-m", "agent.lab.agents", "run", "--config"]
        argv += [str(client_config_path(lab, c)), *args]
        out = subprocess.PIPE if capture else None
        procs.append((c, lab.spawn(c, argv, env=env, stdout=out, stderr=out, text=True)))
    runs = []
    for c, proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.communicate()
            raise LabError(f"the round in {c} did not finish in {RUN_TIMEOUT_S:g} s") from exc
        data = None
        if capture and stdout.strip():
            with contextlib.suppress(ValueError):
                data = json.loads(stdout)
        runs.append(ClientRun(c, proc.returncode, data, stdout or "", stderr or ""))
    return runs


def _common_args(timeout: float | None, retries: int | None, output: str) -> list[str]:
    args = ["--output", output]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    if retries is not None:
        args += ["--retries", str(retries)]
    return args


def probe_clients(
    lab: Lab,
    client: str | None = None,
    *,
    output: str = "json",
    timeout: float | None = None,
    retries: int | None = None,
    capture: bool = True,
) -> list[ClientRun]:
    """One probe round from inside each client node; provider evidence through the endpoint."""
    args = ["--mode", "probe", *_common_args(timeout, retries, output)]
    _provider_namespaces(lab)
    return _run_clients(lab, _clients(lab, client), args, capture=capture)


def check_clients(
    lab: Lab,
    client: str | None = None,
    *,
    output: str = "json",
    levels: Sequence[str] = ("endpoint",),
    timeout: float | None = None,
    retries: int | None = None,
    capture: bool = True,
) -> list[ClientRun]:
    """``check`` from inside each client node, as deployed: its own account's snapshot, the
    provider's evidence and findings through the endpoint (``levels`` adds comparisons)."""
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise LabError(f"unknown evidence level(s) {unknown}; levels: {', '.join(LEVELS)}")
    dirs = write_lab_snapshot(lab)
    args = ["--mode", "check", *_common_args(timeout, retries, output)]
    args += ["--levels", ",".join(levels)]
    if "consumer" in dirs:
        args += ["--consumer-snapshot", str(dirs["consumer"])]
    if "side-channel" in levels:
        for d in dirs.values():
            args += ["--snapshot", str(d)]
    namespaces = _provider_namespaces(lab)
    if "side-channel" in levels:
        for ns in namespaces:
            args += ["--provider-ns", ns]
    return _run_clients(lab, _clients(lab, client), args, capture=capture)


def probe_answers(lab: Lab, client: str | None = None, **options: Any) -> dict[str, dict]:
    """One probe round per client (inside its node): client -> ``{"round": ...}`` JSON.

    ``options``: ``timeout``, ``retries`` (as ``probe_clients``).
    """
    runs = probe_clients(lab, client, output="json", **options)
    return {r.client: run_answer(r) for r in runs}


def check_answers(lab: Lab, client: str | None = None, **options: Any) -> dict[str, dict]:
    """``check`` per client (inside its node): client -> ``{"exit", "check", "levels"}``.

    ``options``: ``levels`` (subset of ``LEVELS``), ``timeout``, ``retries``.
    """
    runs = check_clients(lab, client, output="json", **options)
    return {r.client: run_answer(r) for r in runs}


# --- inside the client namespace ------------------------------------------------------------


def _load_client_config(path: str, timeout: float | None, retries: int | None) -> ClientConfig:
    from agent.config import ClientConfig, load_config, require_role

    config = require_role(load_config(path), ClientConfig, command="lab probe/check")
    update: dict[str, Any] = {}
    if timeout is not None:
        update["timeout"] = timeout
    if retries is not None:
        update["retries"] = retries
    return config.model_copy(update=update) if update else config


def _lesser_levels(args: argparse.Namespace, config: Any, round_: Any) -> dict[str, Any]:
    """Diagnoses of the same round with other evidence (module docstring, "Evidence levels")."""
    import dataclasses

    from agent.diagnose.correlate import correlate
    from agent.diagnose.pipeline import diagnose_round, self_identity
    from agent.sources.aws_snapshot import load_snapshot

    why = "provider evidence not used at this evidence level"
    evidence = correlate(
        round_.results, None, window_s=config.correlation_window, provider_error=why
    )
    packets_only = dataclasses.replace(
        round_, evidence=evidence, observations=None, provider_error=why, provider_evidence=None
    )
    me = self_identity(config.agent_id)
    out: dict[str, Any] = {}
    levels = args.levels.split(",")
    if "side-channel" in levels:
        from agent.lab.sidechannel import side_channel_diagnosis

        out["side-channel"] = side_channel_diagnosis(
            args.provider_ns, [Path(d) for d in args.snapshot], config, round_
        )
    if "client" in levels:
        view = load_snapshot([Path(args.consumer_snapshot)]) if args.consumer_snapshot else None
        out["client"] = diagnose_round(packets_only, view, me).to_json()
    if "packets" in levels:
        out["packets"] = diagnose_round(packets_only, None, me).to_json()
    return out


def _run(args: argparse.Namespace) -> int:
    config = _load_client_config(args.config, args.timeout, args.retries)
    from agent.config import load_key

    key = load_key(config)
    if args.mode == "probe":
        from agent.diagnose.report import format_table
        from agent.diagnose.rounds import run_round

        round_ = asyncio.run(run_round(config, key=key))
        if args.output == "json":
            print(json.dumps({"client": config.agent_id, "round": round_.to_json()}, indent=2))
        else:
            sys.stdout.write(format_table(round_))
        return 0 if round_.all_ok else 1

    from agent.diagnose.check import check, exit_code, render_json, render_table
    from agent.errors import SourceError
    from agent.sources.views import SnapshotSource

    # the consumer's own account only: the provider's evidence comes through the endpoint
    mine = args.consumer_snapshot
    source = SnapshotSource((Path(mine),)) if mine else None
    diagnosis, round_ = asyncio.run(check(config, key, source=source))
    if diagnosis.view.error and diagnosis.view.kind == "snapshot":
        raise SourceError(f"cannot read the lab snapshot: {diagnosis.view.error}")
    code = exit_code(diagnosis)
    if args.output == "json":
        body = {
            "client": config.agent_id,
            "exit": code,
            "check": json.loads(render_json(diagnosis, round_)),
            "round": round_.to_json(),
            "levels": _lesser_levels(args, config, round_),
        }
        print(json.dumps(body, indent=2))
    else:
        notes = [f"provider: {round_.provider_error}"] if round_.provider_error else []
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        sys.stdout.write(render_table(diagnosis, colour=colour, notes=notes, round_=round_))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.lab.agents run ...``: the helper the lab runs inside a client node."""
    parser = argparse.ArgumentParser(prog="python -m agent.lab.agents")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="one round (probe) or check inside this namespace")
    run.add_argument("--config", required=True)
    run.add_argument("--mode", choices=("probe", "check"), default="probe")
    run.add_argument("--output", choices=("table", "json"), default="json")
    run.add_argument("--provider-ns", action="append", default=[])
    run.add_argument("--snapshot", action="append", default=[])
    run.add_argument("--consumer-snapshot")
    run.add_argument("--levels", default="endpoint")
    run.add_argument("--timeout", type=float)
    run.add_argument("--retries", type=int)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except PlprobeError as exc:
        print(f"plprobe: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
