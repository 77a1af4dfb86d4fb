"""The fault matrix (issue 4, scenarios 1-22) and diagnosis accuracy per evidence level.

Each scenario is a topology edit on a running lab (``agent.lab.faults`` where the mistake is
there, else built here), the agents run one round per client inside the client nodes, and
each path's verdict is compared with the ground truth at four evidence levels:

    endpoint      both agents, evidence through the endpoint: client packets, the consumer
                  account's snapshot, and what the provider fleet answered on the responder
                  port (observations and its own findings) - what a deployment has
    side-channel  reference: provider observations handed over through ``ip netns exec`` + both
                  accounts' snapshots (no deployment has this)
    client        client packets + the consumer account's snapshot
    packets       client packets alone

Only service-port paths are scored (the responder-port paths carry the evidence channel). A
scenario whose mistake also blocks the responder port cuts the channel: the endpoint level
then keeps the stage and its verdicts name the cut (``channel cut`` in the table).

Per level: **exact control** (every path's status and ``blocked_at`` are the truth),
**right stage** (every path's stage is), **false blame** (some path names a control that is
not the one broken — on a healthy path, any control). ``unknown``/no control is never a false
blame: saying "I cannot tell" is allowed, naming the wrong rule is not.

    sudo .venv/bin/python bench/diagnosis_accuracy.py [--write docs/DIAGNOSIS.md]

builds its own labs (random names, always removed), runs the matrix and prints the markdown
table; ``--write`` replaces the table between the markers in docs/DIAGNOSIS.md. The same
``SCENARIOS`` drive ``tests/lab/test_lab_faults_matrix.py``, so the table and the tests
cannot drift apart.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.lab import agents, faults
from agent.lab.agents import LEVELS, RESPONDER_PORT
from agent.lab.lab import Lab
from agent.model import NaclEntry, Rule, SecurityGroup, Topology, stable_id
from agent.sources.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
MULTI_AZ = REPO / "configs" / "lab" / "multi-az.yaml"
DOC = REPO / "docs" / "DIAGNOSIS.md"
BEGIN, END = "<!-- accuracy-table:begin -->", "<!-- accuracy-table:end -->"

#: probe settings for the matrix: a dropped SYN costs one timeout, no retry
PROBE_TIMEOUT_S = 0.5
PROBE_RETRIES = 0
#: the lab's health checker, faster than its default so health flips in well under a second
HEALTH_INTERVAL_S = 0.25
HEALTH_WAIT_S = 6.0

C1, C2 = "client-1/apne1-az4/80", "client-2/apne1-az4/80"


@dataclass(frozen=True)
class Expect:
    """The truth for one path."""

    status: str  # pass | fail | degraded
    blocked_at: str | None
    stage: str


PASS = Expect("pass", None, "pass")


def fail(control: str, stage: str = "forward") -> Expect:
    return Expect("fail", control, stage)


@dataclass(frozen=True)
class Scenario:
    number: int
    title: str
    #: edits a deep copy of the lab's topology (None: no edit)
    edit: Callable[[Topology], None] | None
    #: path id -> truth (every path of the lab's clients)
    expect: dict[str, Expect]
    #: "reference" or "multi-az"
    lab: str = "reference"
    #: instance name -> health state to wait for after the edit ("*" = every target)
    health: dict[str, str] = field(default_factory=dict)
    #: stop the provider agents for this scenario
    agents_down: bool = False
    recreate_endpoints: bool = False


# --- edits the FAULTS table does not have ----------------------------------------------------


def _fault(control: str, client: str | None = None) -> Callable[[Topology], None]:
    def edit(t: Topology) -> None:
        fault = faults.get(control)
        fault.edit(t, faults.affected_clients(t, control, client))

    return edit


def _sg_of(t: Topology, instance: str) -> SecurityGroup:
    inst = t.instance_by_name(instance)
    assert inst is not None, instance
    return t.security_groups[inst.sg_ids[0]]


def _egress_8080(t: Topology) -> None:
    """#2: client-2's egress rule to the endpoint allows 8080 instead of 80."""
    for r in _sg_of(t, "client-2").egress():
        if r.covers_port(80) and r.protocol != "-1":
            r.from_port = r.to_port = 8080


