"""The lab as deployed: both agents' daemons, their APIs on the host, and a real Prometheus.

``plprobe lab up --with-agents`` runs what a deployment runs, so the lab is a rehearsal of
production rather than of ``lab probe``:

* the provider agents (``agent.lab.agents.start_agents``: ``plprobe observe`` on each target);
* ``plprobe run`` — the client daemon — in every client node, with the lab's client config
  (``agents.client_config_path``) plus, as its configuration view, the lab's own snapshot
  (``<state dir>/snapshot``, both accounts, AWS-CLI shaped): ``ensure_deployment`` re-writes
  it after every ``lab break``/``restore``/``apply``, as AWS's describe calls would change,
  and the daemon re-reads it every ``VIEW_REFRESH_S``. The lab's client namespaces have no
  route to the provider VPC (as on AWS without a monitoring network), so the daemon has no
  provider evidence: it diagnoses from its packets and the view, as a client without a
  ``provider_url`` does;
* one ``agent.lab.expose`` forwarder per agent in the root namespace: the agent's API (the
  status page ``/``, ``/metrics``, ``/v1/*``) on ``127.0.0.1:<port>``, the lab's stand-in for
  a monitoring network (adding routes would weaken the isolation the probes test).

``--with-prometheus`` adds ``/usr/bin/prometheus`` (the Debian package) on 127.0.0.1, loading
the shipped ``deploy/prometheus/alerts.yml`` (or ``rules``) and scraping every agent through
its forwarder, jobs ``plprobe-client`` / ``plprobe-provider`` with a ``node`` label.

Every process carries the lab's mark (``agent.lab.procs.lab_env``), so ``lab down`` removes
them all, this module's included, and the state directory with Prometheus' data. A structural
``lab apply`` rebuilds the namespaces and kills the lab's processes; ``ensure_deployment``
starts again whatever is missing, on the same local ports, so Prometheus' targets stay valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agent.errors import LabError
from agent.lab.agents import (
    API_PORT,
    KEY_ENV,
    agents_enabled,
    agents_running,
    client_config_path,
    ensure_key,
    start_agents,
    write_lab_snapshot,
)
from agent.lab.lab import Lab
from agent.lab.procs import kill_group, pid_alive

__all__ = [
    "PROMETHEUS",
    "SHIPPED_RULES",
    "VIEW_REFRESH_S",
    "deployment_status",
    "ensure_deployment",
    "start_clients",
    "start_deployment",
    "start_prometheus",
    "stop_deployment",
]

_REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = "/usr/bin/prometheus"
SHIPPED_RULES = _REPO / "deploy" / "prometheus" / "alerts.yml"
#: seconds between the client daemon's re-reads of the lab's snapshot
VIEW_REFRESH_S = 2.0
START_TIMEOUT_S = 20.0
_CLIENT_READY = "plprobe run: API on"
_EXPOSE_READY = "expose: http://127.0.0.1:"
Say = Callable[[str], None]


# --- state -------------------------------------------------------------------------------


def _dir(lab: Lab) -> Path:
    return lab.dir / "deploy"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _settings(lab: Lab) -> dict[str, Any]:
    """What ``start_deployment`` was asked for (so ``ensure_deployment`` can redo it)."""
    return _read(_dir(lab) / "settings.json")


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _clients(lab: Lab) -> list[str]:
    return sorted(c.name for c in lab.original.clients())


def _providers(lab: Lab) -> list[str]:
    return sorted(agents_running(lab))


def _wait_line(proc: subprocess.Popen, log: Path, line: str, what: str) -> str:
    """Wait for ``line`` in ``log``; returns the first log line holding it, or LabError."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        for row in text.splitlines():
            if line in row:
                return row
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"{what} did not start: {text[-800:]}")
        time.sleep(0.05)


