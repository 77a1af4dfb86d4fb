"""The NLB node's health checker: real connections from the node's IP, one process per node.

``lab up`` starts ``python -m agent.lab.healthd --config C --state S`` inside each NLB node's
namespace. Every ``interval_s`` it checks each registered target of the node's listeners
(TCP connect, or an HTTP GET for HTTP/HTTPS health checks; 200-399 is healthy) from the
node's own IP, so the checks cross the VPC router like any other packet and obey the NLB SG
egress, the target SG ingress and the NACLs (docs/AWS-BEHAVIOUR.md "Common mistakes").

Target groups with ``proxy_protocol_v2``: AWS's health-check connections carry a PROXY v2
header without client information, so every check to such a target starts with a LOCAL
header (``0x20``, TCP4 family with the check's own addresses, which the receiver ignores, and
a CRC32C TLV; no endpoint id). The exact TLVs AWS puts on a LOCAL header are not documented.
A service that cannot parse the header fails HTTP checks (it answers the header with an error,
not 200-399) — docs/AWS-BEHAVIOUR.md; a TCP check only needs the connect, so it
passes whatever the service makes of the header.

``threshold`` consecutive results flip a target between ``healthy`` and ``unhealthy``
(``initial`` before the first flip). When the healthy set changes, the node's whole ruleset
is replaced with one ``nft -f -`` transaction (``agent.lab.nlbnat.ruleset``; fail open when
nothing is healthy). The state file (JSON, replaced atomically every round) is what ``lab
status``, ``Lab.target_health()`` and snapshots read. A restart resumes from the state file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.lab import nlbnat
from agent.lab.stop import stop_on_signals
from agent.wire.proxy_v2 import build_proxy_v2

log = logging.getLogger("plprobe.lab.healthd")
NFT_TIMEOUT_S = 10.0


@dataclass
class _Track:
    state: str = "initial"
    ok: int = 0
    fail: int = 0
    reason: str = ""


def _key(t: nlbnat.NatTarget) -> str:
    return f"{t.tg_id}|{t.key}"


def local_header(writer: asyncio.StreamWriter, t: nlbnat.NatTarget) -> bytes:
    """The LOCAL PROXY v2 header of a health check: no client, the check's own addresses."""
    src = writer.get_extra_info("sockname") or (t.ip, 0)
    return build_proxy_v2(src[0], t.ip, src[1], t.health_port, command="LOCAL")


async def check_target(
    t: nlbnat.NatTarget,
    source_ip: str,
    timeout: float,  # noqa: ASYNC109 - the check's own deadline, from the config
) -> tuple[bool, str]:
    """One health check; returns (healthy, reason in AWS's vocabulary)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                t.ip, t.health_port, local_addr=(source_ip, 0)
            )
            try:
                if t.proxy_v2:
                    writer.write(local_header(writer, t))
                    await writer.drain()
                if t.hc_protocol in ("HTTP", "HTTPS"):
                    writer.write(
                        f"GET {t.hc_path} HTTP/1.1\r\nHost: {t.ip}\r\n"
                        "User-Agent: ELB-HealthChecker/2.0\r\nConnection: close\r\n\r\n".encode()
                    )
                    await writer.drain()
                    line = await reader.readline()
                    parts = line.split()
                    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                    if not 200 <= code < 400:
                        return False, "Target.ResponseCodeMismatch"
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except TimeoutError:
        return False, "Target.Timeout"
    except OSError:
        return False, "Target.FailedHealthChecks"
    return True, ""


class Checker:
    def __init__(self, config: nlbnat.NodeConfig, state_path: Path) -> None:
        self.config = config
        self.state_path = state_path
        self.tracks: dict[str, _Track] = {_key(t): _Track() for t in config.checked}
        self.applied: str | None = None
        self._resume()

    def _resume(self) -> None:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return
        for t in data.get("targets", []):
            key = f"{t['tg_id']}|{t['ip']}:{t['port']}"
            if key in self.tracks and t.get("state") in ("healthy", "unhealthy"):
                self.tracks[key].state = t["state"]

    def healthy(self) -> set[str] | None:
        keys = {k.split("|", 1)[1] for k, tr in self.tracks.items() if tr.state == "healthy"}
        if not keys and all(tr.state == "initial" for tr in self.tracks.values()):
            return None
        return keys

    async def round(self) -> None:
        cfg = self.config
        timeout = max(0.2, min(cfg.interval_s * 0.8, 10.0))
        targets = list(cfg.checked)
        results = await asyncio.gather(*(check_target(t, cfg.ip, timeout) for t in targets))
        for t, (ok, reason) in zip(targets, results, strict=True):
            tr = self.tracks[_key(t)]
            if ok:
                tr.ok, tr.fail = tr.ok + 1, 0
                if tr.ok >= cfg.threshold:
                    tr.state, tr.reason = "healthy", ""
            else:
                tr.ok, tr.fail = 0, tr.fail + 1
                tr.reason = reason
                if tr.fail >= cfg.threshold:
                    tr.state = "unhealthy"
        await self.sync()

    async def sync(self) -> None:
        healthy = self.healthy()
        text = nlbnat.ruleset(self.config, healthy)
        if text != self.applied:
            await _nft(text)
            self.applied = text
        self._write(healthy)

    def _write(self, healthy: set[str] | None) -> None:
        cfg = self.config
        active = nlbnat.active_targets(cfg, healthy)
        fail_open = {
            str(li.port): bool(li.candidates)
            and not any(healthy is not None and t.key in healthy for t in li.candidates)
            for li in cfg.listeners
        }
        data = {
            "node": cfg.node,
            "nlb": cfg.nlb,
            "ip": cfg.ip,
            "az": cfg.az,
            "az_id": cfg.az_id,
            "updated": time.time(),
            "targets": [
                {
                    "tg_id": t.tg_id,
                    "tg": t.tg_name,
                    "instance_id": t.instance_id,
                    "instance": t.instance,
                    "ip": t.ip,
                    "port": t.port,
                    "health_port": t.health_port,
                    "az": t.az,
                    "state": self.tracks[_key(t)].state,
                    "reason": self.tracks[_key(t)].reason,
                }
                for t in cfg.checked
            ],
            "active": {str(p): [t.instance for t in ts] for p, ts in sorted(active.items())},
            "fail_open": fail_open,
        }
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.state_path)


async def _nft(text: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "nft",
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(NFT_TIMEOUT_S):
        _, err = await proc.communicate(text.encode())
    if proc.returncode != 0:
        log.error("nft -f failed: %s", err.decode().strip())


async def run(config_path: Path, state_path: Path) -> None:
    config = nlbnat.NodeConfig.from_plain(json.loads(config_path.read_text()))  # noqa: ASYNC240
    state_path.parent.mkdir(parents=True, exist_ok=True)
    checker = Checker(config, state_path)
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    await checker.sync()
    while not stop.is_set():
        started = loop.time()
        await checker.round()
        delay = max(0.0, config.interval_s - (loop.time() - started))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s healthd %(message)s")
    asyncio.run(run(args.config, args.state))


if __name__ == "__main__":
    main()