def _endpoint_wrong_cidr(t: Topology) -> None:
    """#4: the endpoint SG allows client-2 by a CIDR that is not client-2's subnet."""
    client_sg = _sg_of(t, "client-2").id
    for ep in t.endpoints.values():
        for sg_id in ep.sg_ids:
            for r in t.security_groups[sg_id].ingress():
                if r.sg_ref == client_sg and r.covers_port(80):
                    r.sg_ref = None
                    r.cidrs = ("10.2.2.0/24",)
                    r.description = "a wrong CIDR for client-2 (its subnet is 10.2.1.0/24)"


def _rejected(t: Topology) -> None:
    """#6: the provider rejected the endpoint connection."""
    for ep in t.endpoints.values():
        svc = t.endpoint_services.get(ep.service_id)
        if svc is not None:
            svc.acceptance_required = True
        ep.state = "rejected"


def _enforce_off(t: Topology) -> None:
    """#9: #8's mistake, with the NLB not enforcing its SG on PrivateLink traffic."""
    _fault("nlb-sg-ingress")(t)
    for nlb in t.nlbs.values():
        nlb.enforce_sg_inbound_on_privatelink = False


def _health_port_not_in_nlb_egress(t: Topology) -> None:
    """#11: health checks on 8080 (the targets listen, their SG allows the NLB), but the NLB
    SG egress allows only the traffic port 80: every target unhealthy -> the NLB fails open."""
    nlb_sgs = {sg for nlb in t.nlbs.values() for sg in nlb.sg_ids or []}
    for tg in t.target_groups.values():
        if tg.port != RESPONDER_PORT:
            tg.health_check.port = 8080
    for inst in t.targets():
        inst.services = sorted({*inst.services, 8080})
        sg = t.security_groups[inst.sg_ids[0]]
        if not any(r.direction == "ingress" and r.covers_port(8080) for r in sg.rules):
            sg.rules.append(
                Rule("server-health-from-nlb", "ingress", "tcp", 8080, 8080, sg_ref=min(nlb_sgs))
            )


def _one_target_sg_broken(t: Topology) -> None:
    """#13: server-2 gets an SG of its own that lets the clients in instead of the NLB; the NLB
    SG egress reaches it (so ⑤ on server-2 is the only fault): server-2 unhealthy -> degraded."""
    server2 = t.instance_by_name("server-2")
    assert server2 is not None
    old = t.security_groups[server2.sg_ids[0]]
    client_cidrs = tuple(sorted({t.subnets[c.subnet_id].cidr for c in t.clients()}))
    sg = SecurityGroup(
        id=stable_id("sg", "server-2-own"),
        name="server-2",
        account=old.account,
        vpc_id=old.vpc_id,
        description="server-2 only",
        rules=[
            Rule("server-2-from-clients", "ingress", "tcp", 80, 80, cidrs=client_cidrs),
            *[copy.deepcopy(r) for r in old.ingress() if r.covers_port(RESPONDER_PORT)],
            *[copy.deepcopy(r) for r in old.egress()],
        ],
    )
    t.security_groups[sg.id] = sg
    server2.sg_ids = [sg.id]
    for nlb in t.nlbs.values():
        for sg_id in nlb.sg_ids or []:
            t.security_groups[sg_id].rules.append(
                Rule("nlb-egress-server-2", "egress", "tcp", 80, 80, sg_ref=sg.id)
            )
            t.security_groups[sg_id].rules.append(
                Rule(
                    "nlb-egress-server-2-9721",
                    "egress",
                    "tcp",
                    RESPONDER_PORT,
                    RESPONDER_PORT,
                    sg_ref=sg.id,
                )
            )


def _own_nacl(t: Topology, instance: str, entries: list[NaclEntry]) -> None:
    inst = t.instance_by_name(instance)
    assert inst is not None
    nacl = faults._own_nacl(t, inst.subnet_id, "restricted")
    nacl.entries = entries


def _client_nacl_no_ephemeral_in(t: Topology) -> None:
    """#15: client-2's subnet NACL allows inbound 0-1023 only: replies to ephemeral ports die."""
    _own_nacl(
        t,
        "client-2",
        [
            NaclEntry(100, True, "-1", "allow", "0.0.0.0/0"),
            NaclEntry(100, False, "tcp", "allow", "0.0.0.0/0", 0, 1023),
        ],
    )


def _target_nacl_no_ephemeral_out(t: Topology) -> None:
    """#16: the target subnet's NACL has no outbound 1024-65535 (only 0-1023)."""
    for name in ("server-1", "server-2"):
        _own_nacl(
            t,
            name,
            [
                NaclEntry(100, False, "-1", "allow", "0.0.0.0/0"),
                NaclEntry(100, True, "tcp", "allow", "0.0.0.0/0", 0, 1023),
            ],
        )


