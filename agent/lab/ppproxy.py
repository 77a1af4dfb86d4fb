"""The NLB node's PROXY protocol v2 hop: a userspace proxy for listeners with PROXY v2 on.

``lab up`` starts ``python -m agent.lab.ppproxy --config C --health H --ready R`` inside an
NLB node's namespace when one of the node's listeners forwards to a target group with
``proxy_protocol_v2``. The node's ruleset (``agent.lab.nlbnat``) REDIRECTs such a listener to
this proxy instead of DNATing it. Per connection the proxy

1. picks a target the way the kernel path does: round robin over
   ``nlbnat.active_targets`` (the healthy candidates of this node, AZ-local when cross-zone
   is off, every candidate when none is healthy: fail open), with the healthy set read from
   the health checker's state file (``agent.lab.healthd``), re-read when it changes;
2. connects to it FROM the node's IP with a random source port in 1024-65535 (as the NLB's
   SNAT does), so the provider router checks NLB SG egress, the NACLs and the target SG
   ingress exactly as for DNATed traffic;
3. writes a header laid out as AWS's (docs/AWS-BEHAVIOUR.md, "Addresses at each hop"): signature,
   ``0x21`` PROXY, ``0x11`` TCP4, src = the client's IP and port as the NLB saw them (the
   endpoint hop keeps the client source), dst = the endpoint ENI IP and the listener port the
   client connected to, then TLVs CRC32C (``0x03``), AWS ``0xEA`` subtype ``0x01`` = the
   endpoint id, and a NOOP (``0x04``) padding the header to 100 bytes like AWS's published
   IPv4 capture (never shorter than the TLVs need);
4. pipes both directions with bounded buffers until both sides are done.

Recovering the endpoint ENI IP (the header's dst). The NLB node only sees its own IP as the
destination: the ENI namespace already DNATed ``eni_ip -> node_ip``. The renderer therefore
gives the proxy, per endpoint ENI that DNATs to this node (same AZ id), the endpoint id, the
ENI IP and the consumer CIDRs that can reach that ENI (its VPC and active peers), and the
proxy keys on the client's source address. This is the same key the lab already routes
PrivateLink replies by (``agent.lab.plan._privatelink``: provider router -> endpoint link by
destination CIDR, consumer router -> ENI by NLB node IP), so it is exact wherever the lab's
data plane is; where two endpoints reaching the same NLB node share a consumer CIDR, reply
routing is already ambiguous and the renderer warns. Rejected alternatives: a per-ENI port
or mark set in the ENI namespace (marks do not cross a veth into another namespace, a port
rewrite would change what the NLB SG ingress rules match) and a conntrack lookup in the ENI
namespace (a subprocess or setns per connection, and racy).

Where this differs from a real NLB (which does not terminate TCP):

* the client's handshake completes with the proxy before any target is tried, so a target
  that refuses (RST) shows up as accept-then-reset: the proxy closes the client socket with
  ``SO_LINGER 0`` so the client sees a reset quickly, never a hang, but ``connect()`` itself
  succeeded (httpcheck reports ``reset``, not ``refused``); a target-side drop (SG, NACL)
  looks like an accepted connection that never answers (the client's read times out), then
  is reset after ``connect_timeout_s``;
* the target's connection is a new one: its SYN carries the proxy's initial sequence number,
  not the client's (``nlb_preserves_isn`` cannot hold on a PROXY listener), MSS and window
  are the node's own; segments are re-cut by the proxy;
* an idle flow is reset after ``idle_timeout_s`` (AWS's default 350 s) whichever side is
  idle, as the NLB does;
* health-check connections come from ``agent.lab.healthd`` (LOCAL header), not from here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import random
import socket
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.lab import nlbnat
from agent.lab.stop import stop_on_signals
from agent.wire.proxy_v2 import build_proxy_v2

log = logging.getLogger("plprobe.lab.ppproxy")

AWS_HEADER_LEN = 100
"""Total length of the IPv4 header in AWS's published capture (padded with a NOOP TLV)."""
_NOOP_TLV_OVERHEAD = 3
CHUNK = 65536
"""Bytes read per step and per direction: with the transport's write buffer limit this bounds
the memory one connection can hold to a few chunks."""
_WRITE_HIGH_WATER = 4 * CHUNK
_SRC_PORT_TRIES = 32
_CLOSE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class EniRoute:
    """An endpoint ENI whose traffic arrives at this node, and who can reach it."""

    endpoint_id: str
    eni_ip: str
    #: consumer CIDRs that reach this ENI (its VPC and active peers), in routing order
    cidrs: tuple[str, ...]


