"""The NLB node's nftables ruleset: listener DNAT to targets, SNAT to the node's own IP.

One pure function, ``ruleset(config, healthy)``, shared by the renderer (``lab up``/``lab
apply`` write the node's first ruleset) and by the health checker (``agent.lab.healthd``
replaces it whenever the healthy set changes). Keeping one renderer means the lab and the
checker can never disagree about what a node does.

``config`` is the JSON-able node description the renderer produces (``NodeConfig.to_plain``)
and the health checker reads back from the state directory. Per listener it lists the
*candidate* targets of this node: every registered target of the listener's target group in
this node's AZ when cross-zone load balancing is off (in every AZ with an NLB node when it is
on). The node forwards to the healthy candidates; when none is healthy it fails open to all
candidates (docs/AWS-BEHAVIOUR.md); when there is no candidate at all, the listener behaves as
``no_target_in_az`` says (timeout or reset, an UNCONFIRMED behaviour kept as a setting).

Traffic to a port without a listener behaves as ``no_listener`` says.

PROXY protocol v2: listeners whose target group has ``proxy_protocol_v2`` are marked
``proxy_v2``. A header can only be prepended by something that owns the byte stream, so such a
listener is not DNATed: its traffic is REDIRECTed to ``agent.lab.ppproxy`` in this namespace
(one port per listener, ``proxy_ports``), which picks a target with the same
``active_targets`` selection, connects from the node's IP, writes the header and pipes.
Nothing changes for listeners without PROXY v2: their rules are the same bytes as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TABLE = "plprobe"


@dataclass(frozen=True)
class NatTarget:
    """A registered target as one NLB node sees it."""

    tg_id: str
    tg_name: str
    instance_id: str
    instance: str
    ip: str
    port: int
    health_port: int
    hc_protocol: str
    hc_path: str
    az: str
    az_id: str
    #: the target group has proxy_protocol_v2: health checks start with a LOCAL header
    proxy_v2: bool = False

    @property
    def key(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class NatListener:
    port: int
    tg_id: str | None
    proxy_v2: bool = False
    #: the targets this node may forward to (AZ-local when cross-zone is off)
    candidates: tuple[NatTarget, ...] = ()


@dataclass(frozen=True)
class NodeConfig:
    node: str
    nlb_id: str
    nlb: str
    ip: str
    az: str
    az_id: str
    no_listener: str = "timeout"
    no_target_in_az: str = "timeout"
    interval_s: float = 1.0
    threshold: int = 2
    listeners: tuple[NatListener, ...] = ()
    #: every registered target of this NLB's target groups: what the checker probes
    checked: tuple[NatTarget, ...] = field(default=())

    def to_plain(self) -> dict:
        return asdict(self)

    @classmethod
    def from_plain(cls, data: dict) -> NodeConfig:
        listeners = tuple(
            NatListener(
                port=li["port"],
                tg_id=li["tg_id"],
                proxy_v2=li.get("proxy_v2", False),
                candidates=tuple(NatTarget(**t) for t in li["candidates"]),
            )
            for li in data["listeners"]
        )
        checked = tuple(NatTarget(**t) for t in data["checked"])
        rest = {k: v for k, v in data.items() if k not in ("listeners", "checked")}
        return cls(**rest, listeners=listeners, checked=checked)


def active_targets(config: NodeConfig, healthy: set[str] | None) -> dict[int, list[NatTarget]]:
    """Listener port -> targets the node forwards to (healthy ones, or all when none is).

    ``healthy`` holds target keys (``ip:port``); ``None`` means "not checked yet", which is
    treated like "none healthy": fail open to every candidate.
    """
    out: dict[int, list[NatTarget]] = {}
    for li in config.listeners:
        if not li.candidates:
            continue
        chosen = [t for t in li.candidates if healthy is not None and t.key in healthy]
        out[li.port] = chosen or list(li.candidates)
    return out


PROXY_PORT_BASE = 64000
"""Where the node's PROXY v2 proxy listens (one port per PROXY listener, upwards from here,
skipping the node's listener ports). Only redirected traffic reaches these ports: the input
chain accepts them for ``ct status dnat`` alone, so nobody can connect to them directly."""


def proxy_ports(config: NodeConfig) -> dict[int, int]:
    """Listener port -> the port of this node's PROXY v2 proxy that serves it."""
    taken = {li.port for li in config.listeners}
    out: dict[int, int] = {}
    port = PROXY_PORT_BASE
    for li in sorted(config.listeners, key=lambda x: x.port):
        if not li.proxy_v2 or li.port in out:
            continue
        while port in taken:
            port += 1
        out[li.port] = port
        taken.add(port)
    return out


def _action(kind: str) -> str:
    return "reject with tcp reset" if kind == "reset" else "drop"


def ruleset(config: NodeConfig, healthy: set[str] | None) -> str:
    """The complete ``table ip plprobe`` of the node, replacing any previous one atomically."""
    active = active_targets(config, healthy)
    proxied = proxy_ports(config)
    pre: list[str] = []
    for port, targets in sorted(active.items()):
        if port in proxied:
            # the proxy chooses among the same active targets (it reads the health state)
            pre.append(
                f"ip daddr {config.ip} tcp dport {port} redirect to :{proxied[port]}"
                ' comment "PROXY v2: to agent.lab.ppproxy"'
            )
            continue
        elems = ", ".join(f"{i} : {t.ip} . {t.port}" for i, t in enumerate(targets))
        pre.append(
            f"ip daddr {config.ip} tcp dport {port} "
            f"dnat ip to numgen inc mod {len(targets)} map {{ {elems} }}"
        )
    no_target_ports = sorted(li.port for li in config.listeners if li.port not in active)
    inp = ["ct state established,related accept", 'iif "lo" accept']
    redirected = sorted(proxied[p] for p in active if p in proxied)
    if redirected:
        ports = ", ".join(str(p) for p in redirected)
        inp.append(
            f"tcp dport {{ {ports} }} ct status dnat accept"
            ' comment "PROXY v2 listeners, redirected to the proxy"'
        )
    if no_target_ports:
        ports = ", ".join(str(p) for p in no_target_ports)
        inp.append(
            f"tcp dport {{ {ports} }} {_action(config.no_target_in_az)}"
            ' comment "listener without a target in this AZ"'
        )
    if config.no_listener == "reset":
        inp.append('meta l4proto tcp reject with tcp reset comment "no listener"')
    snat = f"ct status dnat meta l4proto tcp snat ip to {config.ip}:1024-65535 random"
    return nat_table(pre, inp, post=[snat])


def nat_table(pre: list[str], inp: list[str], *, post: list[str] | None = None) -> str:
    """The one shape of a NAT hop's ruleset (an endpoint ENI or an NLB node).

    It replaces any previous table atomically (declare, delete, add in one transaction, so
    conntrack keeps its flows), DNATs in prerouting, SNATs in postrouting when given, accepts
    only ``inp`` locally and forwards only what it DNATed.
    """
    lines = [
        f"table ip {TABLE} {{}}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *(f"    {r}" for r in pre),
        "  }",
    ]
    if post is not None:
        lines += [
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            *(f"    {r}" for r in post),
            "  }",
        ]
    lines += [
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        *(f"    {r}" for r in inp),
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct status dnat accept",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"