# --- the matrix -------------------------------------------------------------------------------

ALL_UNHEALTHY = {"*": "unhealthy"}

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        1,
        "client-2's SG egress removed (①)",
        _fault("client-sg-egress", "client-2"),
        {C1: PASS, C2: fail("client-sg-egress")},
    ),
    Scenario(
        2,
        "client SG egress allows 8080 instead of 80 (①)",
        _egress_8080,
        {C1: PASS, C2: fail("client-sg-egress")},
    ),
    Scenario(
        3,
        "endpoint SG lacks client-1's SG (②, client-1 only)",
        _fault("endpoint-sg-ingress", "client-1"),
        {C1: fail("endpoint-sg-ingress"), C2: PASS},
    ),
    Scenario(
        4,
        "endpoint SG allows client-2 by a wrong CIDR (②)",
        _endpoint_wrong_cidr,
        {C1: PASS, C2: fail("endpoint-sg-ingress")},
    ),
    Scenario(
        5,
        "endpoint connection pendingAcceptance (③ acceptance)",
        _fault("endpoint-acceptance"),
        {C1: fail("endpoint-acceptance", "endpoint"), C2: fail("endpoint-acceptance", "endpoint")},
    ),
    Scenario(
        6,
        "endpoint connection rejected (③ acceptance)",
        _rejected,
        {C1: fail("endpoint-acceptance", "endpoint"), C2: fail("endpoint-acceptance", "endpoint")},
    ),
    Scenario(
        7,
        "consumer principal not allowed: the endpoint was never created (③ principal)",
        _fault("service-principal"),
        # the name does not resolve, but ③ is the endpoint hop (stage order: docs/DIAGNOSIS.md)
        {C1: fail("service-principal", "endpoint"), C2: fail("service-principal", "endpoint")},
        recreate_endpoints=True,
    ),
    Scenario(
        8,
        "NLB SG allows the endpoint subnet instead of the client IPs (④ ingress)",
        _fault("nlb-sg-ingress"),
        {C1: fail("nlb-sg-ingress"), C2: fail("nlb-sg-ingress")},
    ),
    Scenario(
        9,
        "the same, enforce flag off -> pass",
        _enforce_off,
        {C1: PASS, C2: PASS},
    ),
    Scenario(
        10,
        "NLB SG egress lacks the target port (④ egress)",
        _fault("nlb-sg-egress"),
        {C1: fail("nlb-sg-egress"), C2: fail("nlb-sg-egress")},
        health=ALL_UNHEALTHY,
    ),
    Scenario(
        11,
        "NLB SG egress allows the traffic port, not the health-check port -> fail open",
        _health_port_not_in_nlb_egress,
        {
            C1: Expect("degraded", "nlb-sg-egress", "pass"),
            C2: Expect("degraded", "nlb-sg-egress", "pass"),
        },
        health=ALL_UNHEALTHY,
    ),
    Scenario(
        12,
        "target SG allows the client CIDRs instead of the NLB (⑤)",
        _fault("target-sg-ingress"),
        {C1: fail("target-sg-ingress"), C2: fail("target-sg-ingress")},
        health=ALL_UNHEALTHY,
    ),
    Scenario(
        13,
        "target SG broken on one of two targets -> degraded (⑤)",
        _one_target_sg_broken,
        {
            C1: Expect("degraded", "target-sg-ingress", "pass"),
            C2: Expect("degraded", "target-sg-ingress", "pass"),
        },
        health={"server-1": "healthy", "server-2": "unhealthy"},
    ),
    Scenario(
        14,
        "client subnet NACL denies outbound 80 (client-nacl)",
        _fault("client-nacl", "client-2"),
        {C1: PASS, C2: fail("client-nacl")},
    ),
    Scenario(
        15,
        "client subnet NACL without inbound ephemeral ports (client-nacl, return)",
        _client_nacl_no_ephemeral_in,
        {C1: PASS, C2: fail("client-nacl", "return")},
    ),
    Scenario(
        16,
        "target subnet NACL without outbound 1024-65535 (provider-nacl, return)",
        _target_nacl_no_ephemeral_out,
        {C1: fail("provider-nacl", "return"), C2: fail("provider-nacl", "return")},
    ),
    Scenario(
        17,
        "endpoint name not resolvable in client-2's VPC (dns)",
        _fault("dns", "client-2"),
        {C1: PASS, C2: fail("dns", "dns")},
    ),
    Scenario(
        18,
        "no NLB listener on the port (nlb-listener)",
        _fault("nlb-listener"),
        {C1: fail("nlb-listener"), C2: fail("nlb-listener")},
    ),
    Scenario(
        19,
        "target service stopped (target-service, not an access control)",
        _fault("target-service"),
        {C1: fail("target-service", "service"), C2: fail("target-service", "service")},
        health=ALL_UNHEALTHY,
    ),
    Scenario(
        20,
        "multi-AZ, cross-zone off, no targets in one AZ (target-health, that AZ only)",
        None,
        {
            "client-2/apne1-az1/80": fail("target-health"),
            "client-2/apne1-az4/80": PASS,
        },
        lab="multi-az",
    ),
    Scenario(21, "healthy baseline: nothing blamed", None, {C1: PASS, C2: PASS}),
    Scenario(
        22,
        "provider agent down (NLB SG ingress broken): keep the stage, blame nothing unseen",
        _fault("nlb-sg-ingress"),
        {C1: fail("nlb-sg-ingress"), C2: fail("nlb-sg-ingress")},
        agents_down=True,
    ),
)


