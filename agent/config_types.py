"""Shapes every section of the agent configuration shares: ports, durations, ids, addresses.

One definition each, so the client config, the provider config and its sections
(``agent.config``, ``agent.config_provider``) validate the same things the same way.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AGENT_ID", "AZ_ID", "ENDPOINT_ID", "Port", "Seconds", "StrictModel", "ip_text"]

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
#: agent and AZ ids are path id segments and metric label values: short and plain
AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
AZ_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
ENDPOINT_ID = re.compile(r"^vpce-[0-9a-f]{8,17}$")


class StrictModel(BaseModel):
    """Frozen, and an unknown key is an error (a misspelt key must never be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def ip_text(value: str) -> str:
    """``value`` as the canonical text of an IP address; ``ValueError`` when it is none."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address") from exc
