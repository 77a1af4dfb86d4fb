"""Shared plumbing of the lab benchmarks (bench_blackbox, bench_tcp, bench_footprint,
bench_detection): a lab that is always torn down, agents started inside lab nodes, a real
Prometheus, and per-process CPU/RSS read from /proc.

Kept out of the agent package: nothing here is product code, only measurement harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from agent.lab.lab import Lab  # noqa: E402
from agent.model import Topology  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
KEY = "bench-lab-key-0123456789abcdef0123456789"
PROMETHEUS = "/usr/bin/prometheus"
BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
CLIENT_2 = REPO / "configs" / "lab" / "client-2.yaml"
PROVIDER = REPO / "configs" / "lab" / "provider.yaml"


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value shared by two keys out twice: plprobe's YAML loader refuses aliases."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def dump_yaml(data: object) -> str:
    """``yaml.safe_dump`` without anchors/aliases (configs and topologies built by copying)."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark builds a lab: run it as root")


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"plprobe-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def lab_session(topology: Topology, prefix: str) -> Iterator[Lab]:
    """A lab with a unique name (other labs run on this machine), always torn down."""
    lab = Lab(f"{prefix[:4]}{secrets.token_hex(4)}")
    try:
        lab.up(topology)
        if not lab.wait_health(lambda h: "healthy" in h.values(), timeout=20):
            raise RuntimeError(f"lab {lab.name}: no healthy target after 20 s")
        yield lab
    finally:
        lab.down()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE


def wait_for(what: str, fn: Callable[[], object], timeout: float, step: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            last = fn()
            if last:
                return last
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def spawn(
    lab: Lab,
    node: str,
    argv: list[str],
    logfile: Path,
    *,
    env: dict[str, str] | None = None,
    ready_line: str | None = None,
    timeout: float = 15.0,
) -> subprocess.Popen:
    """Start ``argv`` in ``node`` (``ip netns exec`` execs it: the pid is the program's)."""
    with open(logfile, "w") as fh:
        proc = lab.spawn(
            node, argv, env=env or {}, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT
        )
    if ready_line is not None:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} in {node} exited: {logfile.read_text()[-800:]}")
            return ready_line in logfile.read_text()

        wait_for(f"{node}: {ready_line!r}", ready, timeout)
    return proc


def spawn_agent(
    lab: Lab, node: str, config: Path, logfile: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    argv = [sys.executable, "-m", "agent", "run", "--config", str(config)]
    full = {"PLPROBE_KEY": KEY, **(env or {})}
    return spawn(lab, node, argv, logfile, env=full, ready_line="plprobe run: API on")


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def client_config(work: Path, name: str = "client-2.yaml", **update: object) -> Path:
    """configs/lab/client-2.yaml with ``update`` applied, written to ``work/name``."""
    data = yaml.safe_load(CLIENT_2.read_text())
    data.update(update)
    path = work / name
    path.write_text(dump_yaml(data))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text ``text`` (labels must match exactly as given)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return None


class Prometheus:
    """A real Prometheus process (Debian package) in the root namespace."""

    def __init__(self, work: Path, config: dict, rules: Path | None = None) -> None:
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if rules is not None:
            config = {**config, "rule_files": [str(rules)]}
        (work / "prometheus.yml").write_text(dump_yaml(config))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Prometheus:
        if not os.access(PROMETHEUS, os.X_OK):
            raise RuntimeError(f"{PROMETHEUS} not found (Debian package prometheus)")
        self._log = open(self.work / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.work / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for("prometheus ready", lambda: get(f"{self.url}/-/ready", 2), 20, 0.2)
        except BaseException as exc:
            self.__exit__(None, None, None)
            tail = (self.work / "prometheus.log").read_text()[-800:]
            raise RuntimeError(f"prometheus did not start: {tail}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop(self.proc)
        self._log.close()

    def api(self, path: str, **params: str) -> dict:
        body = json.loads(get(f"{self.url}{path}?{urllib.parse.urlencode(params)}"))
        if body.get("status") != "success":
            raise ValueError(body)
        return body["data"]

    def alerts(self, name: str, state: str | None = None) -> list[dict]:
        return [
            a
            for a in self.api("/api/v1/alerts")["alerts"]
            if a["labels"].get("alertname") == name and (state is None or a["state"] == state)
        ]


def scrape_config(targets: dict[str, int], interval: str, evaluation: str) -> dict:
    """Jobs plprobe-client / plprobe-provider over forwarded ports (name -> local port)."""
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": evaluation,
            "scrape_timeout": interval,
        },
        "scrape_configs": [
            {
                "job_name": f"plprobe-{role}",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{p}"], "labels": {"node": n}}
                    for n, p in targets.items()
                    if n.startswith(prefix)
                ],
            }
            for role, prefix in (("client", "client"), ("provider", "server"))
        ],
    }


def median(values: list[float]) -> float:
    import statistics

    return round(statistics.median(values), 6)