# --- running ----------------------------------------------------------------------------------


def fast_health(topology: Topology) -> Topology:
    """The lab's health checker sped up (lab-only setting; AWS's minimum is 5 s)."""
    topology.lab.health_check_interval_s = HEALTH_INTERVAL_S
    topology.lab.health_check_threshold = 2
    return topology


def lab_topology(kind: str) -> Topology:
    return fast_health(load_topology(MULTI_AZ if kind == "multi-az" else None))


def _health_ok(lab: Lab, want: dict[str, str]) -> Callable[[dict], bool]:
    """The service's target groups reach ``want`` (the responder port's group is the
    evidence channel's, not the scenario's)."""
    topo = lab.topology
    names = {i.id: i.name for i in topo.instances.values()}
    responder = {k for k, tg in topo.target_groups.items() if tg.port == RESPONDER_PORT}

    def ok(health: dict[tuple[str, str], str]) -> bool:
        states = {
            names.get(iid, iid): s
            for (tg, iid), s in health.items()
            if s != "unused" and tg not in responder
        }
        if not states:
            return False
        if "*" in want:
            return set(states.values()) == {want["*"]}
        return all(states.get(n) == s for n, s in want.items())

    return ok


def wait_healthy(lab: Lab) -> bool:
    return lab.wait_health(_health_ok(lab, {"*": "healthy"}), timeout=HEALTH_WAIT_S)


def run_scenario(lab: Lab, scenario: Scenario) -> dict[str, dict[str, dict]]:
    """Apply the scenario, run every client's check; level -> path id -> verdict JSON.

    The lab is left broken: the caller restores it (``restore_scenario``).
    """
    if scenario.edit is not None:
        topo = lab.topology
        scenario.edit(topo)
        lab.apply(topo, recreate_endpoints=scenario.recreate_endpoints)
    if scenario.health:
        lab.wait_health(_health_ok(lab, scenario.health), timeout=HEALTH_WAIT_S)
    if scenario.agents_down:
        agents.stop_agents(lab)
    answers = agents.check_answers(
        lab, levels=LEVELS, timeout=PROBE_TIMEOUT_S, retries=PROBE_RETRIES
    )
    out: dict[str, dict[str, dict]] = {lv: {} for lv in LEVELS}
    channel = f"/{RESPONDER_PORT}"
    for answer in answers.values():
        for v in answer["check"]["verdicts"]:
            if not v["path"].endswith(channel):
                out["endpoint"][v["path"]] = v
        for lv, diagnosis in answer["levels"].items():
            for v in diagnosis["verdicts"]:
                if not v["path"].endswith(channel):
                    out[lv][v["path"]] = v
    return out


def names_cut(verdict: dict) -> bool:
    """Does the verdict say the evidence channel itself was cut?"""
    return any("evidence channel cut" in line for line in verdict.get("evidence", []))


def channel_cut(verdicts: dict[str, dict]) -> bool:
    """Was the evidence channel cut in this scenario (some verdict says so)?"""
    return any(names_cut(v) for v in verdicts.values())


def restore_scenario(lab: Lab, scenario: Scenario) -> None:
    if scenario.agents_down:
        agents.start_agents(lab, lab.progress)
    if scenario.edit is not None:
        lab.restore()
        wait_healthy(lab)


@dataclass
class Score:
    exact: bool
    stage: bool
    false_blame: bool