@dataclass(frozen=True)
class ProxyConfig:
    """What one node's proxy needs; rendered by ``agent.lab.plan``, written as JSON."""

    nat: nlbnat.NodeConfig
    enis: tuple[EniRoute, ...] = ()
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 350.0
    max_connections: int = 4096
    #: how often the health checker's state file is looked at
    health_poll_s: float = 0.2
    header_len: int = AWS_HEADER_LEN
    listen: dict[int, int] = field(default_factory=dict)

    def to_plain(self) -> dict:
        data = asdict(self)
        data["nat"] = self.nat.to_plain()
        data["listen"] = {str(k): v for k, v in self.listen.items()}
        return data

    @classmethod
    def from_plain(cls, data: dict) -> ProxyConfig:
        rest = {k: v for k, v in data.items() if k not in ("nat", "enis", "listen")}
        return cls(
            nat=nlbnat.NodeConfig.from_plain(data["nat"]),
            enis=tuple(
                EniRoute(e["endpoint_id"], e["eni_ip"], tuple(e["cidrs"])) for e in data["enis"]
            ),
            listen={int(k): int(v) for k, v in data["listen"].items()},
            **rest,
        )

    @classmethod
    def for_node(cls, nat: nlbnat.NodeConfig, enis: tuple[EniRoute, ...]) -> ProxyConfig:
        return cls(nat=nat, enis=enis, listen=nlbnat.proxy_ports(nat))


def eni_for(config: ProxyConfig, client_ip: str) -> EniRoute | None:
    """The endpoint ENI a client's connection came through (see the module docstring)."""
    if len(config.enis) == 1:
        return config.enis[0]
    addr = ipaddress.ip_address(client_ip)
    for eni in config.enis:
        if any(addr in ipaddress.ip_network(c, strict=False) for c in eni.cidrs):
            return eni
    return None


def aws_header(
    client: tuple[str, int], eni: EniRoute, listener_port: int, total_len: int = AWS_HEADER_LEN
) -> bytes:
    """The PROXY v2 header an AWS NLB sends for this connection (padded to ``total_len``)."""
    bare = build_proxy_v2(client[0], eni.eni_ip, client[1], listener_port, vpce_id=eni.endpoint_id)
    pad = max(0, total_len - len(bare) - _NOOP_TLV_OVERHEAD)
    return build_proxy_v2(
        client[0], eni.eni_ip, client[1], listener_port, vpce_id=eni.endpoint_id, noop_pad=pad
    )


class Health:
    """The healthy set as the health checker last wrote it (None: nothing checked yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.healthy: set[str] | None = None
        self._mtime: int | None = None

    def refresh(self) -> None:
        """Re-read the state file when it changed; keep the last good set when unreadable."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime:
            return
        try:
            data = json.loads(self.path.read_text())
            keys = {f"{t['ip']}:{t['port']}" for t in data["targets"] if t["state"] == "healthy"}
        except (OSError, ValueError, KeyError, TypeError):
            return
        self._mtime = mtime
        self.healthy = keys


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0): the peer sees ECONNRESET, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT_S)
    except (OSError, TimeoutError):
        writer.transport.abort()


class _Reset(Exception):
    """One side reset or went idle: reset the other side too."""


