"""Walk one flow (client -> endpoint ENI -> NLB -> targets, and back) over a Topology.

Every hop of the PrivateLink path becomes a ``HopFinding``: *allowed* (by which rule),
*denied* (which rules were checked, the Reachability Analyzer code, the smallest fix) or
*not_visible* (the resource's account was not read, or the object is absent from a partial
view). Findings come in path order:

    forward  client SG egress, client subnet NACL out, endpoint subnet NACL in, endpoint SG
             ingress, endpoint state, allowed principals, NLB subnet NACL in (client IP; lab
             setting ``nlb_subnet_nacl_on_privatelink``), NLB SG ingress (client IP; only when
             enforced), listener, then per target: NLB SG egress, provider NACLs (NLB subnet
             out, target subnet in), target SG ingress from the NLB's IP, the service listening
    health   per target, when the health-check port differs from the traffic port: the same
             hops for the health-check port (health checks obey NLB SG *egress*)
    return   per target: target subnet NACL out / NLB subnet NACL in on the NLB's 1024-65535;
             the NLB subnet NACL out to the client (same setting), then endpoint subnet NACL
             out / client subnet NACL in on Linux's 32768-60999
    target-health per target (observed ``Target.health`` or predicted from the health hops),
             then the AZ's verdict: no target in the AZ (cross-zone off), or fail-open when no
             target is healthy (traffic still goes to all of them: ``degraded`` is set)

Per-target hops carry ``target`` so diagnosis can tell "one of two targets" (degraded) from
"every target" (fail). SGs are evaluated only in the opening direction (stateful); NACLs in
both (stateless). The SG and NACL hops, their direction and the address each one sees are
declared once in ``agent.pathhops``; the lab enforces the same declaration. Whether the NLB
subnet's NACL sees PrivateLink traffic is not documented by AWS: a lab setting decides, and
the walk follows it.

The walk is split by side: ``agent.analyze.consumer`` (client, endpoint), ``agent.analyze.provider``
(NLB, targets), over ``agent.analyze.hops`` (visibility and the SG/NACL finding builders); the
flow itself comes from ``agent.analyze.flows``.
"""

from __future__ import annotations

from agent import controls
from agent.analyze.consumer import ConsumerHops
from agent.analyze.flows import Flow, az_of_subnet, flows
from agent.analyze.provider import ProviderHops
from agent.errors import ConfigError
from agent.model import Topology
from agent.results import HopFinding

__all__ = ["EMITTED_CONTROLS", "Flow", "analyze_flow", "flows", "walk"]

#: every catalogue id the analysis can put in ``HopFinding.control`` (the catalogue's
#: ``Control.emitted``; tested against what the walk emits)
EMITTED_CONTROLS: tuple[str, ...] = controls.EMITTED


# --- the walk -------------------------------------------------------------------------------


def analyze_flow(
    topology: Topology,
    client: str,
    endpoint: str | None,
    port: int,
    *,
    eni_ip: str | None = None,
) -> list[HopFinding]:
    """Findings for ``client`` -> ``endpoint`` (default: the one it routes to) on ``port``.

    ``eni_ip`` selects one AZ path; by default the ENI in the client's AZ, else the first.
    """
    candidates = flows(topology, client, port, endpoint)
    flow = candidates[0]
    if eni_ip is not None:
        chosen = [f for f in candidates if f.eni_ip == eni_ip]
        if not chosen:
            known = ", ".join(f.eni_ip or "?" for f in candidates)
            raise ConfigError(f"endpoint has no ENI {eni_ip} (its ENIs: {known})")
        flow = chosen[0]
    elif len(candidates) > 1 and flow.client is not None:
        client_az = az_of_subnet(topology, flow.client.subnet_id)
        flow = next((f for f in candidates if f.az_id == client_az), flow)
    return walk(topology, flow)


def walk(topology: Topology, flow: Flow) -> list[HopFinding]:
    """All findings for one Flow, in path order (see the module docstring)."""
    return _Walker(topology, flow).run()


class _Walker(ConsumerHops, ProviderHops):
    """Both sides of one flow, in path order."""

    def run(self) -> list[HopFinding]:
        self.consumer_hops()
        self.endpoint_hops()
        self.provider_hops()
        self.privatelink_return_hops()
        self.consumer_return_hops()
        return self.out