def score(scenario: Scenario, verdicts: dict[str, dict]) -> Score:
    exact = stage = True
    false_blame = False
    for path, truth in scenario.expect.items():
        v = verdicts.get(path)
        if v is None:
            exact = stage = False
            continue
        exact &= v["status"] == truth.status and v["blocked_at"] == truth.blocked_at
        stage &= v["stage"] == truth.stage
        blamed = v["blocked_at"]
        false_blame |= blamed not in (None, "unknown", truth.blocked_at)
    return Score(exact, stage, false_blame)


@contextlib.contextmanager
def matrix_lab(kind: str) -> Iterator[Lab]:
    lab = Lab(f"da{secrets.token_hex(4)}")
    try:
        lab.up(lab_topology(kind))
        agents.start_agents(lab, lab.progress)
        wait_healthy(lab)
        yield lab
    finally:
        lab.down()


def run_matrix() -> dict[int, dict[str, dict[str, dict]]]:
    """Scenario number -> level -> path -> verdict, one lab per topology."""
    results: dict[int, dict[str, dict[str, dict]]] = {}
    for kind in ("reference", "multi-az"):
        with matrix_lab(kind) as lab:
            for s in (s for s in SCENARIOS if s.lab == kind):
                t0 = time.monotonic()
                try:
                    results[s.number] = run_scenario(lab, s)
                finally:
                    restore_scenario(lab, s)
                print(f"#{s.number:2} {time.monotonic() - t0:4.1f} s  {s.title}", file=sys.stderr)
    return dict(sorted(results.items()))


def _cell(v: dict | None) -> str:
    if v is None:
        return "(no verdict)"
    control = v["blocked_at"] or "-"
    return f"{v['status']} · {v['stage']} · {control}"


def markdown(results: dict[int, dict[str, dict[str, dict]]], seconds: float) -> str:
    by_number = {s.number: s for s in SCENARIOS}
    n = len(results)
    lines = [
        "| evidence | exact control | right stage | false blame |",
        "|---|---|---|---|",
    ]
    names = {
        "endpoint": "both agents, evidence through the endpoint",
        "side-channel": "reference: evidence handed over + both snapshots",
        "client": "client packets + consumer snapshot",
        "packets": "client packets only",
    }
    for lv in LEVELS:
        scores = [score(by_number[k], r[lv]) for k, r in results.items()]
        exact = sum(s.exact for s in scores)
        stage = sum(s.stage for s in scores)
        blame = sum(s.false_blame for s in scores)
        lines.append(f"| {names[lv]} | {exact}/{n} | {stage}/{n} | {blame}/{n} |")
    cut = [k for k, r in results.items() if channel_cut(r["endpoint"])]
    kept = [k for k in cut if score(by_number[k], results[k]["endpoint"]).stage]
    uncut = [k for k in results if k not in cut]
    uncut_exact = sum(score(by_number[k], results[k]["endpoint"]).exact for k in uncut)
    lines += [
        "",
        f"Through the endpoint: {uncut_exact}/{len(uncut)} exact where the evidence channel "
        f"works; the channel is cut in {len(cut)} scenario(s) "
        f"({', '.join(f'#{k}' for k in cut) or 'none'}), whose verdicts name the cut and keep "
        f"the right stage in {len(kept)}/{len(cut)}.",
        "",
        f"Per scenario (status · stage · blocked_at; measured in {seconds:.0f} s):",
        "",
        "| # | scenario | path | truth | " + " | ".join(LEVELS) + " |",
        "|---|---|---|---|" + "---|" * len(LEVELS),
    ]
    for k, r in results.items():
        s = by_number[k]
        for path, truth in s.expect.items():
            want = f"{truth.status} · {truth.stage} · {truth.blocked_at or '-'}"
            cells = []
            for lv in LEVELS:
                v = r[lv].get(path)
                mark = ""
                if v is not None and v["blocked_at"] not in (None, "unknown", truth.blocked_at):
                    mark = " ✗"
                cells.append(_cell(v) + mark)
            lines.append(f"| {k} | {s.title} | `{path}` | {want} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_doc(table: str, doc: Path = DOC) -> None:
    text = doc.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", metavar="DOC", nargs="?", const=str(DOC), help="update DOC")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("diagnosis_accuracy: needs root (it builds labs)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    results = run_matrix()
    table = markdown(results, time.monotonic() - t0)
    print(table)
    if args.write:
        write_doc(table, Path(args.write))
        print(f"updated {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
