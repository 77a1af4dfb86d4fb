"""The provider config's ``probes:`` section: what the provider agent probes by itself.

Its own module so the agent config (``agent.config``, which re-exports both classes) stays one
readable schema; the rules are the config's: frozen, unknown keys rejected, every mistake
reported with its file position by ``agent.config.load_config``. What the section drives is in
``agent.daemon.provider_probes``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ProviderProbeTarget", "ProviderProbesConfig"]

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
#: the same shapes as ``agent.config``'s agent and AZ ids (path id segments, metric labels)
_AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_AZ_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


def _ip_text(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address") from exc


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderProbeTarget(_Frozen):
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
        return _ip_text(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _AZ_ID.match(value):
            raise ValueError("letters, digits, '.', '_', '-' (a path id segment)")
        return value


class ProviderProbesConfig(_Frozen):
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
            if not _AZ_ID.match(az):
                raise ValueError(f"{az!r} is not an AZ id (e.g. apne1-az4)")
        return {az: _ip_text(ip) for az, ip in value.items()}

    @field_validator("expected_consumers")
    @classmethod
    def _consumers(cls, value: list[str]) -> list[str]:
        for v in value:
            if not _AGENT_ID.match(v):
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
