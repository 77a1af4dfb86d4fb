"""The provider role's own sections: ``probes:`` (what the provider agent probes by itself)
and ``evidence:`` (what it tells clients through the endpoint).

Their own module so the agent config (``agent.config``, which re-exports these classes) stays
one readable schema; the rules are the config's: frozen, unknown keys rejected, every mistake
reported with its file position by ``agent.config.load_config``. What the section drives is in
``agent.daemon.provider_probes``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from agent.config_types import AGENT_ID, AZ_ID, Port, Seconds, StrictModel, ip_text

__all__ = ["EvidenceConfig", "ProviderProbeTarget", "ProviderProbesConfig"]


class ProviderProbeTarget(StrictModel):
    """One target the provider agent probes directly (by-passing the NLB)."""

    #: a short name for the path id and messages (the instance name); default: the IP
    name: str | None = Field(default=None, min_length=1, max_length=32)
    ip: str
    #: the traffic port (the target group's port, or the registration's port)
    port: Port
    #: the health-check port; ``None``: the traffic port (``traffic-port``)
    health_port: Port | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return ip_text(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not AZ_ID.match(value):
            raise ValueError("letters, digits, '.', '_', '-' (a path id segment)")
        return value


class ProviderProbesConfig(StrictModel):
    """Probes the provider agent sends from inside the provider VPC every ``interval``.

    Each NLB listener through each NLB node IP (provider -> NLB -> a target: what a consumer's
    flow crosses after ④ ingress), and each target directly on its traffic and health-check
    port (the service, without the NLB). Give the NLB nodes, listener ports and targets here,
    or ``discover: true`` to take them from the provider's configuration view
    (``config_sources``); configured values win over discovered ones, key by key.
    ``expected_consumers`` (client agent ids) is what the "a consumer's probes stopped
    arriving" alert compares with; consumers seen once are also learned by the alert itself.
    """

    enabled: bool = False
    interval: Seconds = 30.0
    timeout: Seconds = 2.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    #: AZ id -> NLB node private IP, e.g. {apne1-az4: 10.3.0.100}
    nlb_nodes: dict[str, str] = Field(default_factory=dict)
    #: the NLB's listener ports
    listeners: list[Port] = Field(default_factory=list)
    #: listener ports that speak plprobe's responder protocol (the evidence/responder port)
    responder_ports: list[Port] = Field(default_factory=list)
    targets: list[ProviderProbeTarget] = Field(default_factory=list, max_length=256)
    #: fill what is not configured from the provider view (NLB nodes, listeners, targets)
    discover: bool = False
    #: client agent ids whose probes this provider expects (metrics and alert)
    expected_consumers: list[str] = Field(default_factory=list, max_length=1024)

    @field_validator("nlb_nodes")
    @classmethod
    def _nodes(cls, value: dict[str, str]) -> dict[str, str]:
        for az in value:
            if not AZ_ID.match(az):
                raise ValueError(f"{az!r} is not an AZ id (e.g. apne1-az4)")
        return {az: ip_text(ip) for az, ip in value.items()}

    @field_validator("expected_consumers")
    @classmethod
    def _consumers(cls, value: list[str]) -> list[str]:
        for v in value:
            if not AGENT_ID.match(v):
                raise ValueError(f"{v!r} is not an agent id")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ProviderProbesConfig:
        stray = sorted(set(self.responder_ports) - set(self.listeners))
        if stray and self.listeners:
            raise ValueError(f"responder_ports {stray} are not in listeners")
        if len(set(self.listeners)) != len(self.listeners):
            raise ValueError("a listener port is listed twice")
        names = [t.name or t.ip for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError("two targets have the same name (or IP)")
        if (
            self.enabled
            and not self.discover
            and not ((self.nlb_nodes and self.listeners) or self.targets)
        ):
            raise ValueError(
                "nothing to probe: give nlb_nodes and listeners, or targets, or discover: true"
            )
        return self


class EvidenceConfig(StrictModel):
    """What this provider agent tells clients through the endpoint (agent/observe/evidence.py).

    ``share`` is the provider's choice: ``none`` (coverage only: the client can tell "shares
    nothing" from "channel cut"), ``seen-only`` (which of the client's probes arrived where),
    ``findings`` (also the provider's own findings for the client's flow: control and rule ids
    and fixes, never raw configuration). ``peers``: the other provider agents of the target
    group as ``host:port`` of their responders, asked on each query so one target answers for
    all (this agent's own address may be listed: it is skipped). Empty: the targets registered
    on the responder port in the provider's view (``config_sources``: DescribeTargetHealth).
    """

    enabled: bool = True
    share: Literal["none", "seen-only", "findings"] = "seen-only"
    peers: list[str] = Field(default_factory=list, max_length=256)
    #: how long one peer may take to answer before the answer goes out without it
    peer_timeout: Annotated[float, Field(gt=0, le=10)] = 1.0
    #: the largest answer this agent sends (bytes; truncated beyond, with a flag)
    max_answer_bytes: Annotated[int, Field(ge=512, le=8192)] = 8192

    @field_validator("peers")
    @classmethod
    def _peers(cls, value: list[str]) -> list[str]:
        for v in value:
            host, sep, port = v.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"peer {v!r} is not host:port")
        return value
