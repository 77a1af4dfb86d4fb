"""Static evaluation of a Topology for one flow: ``sg`` and ``nacl`` are the pure evaluators,
``flows`` finds the flow (client, endpoint ENI, port) a user or a probed path names, ``path``
walks the PrivateLink path hop by hop (``consumer`` and ``provider`` sides over ``hops``) into
``HopFinding``s for ``agent.diagnose.verdict``."""

from __future__ import annotations

from agent.analyze.flows import Flow, flows, path_flow
from agent.analyze.nacl import NaclDecision, evaluate_nacl, evaluate_nacl_range
from agent.analyze.path import analyze_flow, walk
from agent.analyze.sg import SgDecision, evaluate_sg
from agent.results import path_id

__all__ = [
    "Flow",
    "NaclDecision",
    "SgDecision",
    "analyze_flow",
    "evaluate_nacl",
    "evaluate_nacl_range",
    "evaluate_sg",
    "flows",
    "path_flow",
    "path_id",
    "walk",
]