def _spawn_root(lab: Lab, argv: list[str], log: Path) -> subprocess.Popen:
    """A lab process in the root namespace (forwarders, Prometheus): marked, own session."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        return subprocess.Popen(
            argv,
            env=lab.env(),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# --- client daemons ----------------------------------------------------------------------


def client_run_config(lab: Lab, client: str, interval: float | None = None) -> Path:
    """The client's lab config with the lab's snapshot as its view: ``<state>/deploy/*.yaml``."""
    dirs = write_lab_snapshot(lab)
    config = yaml.safe_load(client_config_path(lab, client).read_text())
    config["config_sources"] = {
        "snapshot_dirs": [str(d) for _, d in sorted(dirs.items())],
        "refresh_interval": VIEW_REFRESH_S,
    }
    if interval is not None:
        config["interval"] = interval
    path = _dir(lab) / f"{client}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# generated by plprobe lab up --with-agents: the lab's client config, its snapshot as\n"
        "# the configuration view\n" + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def start_clients(lab: Lab, say: Say, interval: float | None = None) -> list[str]:
    """``plprobe run`` in every client node without one; returns where it was started."""
    env = {KEY_ENV: ensure_key(lab)}
    started: list[tuple[str, subprocess.Popen, Path]] = []
    for client in _clients(lab):
        pidfile = _dir(lab) / f"run-{client}.pid"
        if _pid(pidfile) is not None:
            continue
        config = client_run_config(lab, client, interval)
        log = lab.dir / "logs" / f"run-{client}.log"
        argv = [sys.executable, "-m", "agent", "run", "--config", str(config)]
        with open(log, "w") as fh:
            proc = lab.spawn(
                client,
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pidfile.write_text(str(proc.pid))
        started.append((client, proc, log))
    for client, proc, log in started:
        _wait_line(proc, log, _CLIENT_READY, f"the client daemon in {client}")
    if started:
        say(f"lab agents: plprobe run (client daemon) in {', '.join(c for c, _, _ in started)}")
    return [c for c, _, _ in started]


# --- forwarders --------------------------------------------------------------------------


def _expose(lab: Lab, node: str) -> int:
    """The node's API on 127.0.0.1 (a forwarder process); the same local port as before."""
    state = _dir(lab) / f"expose-{node}.json"
    known = _read(state)
    if known and _pid(_dir(lab) / f"expose-{node}.pid") is not None:
        return int(known["port"])
    argv = [sys.executable, "-m", "agent.lab.expose", "--netns", lab.ns(node)]
    argv += ["--upstream", f"127.0.0.1:{API_PORT}", "--port", str(known.get("port", 0))]
    log = lab.dir / "logs" / f"expose-{node}.log"
    proc = _spawn_root(lab, argv, log)
    (_dir(lab) / f"expose-{node}.pid").write_text(str(proc.pid))
    row = _wait_line(proc, log, _EXPOSE_READY, f"the forwarder to {node}")
    port = int(row.split(_EXPOSE_READY, 1)[1].split()[0])
    _write(state, {"port": port, "node": node})
    return port


def _agent_nodes(lab: Lab) -> dict[str, str]:
    """Agent node -> role, for every agent the deployment runs."""
    nodes = {n: "provider" for n in _providers(lab)}
    nodes.update({c: "client" for c in _clients(lab)})
    return dict(sorted(nodes.items()))


def expose_agents(lab: Lab) -> dict[str, int]:
    return {node: _expose(lab, node) for node in _agent_nodes(lab)}


# --- Prometheus --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prometheus_config(lab: Lab, ports: dict[str, int], rules: Path, interval: str) -> Path:
    roles = _agent_nodes(lab)
    config = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "external_labels": {"lab": lab.name},
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": f"plprobe-{role}",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"node": node}}
                    for node, port in sorted(ports.items())
                    if roles.get(node) == role
                ],
            }
            for role in ("client", "provider")
        ],
    }
    path = _dir(lab) / "prometheus.yml"
    path.write_text(
        "# generated by plprobe lab up --with-prometheus\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def start_prometheus(
    lab: Lab,
    say: Say,
    *,
    rules: Path | None = None,
    port: int = 0,
    interval: str = "5s",
) -> str:
    """A real Prometheus scraping every agent through its forwarder; returns its URL."""
    if not os.access(PROMETHEUS, os.X_OK):
        raise LabError(f"{PROMETHEUS} not found: apt-get install prometheus (Debian)")
    known = _read(_dir(lab) / "prometheus.json")
    rules = Path(rules or known.get("rules") or SHIPPED_RULES).resolve()
    if not rules.is_file():
        raise LabError(f"alert rules {rules} not found")
    ports = expose_agents(lab)
    config = _prometheus_config(lab, ports, rules, known.get("interval", interval))
    url = known.get("url")
    if url and _pid(_dir(lab) / "prometheus.pid") is not None:
        with contextlib.suppress(OSError):  # running: pick up new targets
            reload = urllib.request.Request(f"{url}/-/reload", method="POST")
            urllib.request.urlopen(reload, timeout=5).close()
        return str(url)
    port = int(known.get("port") or port or _free_port())
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={_dir(lab) / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    log = lab.dir / "logs" / "prometheus.log"
    proc = _spawn_root(lab, argv, log)
    (_dir(lab) / "prometheus.pid").write_text(str(proc.pid))
    url = f"http://127.0.0.1:{port}"
    _write(
        _dir(lab) / "prometheus.json",
        {
            "url": url,
            "port": port,
            "rules": str(rules),
            "interval": known.get("interval", interval),
        },
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=2):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"prometheus did not start: {log.read_text(errors='replace')[-800:]}")
        time.sleep(0.2)
    say(f"lab prometheus: {url} (rules {rules})")
    return url


# --- the whole deployment ------------------------------------------------------------------


def start_deployment(
    lab: Lab,
    say: Say,
    *,
    prometheus: bool = False,
    rules: Path | None = None,
    prometheus_port: int = 0,
    client_interval: float | None = None,
    scrape_interval: str = "5s",
) -> dict[str, Any]:
    """Provider agents, client daemons, forwarders (and Prometheus); idempotent.

    Returns ``deployment_status``. The choices are kept in the state directory, so
    ``ensure_deployment`` restarts the same thing after a rebuild.
    """
    _dir(lab).mkdir(parents=True, exist_ok=True)
    _write(
        _dir(lab) / "settings.json",
        {"prometheus": prometheus, "client_interval": client_interval},
    )
    if prometheus and rules is not None:
        known = _read(_dir(lab) / "prometheus.json")
        _write(_dir(lab) / "prometheus.json", {**known, "rules": str(Path(rules).resolve())})
    start_agents(lab, say)
    start_clients(lab, say, client_interval)
    ports = expose_agents(lab)
    for node, port in ports.items():
        say(f"lab agents: {node} API on http://127.0.0.1:{port}/ (status page)")
    if prometheus:
        start_prometheus(lab, say, rules=rules, port=prometheus_port, interval=scrape_interval)
    return deployment_status(lab)


def ensure_deployment(lab: Lab, say: Say) -> None:
    """After break/restore/apply: re-write the daemons' view, restart what a rebuild killed."""
    settings = _settings(lab)
    if not settings or not agents_enabled(lab):
        return
    write_lab_snapshot(lab)
    start_agents(lab, say)
    start_clients(lab, say, settings.get("client_interval"))
    expose_agents(lab)
    if settings.get("prometheus"):
        start_prometheus(lab, say)


def stop_deployment(lab: Lab) -> None:
    """Stop the client daemons, forwarders and Prometheus (``lab down`` does it anyway)."""
    for pidfile in sorted(_dir(lab).glob("*.pid")):
        pid = _pid(pidfile)
        if pid is not None:
            kill_group(pid, grace_s=3.0)
        pidfile.unlink(missing_ok=True)
    _dir(lab).joinpath("settings.json").unlink(missing_ok=True)


def deployment_status(lab: Lab) -> dict[str, Any]:
    """Agents (role, process alive, API address in its node and on the host), Prometheus."""
    if not _dir(lab).exists():
        return {"agents": [], "prometheus": None}
    plan = lab.plan()
    running = agents_running(lab)
    agents = []
    for node, role in _agent_nodes(lab).items():
        alive = (
            running.get(node, False)
            if role == "provider"
            else _pid(_dir(lab) / f"run-{node}.pid") is not None
        )
        exposed = _read(_dir(lab) / f"expose-{node}.json").get("port")
        forwarding = _pid(_dir(lab) / f"expose-{node}.pid") is not None
        agents.append(
            {
                "node": node,
                "role": role,
                "command": "plprobe run" if role == "client" else "plprobe observe",
                "alive": alive,
                "api": f"http://{plan.node(node).ip}:{API_PORT}",
                "host_url": f"http://127.0.0.1:{exposed}" if exposed and forwarding else None,
            }
        )
    prom = _read(_dir(lab) / "prometheus.json")
    prometheus = None
    if prom.get("url"):
        prometheus = {
            "url": prom["url"],
            "alive": _pid(_dir(lab) / "prometheus.pid") is not None,
            "rules": prom.get("rules"),
        }
    return {"agents": agents, "prometheus": prometheus}
