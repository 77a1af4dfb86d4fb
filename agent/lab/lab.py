"""Apply a LabPlan to the machine: namespaces, veths, nftables, hosts files, daemons.

``Lab(name)`` is the Python API the CLI, the tests and the demo share::

    lab = Lab("t1")
    lab.up(load_topology())          # build; rolls back and raises LabError on failure
    lab.exec("client-2", ["python3", "-c", "..."], timeout=5)
    lab.apply(edited_topology)       # re-render in place (or rebuild, for structural edits)
    lab.down()                       # idempotent; also removes leftovers of a crashed run

Everything a lab creates is namespaced by its name: network namespaces ``pl-<name>-<node>``,
``/etc/netns/pl-<name>-<node>/`` (hosts, resolv.conf) and the state directory
``/run/plprobe/lab/<name>/``:

    state.json       which endpoints exist (decided when each was created, as on AWS)
    topology.json    the current topology;  original.json  the topology of ``lab up``
    plan.json        the applied plan (re-renders diff against it)
    config/          daemon configs;  health/  health checker state;  logs/  daemon logs and
    run/             pidfiles and readiness files   request logs (JSON lines)

Nothing else is created in the root namespace, so ``down`` = kill the lab's processes (those
in its namespaces, and any process carrying ``PLPROBE_LAB=<name>`` in its environment),
delete the namespaces, remove ``/etc/netns/pl-<name>-*`` and the state directory.

Re-rendering (``apply``): nftables rulesets are replaced per namespace in one ``nft -f``
transaction (the table is deleted and re-added atomically); conntrack is not flushed, so live
flows survive SG edits while NACL edits cut them (NACL chains run before the conntrack
accept). Hosts files are rewritten and daemons restarted only where their spec changed.
Structural edits (nodes, links, addresses or routes change: new/removed instances, subnets,
VPCs, NLB nodes, endpoint ENIs, endpoints created or never created, peering state) rebuild
the whole lab (namespaces are recreated; live flows die).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.errors import LabError, PrivilegeError
from agent.lab import faults, nlbnat
from agent.lab.commands import CommandRunner, SubprocessRunner
from agent.lab.plan import (
    NETNS_ETC,
    STATE_ROOT,
    LabPlan,
    ProcessSpec,
    check_lab_name,
    creatable_endpoints,
    ns_prefix,
    render,
    state_dir,
)
from agent.lab.procs import in_netns, kill_pids, lab_env, lab_pids, pid_alive, spawn
from agent.model import Topology, to_plain, topology_from_plain

NETNS_RUN = Path("/run/netns")
_WORKERS = 8


def require_privileges(runner: CommandRunner | None = None) -> None:
    """Root and working ``ip netns``/``nft``, or PrivilegeError (exit 2) with the reason."""
    if os.geteuid() != 0:
        raise PrivilegeError("the lab needs root (network namespaces and nftables)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            raise PrivilegeError(f"the lab needs {tool!r} (Debian: iproute2, nftables)")
    runner = runner or SubprocessRunner()
    try:
        runner.run(["ip", "netns", "list"], timeout=10)
    except LabError as exc:
        raise PrivilegeError(f"network namespaces are not available: {exc}") from exc


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def lab_namespaces(name: str) -> list[str]:
    prefix = ns_prefix(name)
    try:
        return sorted(n for n in os.listdir(NETNS_RUN) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def all_lab_names() -> list[str]:
    names: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for n in os.listdir(NETNS_RUN):
            if n.startswith("pl-") and n.count("-") >= 2:
                names.add(n.split("-")[1])
    with contextlib.suppress(FileNotFoundError):
        names.update(os.listdir(STATE_ROOT))
    return sorted(names)


def teardown(name: str, runner: CommandRunner | None = None, *, keep_state: bool = False) -> int:
    """Remove everything of lab ``name``; returns how many namespaces were deleted."""
    check_lab_name(name)
    runner = runner or SubprocessRunner()
    nss = lab_namespaces(name)
    pids = lab_pids(name)
    for ns in nss:
        proc = runner.run(["ip", "netns", "pids", ns], check=False, timeout=10)
        pids.update(int(p) for p in proc.stdout.split() if p.isdigit())
    pids.discard(os.getpid())
    kill_pids(pids)
    if nss:
        batch = "".join(f"netns del {ns}\n" for ns in nss)
        runner.run(["ip", "-force", "-batch", "-"], input=batch, check=False, timeout=30)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(NETNS_ETC):
            if entry.startswith(ns_prefix(name)):
                shutil.rmtree(NETNS_ETC / entry, ignore_errors=True)
    if not keep_state:
        shutil.rmtree(state_dir(name), ignore_errors=True)
    return len(nss)


class Lab:
    """One named lab on this machine (see the module docstring)."""

    def __init__(
        self,
        name: str = "plprobe",
        *,
        runner: CommandRunner | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.name = check_lab_name(name)
        self.runner = runner or SubprocessRunner()
        self.progress = progress or (lambda line: None)
        self.dir = state_dir(name)
        self._children: dict[int, subprocess.Popen] = {}

    # --- names and state ------------------------------------------------------------------
    def ns(self, node: str) -> str:
        plan = self.plan()
        try:
            return plan.node(node).ns
        except KeyError:
            known = ", ".join(n.name for n in plan.nodes)
            raise LabError(f"lab {self.name} has no node {node!r}; nodes: {known}") from None

    def exists(self) -> bool:
        return self.dir.exists() or bool(lab_namespaces(self.name))

    def _require_up(self) -> None:
        if not (self.dir / "plan.json").exists():
            raise LabError(f"lab {self.name} is not up (plprobe lab up --name {self.name})")

    def plan(self) -> LabPlan:
        self._require_up()
        data = _read_json(self.dir / "plan.json")
        if data is None:
            raise LabError(f"lab {self.name}: unreadable {self.dir / 'plan.json'}")
        return LabPlan.from_plain(data)

    @property
    def topology(self) -> Topology:
        self._require_up()
        data = _read_json(self.dir / "topology.json")
        if data is None:
            raise LabError(f"lab {self.name}: unreadable topology.json")
        return topology_from_plain(data)

    def aws_view(self) -> Topology:
        """What AWS's describe calls would show: the topology without the endpoints that were
        never created (a principal the service did not allow when the endpoint was requested).

        The lab's topology file still lists such an endpoint — it is what the user asked
        for — but AWS refused CreateVpcEndpoint, so no account can describe it.
        """
        topology = self.topology
        created = set(self.plan().endpoints)
        topology.endpoints = {k: v for k, v in topology.endpoints.items() if k in created}
        return topology

    def snapshot(self, out_dir: Path) -> list[Path]:
        """Write both accounts' describe-* JSON for the lab as it is now (incl. target health)."""
        from agent.lab.snapshot import write_snapshot

        return write_snapshot(self.aws_view(), out_dir, self.target_health())

    @property
    def original(self) -> Topology:
        data = _read_json(self.dir / "original.json")
        if data is None:
            raise LabError(f"lab {self.name}: unreadable original.json")
        return topology_from_plain(data)

    def _save(self, topology: Topology, plan: LabPlan) -> None:
        _write(self.dir / "topology.json", json.dumps(to_plain(topology), indent=1))
        _write(self.dir / "plan.json", json.dumps(plan.to_plain(), indent=1))
        _write(
            self.dir / "state.json", json.dumps({"name": self.name, "endpoints": plan.endpoints})
        )

    # --- lifecycle ------------------------------------------------------------------------
    def up(self, topology: Topology) -> LabPlan:
        require_privileges(self.runner)
        if self.exists():
            raise LabError(
                f"lab {self.name} is already up (or left over): plprobe lab down --name {self.name}"
            )
        t0 = time.monotonic()
        plan = render(topology, self.name)
        for w in plan.warnings:
            self.progress(f"lab up: warning: {w}")
        try:
            for sub in ("config", "health", "logs", "run"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
            _write(self.dir / "original.json", json.dumps(to_plain(topology), indent=1))
            self._save(topology, plan)
            self._build(plan)
            self._start(plan.processes, plan)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.down()
            if isinstance(exc, Exception):
                raise LabError(f"lab up {self.name} failed and was rolled back: {exc}") from exc
            raise
        kinds = [n.kind for n in plan.nodes]
        self.progress(
            f"lab up: {len(plan.nodes)} namespaces, {kinds.count('router')} routers, "
            f"{kinds.count('endpoint-eni')} endpoint ENIs, {kinds.count('nlb-node')} NLB nodes, "
            f"{len(plan.processes)} daemons in {time.monotonic() - t0:.1f} s"
        )
        return plan

    def down(self) -> int:
        t0 = time.monotonic()
        for proc in self._children.values():
            with contextlib.suppress(OSError):
                proc.kill()
        n = teardown(self.name, self.runner)
        for proc in self._children.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=2)
        self._children.clear()
        self.progress(
            f"lab down: {self.name}: {n} namespaces removed in {time.monotonic() - t0:.1f} s"
        )
        return n

    def apply(self, topology: Topology, *, recreate_endpoints: bool = False) -> str:
        """Re-render ``topology`` onto the running lab; returns "in place" or "rebuilt"."""
        require_privileges(self.runner)
        old = self.plan()
        existing = [e for e in old.endpoints if e in topology.endpoints]
        creatable, warnings = creatable_endpoints(topology)
        if recreate_endpoints:
            endpoints = creatable
        else:
            # endpoints that exist stay (removing a principal later does not delete them);
            # endpoints new to the lab are created now, if the service allows it now
            endpoints = sorted(set(existing) | {e for e in creatable if e not in old.endpoints})
            warnings = [
                w for w in warnings if not any(topology.endpoints[e].name in w for e in existing)
            ]
        plan = render(topology, self.name, endpoints=endpoints)
        plan.warnings = [*warnings, *(w for w in plan.warnings if w not in warnings)]
        for w in plan.warnings:
            self.progress(f"lab apply: warning: {w}")
        if plan.structure() != old.structure():
            self.progress(f"lab apply: structural change, rebuilding lab {self.name}")
            self._stop(old.processes)
            teardown(self.name, self.runner, keep_state=True)
            self._save(topology, plan)
            self._build(plan)
            self._start(plan.processes, plan)
            return "rebuilt"
        nlb_ns = {n.ns for n in plan.nodes if n.kind == "nlb-node"}
        self._apply_nft(
            {ns: t for ns, t in plan.nft.items() if ns not in nlb_ns and old.nft.get(ns) != t}
        )
        self._write_files(plan, old)
        old_specs = {p.key: p for p in old.processes}
        new_specs = {p.key: p for p in plan.processes}
        changed = [k for k in old_specs if new_specs.get(k) != old_specs[k]]
        self._stop([old_specs[k] for k in changed])
        for key in changed:
            spec = new_specs.get(key)
            if spec is not None and spec.kind == "healthd" and spec.config is not None:
                cfg = nlbnat.NodeConfig.from_plain(spec.config)
                healthy = self._healthy_keys(spec.node)
                self._apply_nft({plan.node(spec.node).ns: nlbnat.ruleset(cfg, healthy)})
        self._start([new_specs[k] for k in new_specs if k not in old_specs or k in changed], plan)
        self._save(topology, plan)
        return "in place"

    def break_control(self, control: str, client: str | None = None) -> str:
        fault = faults.get(control)
        return self.apply(
            faults.break_topology(self.topology, control, client),
            recreate_endpoints=fault.recreate_endpoints,
        )

    def restore(self) -> str:
        return self.apply(self.original)

    # --- building -------------------------------------------------------------------------
    def _parallel(self, jobs: Sequence[Callable[[], object]]) -> None:
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            for fut in [pool.submit(j) for j in jobs]:
                fut.result()

    def _build(self, plan: LabPlan) -> None:
        run = self.runner.run
        run(["ip", "-batch", "-"], input=_batch(plan.root_commands()))
        self._parallel(
            [
                functools.partial(run, ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *kv])
                for ns, kv in plan.sysctls.items()
            ]
        )
        run(["ip", "-batch", "-"], input=_batch(plan.link_commands()))
        self._parallel(
            [
                functools.partial(run, ["ip", "-n", ns, "-batch", "-"], input=_batch(c))
                for ns, c in plan.ip.items()
            ]
        )
        self._write_files(plan, None)
        self._apply_nft(plan.nft)

    def _apply_nft(self, rulesets: dict[str, str]) -> None:
        """Check, then apply, each namespace's ruleset as one transaction."""
        run = self.runner.run

        def one(ns: str, text: str) -> None:
            run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"], input=text)
            run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text)

        self._parallel([functools.partial(one, ns, t) for ns, t in rulesets.items()])

    def _write_files(self, plan: LabPlan, old: LabPlan | None) -> None:
        for path, text in plan.files.items():
            if old is None or old.files.get(path) != text:
                _write(Path(path), text)
        if old is not None:
            for path in set(old.files) - set(plan.files):
                with contextlib.suppress(FileNotFoundError):
                    Path(path).unlink()

    # --- daemons --------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment of the lab's processes (it carries the lab's mark, see procs)."""
        return lab_env(self.name)

    def _pidfile(self, spec: ProcessSpec) -> Path:
        return self.dir / "run" / f"{spec.key}.pid"

    def _start(self, specs: Sequence[ProcessSpec], plan: LabPlan) -> None:
        ready: list[tuple[ProcessSpec, subprocess.Popen, Path]] = []
        for spec in specs:
            if spec.config is not None:
                _write(Path(spec.config_path), json.dumps(spec.config, indent=1))
            ready_file = None
            if "--ready" in spec.args:
                ready_file = Path(spec.args[spec.args.index("--ready") + 1])
                with contextlib.suppress(FileNotFoundError):
                    ready_file.unlink()
            log = self.dir / "logs" / f"{spec.key}.log"
            argv = [sys.executable, "-m", spec.module, *spec.args]
            with open(log, "ab") as fh:
                proc = spawn(
                    plan.node(spec.node).ns,
                    argv,
                    self.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._children[proc.pid] = proc
            _write(self._pidfile(spec), str(proc.pid))
            if ready_file is not None:
                ready.append((spec, proc, ready_file))
        deadline = time.monotonic() + 10
        for spec, proc, ready_file in ready:
            while not ready_file.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.dir / "logs" / f"{spec.key}.log").read_text()[-800:]
                    raise LabError(f"{spec.key} did not start: {tail.strip()}")
                time.sleep(0.02)

    def _stop(self, specs: Sequence[ProcessSpec]) -> None:
        pids: set[int] = set()
        for spec in specs:
            path = self._pidfile(spec)
            try:
                pid = int(path.read_text())
            except (OSError, ValueError):
                continue
            if pid in lab_pids(self.name):
                pids.add(pid)
            path.unlink(missing_ok=True)
        kill_pids(pids)
        for pid in pids:
            proc = self._children.pop(pid, None)
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.wait(timeout=2)

    # --- running things inside nodes ------------------------------------------------------
    def exec(
        self,
        node: str,
        argv: Sequence[str],
        timeout: float = 30.0,
        *,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``node``'s namespace (its hosts file applies); capture output.

        ``env`` adds variables to the lab's environment (e.g. the agents' ``PLPROBE_KEY``).
        """
        cmd = in_netns(self.ns(node), argv)
        try:
            return subprocess.run(
                cmd,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**self.env(), **(env or {})},
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(
                f"lab exec {node}: {' '.join(argv)} timed out after {timeout} s"
            ) from exc
        except OSError as exc:
            raise LabError(f"lab exec {node}: {exc}") from exc

    def spawn(
        self,
        node: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        **popen: object,
    ) -> subprocess.Popen:
        """Start ``argv`` in the background inside ``node``; ``down`` kills it.

        ``env`` adds variables to the lab's environment (which carries the lab's mark).
        """
        proc = spawn(self.ns(node), argv, {**self.env(), **(env or {})}, **popen)
        self._children[proc.pid] = proc
        return proc

    def http_get(
        self, node: str, host: str, port: int = 80, *, timeout: float = 1.5, path: str = "/"
    ) -> dict:
        """One HTTP GET from ``node`` (see ``agent.lab.httpcheck``): ``{"result": ...}``."""
        argv = [sys.executable, "-m", "agent.lab.httpcheck", host, "--port", str(port)]
        argv += ["--timeout", str(timeout), "--path", path]
        proc = self.exec(node, argv, timeout=timeout * 3 + 10)
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise LabError(f"httpcheck in {node}: {proc.stdout} {proc.stderr}") from exc

    # --- health and status ----------------------------------------------------------------
    def _health_files(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for path in sorted((self.dir / "health").glob("*.json")):
            data = _read_json(path)
            if data is not None:
                out[path.stem] = data
        return out

    def _healthy_keys(self, node: str) -> set[str] | None:
        data = self._health_files().get(node)
        if data is None:
            return None
        return {f"{t['ip']}:{t['port']}" for t in data["targets"] if t["state"] == "healthy"}

    def healthy_targets(self) -> dict[str, list[str]]:
        """AZ -> names of the targets the NLB node there sees healthy."""
        out: dict[str, list[str]] = {}
        for data in self._health_files().values():
            healthy = {t["instance"] for t in data["targets"] if t["state"] == "healthy"}
            out[data["az"]] = sorted(set(out.get(data["az"], [])) | healthy)
        return out

    def target_health(self) -> dict[tuple[str, str], str]:
        """(target group id, instance id) -> healthy | unhealthy | initial | unused."""
        topo = self.topology
        files = self._health_files().values()
        out: dict[tuple[str, str], str] = {}
        for tg in topo.target_groups.values():
            lb_azs = {
                topo.subnets[n.subnet_id].az_id
                for li in topo.listeners.values()
                if li.target_group_id == tg.id and li.nlb_id in topo.nlbs
                for n in topo.nlbs[li.nlb_id].nodes
            }
            for t in tg.targets:
                inst = topo.instances.get(t.instance_id)
                if inst is None:
                    continue
                if topo.subnets[inst.subnet_id].az_id not in lb_azs:
                    out[(tg.id, inst.id)] = "unused"
                    continue
                seen = {
                    x["state"]
                    for f in files
                    for x in f["targets"]
                    if x["tg_id"] == tg.id and x["instance_id"] == inst.id
                }
                for state in ("healthy", "unhealthy", "initial"):
                    if state in seen:
                        out[(tg.id, inst.id)] = state
                        break
                else:
                    out[(tg.id, inst.id)] = "initial"
        return out

    def wait_health(
        self, predicate: Callable[[dict[tuple[str, str], str]], bool], timeout: float
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.target_health()):
                return True
            time.sleep(0.1)
        return False

    def status(self) -> dict:
        plan = self.plan()
        topo = self.topology
        nodes = [
            {
                "node": n.name,
                "namespace": n.ns,
                "kind": n.kind,
                "role": n.role,
                "account": n.account,
                "vpc": n.vpc,
                "subnet": n.subnet,
                "az": n.az,
                "ip": n.ip,
            }
            for n in plan.nodes
        ]
        endpoints = []
        for ep in sorted(topo.endpoints.values(), key=lambda e: e.name):
            created = ep.id in plan.endpoints
            endpoints.append(
                {
                    "name": ep.name,
                    "id": ep.id,
                    "created": created,
                    "state": ep.state if created else "not created",
                    "enis": [e.ip for e in ep.enis] if created else [],
                    "dns": sorted(topo.endpoint_dns_names(ep)) if created else [],
                }
            )
        health = {}
        for node, data in self._health_files().items():
            health[node] = {
                "az": data["az"],
                "updated": data.get("updated"),
                "targets": {t["instance"]: t["state"] for t in data["targets"]},
                "active": data.get("active", {}),
                "fail_open": data.get("fail_open", {}),
            }
        procs = []
        for spec in plan.processes:
            try:
                pid = int(self._pidfile(spec).read_text())
            except (OSError, ValueError):
                pid = 0
            procs.append({"process": spec.key, "pid": pid, "alive": bool(pid) and pid_alive(pid)})
        return {
            "name": self.name,
            "source": topo.source,
            "nodes": nodes,
            "endpoints": endpoints,
            "health": health,
            "healthy_targets": self.healthy_targets(),
            "processes": procs,
            "warnings": plan.warnings,
        }


def _batch(cmds: list[list[str]]) -> str:
    for c in cmds:
        for arg in c:
            if not arg or any(ch.isspace() for ch in arg) or '"' in arg:
                raise LabError(f"argument {arg!r} cannot go into an ip batch")
    return "".join(" ".join(c) + "\n" for c in cmds)