class Proxy:
    def __init__(self, config: ProxyConfig, health: Health) -> None:
        self.config = config
        self.health = health
        self.by_port = {li.port: li for li in config.nat.listeners}
        self._next: dict[int, int] = {}
        self._active = 0
        self.servers: list[asyncio.Server] = []

    def pick(self, listener_port: int) -> nlbnat.NatTarget | None:
        """Round robin over the active targets of the listener (fail open when none healthy)."""
        targets = nlbnat.active_targets(self.config.nat, self.health.healthy).get(listener_port)
        if not targets:
            return None
        i = self._next.get(listener_port, 0)
        self._next[listener_port] = i + 1
        return targets[i % len(targets)]

    async def start(self) -> None:
        for listener_port, proxy_port in sorted(self.config.listen.items()):

            async def handle(
                r: asyncio.StreamReader, w: asyncio.StreamWriter, lp: int = listener_port
            ) -> None:
                await self._handle(r, w, lp)

            self.servers.append(
                await asyncio.start_server(
                    handle, self.config.nat.ip, proxy_port, limit=CHUNK, reuse_address=True
                )
            )

    async def _connect(
        self, target: nlbnat.NatTarget
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect from the node's IP and a random port in 1024-65535 (the NLB's SNAT range)."""
        last: OSError | None = None
        for _ in range(_SRC_PORT_TRIES):
            port = random.randint(1024, 65535)
            try:
                return await asyncio.open_connection(
                    target.ip, target.port, local_addr=(self.config.nat.ip, port), limit=CHUNK
                )
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:  # in use: try another source port
                    raise
                last = exc
        raise last or OSError("no free source port")

    async def _handle(
        self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter, listener_port: int
    ) -> None:
        if self._active >= self.config.max_connections:
            _abort(cwriter)
            return
        self._active += 1
        try:
            await self._serve(creader, cwriter, listener_port)
        except Exception:  # a bug costs one connection, never the proxy
            log.exception("ppproxy: unexpected error")
            _abort(cwriter)
        finally:
            self._active -= 1

    async def _serve(
        self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter, listener_port: int
    ) -> None:
        peer = cwriter.get_extra_info("peername")
        eni = eni_for(self.config, peer[0])
        target = self.pick(listener_port)
        if eni is None or target is None:
            log.warning(
                "%s:%s -> :%s: %s",
                peer[0],
                peer[1],
                listener_port,
                "no endpoint ENI for this source" if eni is None else "no target",
            )
            _abort(cwriter)
            return
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                treader, twriter = await self._connect(target)
        except (OSError, TimeoutError) as exc:
            # refused -> the client sees a reset at once; a silent drop -> after the timeout
            log.info("%s:%s -> %s: %r", peer[0], peer[1], target.key, exc)
            _abort(cwriter)
            return
        twriter.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        cwriter.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        twriter.write(aws_header((peer[0], peer[1]), eni, listener_port, self.config.header_len))
        await self._pipe(creader, cwriter, treader, twriter)

    async def _pipe(
        self,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        treader: asyncio.StreamReader,
        twriter: asyncio.StreamWriter,
    ) -> None:
        loop = asyncio.get_running_loop()
        last = [loop.time()]
        idle = self.config.idle_timeout_s

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while True:
                try:
                    data = await asyncio.wait_for(src.read(CHUNK), idle)
                except TimeoutError:
                    if loop.time() - last[0] >= idle:
                        raise _Reset("idle") from None
                    continue
                except OSError as exc:
                    raise _Reset(str(exc)) from exc
                if not data:
                    with contextlib.suppress(OSError):
                        if dst.can_write_eof():
                            dst.write_eof()
                    return
                last[0] = loop.time()
                try:
                    dst.write(data)
                    await dst.drain()
                except OSError as exc:
                    raise _Reset(str(exc)) from exc

        tasks = [
            asyncio.create_task(pump(creader, twriter)),
            asyncio.create_task(pump(treader, cwriter)),
        ]
        try:
            for fut in asyncio.as_completed(tasks):
                await fut
        except _Reset:
            _abort(cwriter)
            _abort(twriter)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if not cwriter.transport.is_closing():
            await _close(cwriter)
        if not twriter.transport.is_closing():
            await _close(twriter)


async def run(config_path: Path, health_path: Path, ready: Path | None) -> None:
    config = ProxyConfig.from_plain(json.loads(config_path.read_text()))  # noqa: ASYNC240
    health = Health(health_path)
    health.refresh()
    proxy = Proxy(config, health)
    stop = stop_on_signals()
    await proxy.start()
    if ready is not None:
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.write_text(f"ready {os.getpid()}\n")  # noqa: ASYNC240 - once, at startup
    log.info("listening: %s", ", ".join(f"{lp}->{pp}" for lp, pp in config.listen.items()))
    while not stop.is_set():
        await asyncio.to_thread(health.refresh)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.health_poll_s)
    for server in proxy.servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--health", type=Path, required=True, help="healthd's state file")
    parser.add_argument("--ready", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ppproxy %(message)s")
    asyncio.run(run(args.config, args.health, args.ready))


if __name__ == "__main__":
    main()
