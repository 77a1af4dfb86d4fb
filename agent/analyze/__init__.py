"""Static evaluation of a Topology for one flow: ``sg`` and ``nacl`` are the pure evaluators,
``path`` walks the PrivateLink path hop by hop into ``HopFinding``s for
``agent.diagnose.verdict``."""

from __future__ import annotations

from agent.analyze.nacl import NaclDecision, evaluate_nacl, evaluate_nacl_range
from agent.analyze.path import Flow, analyze_flow, flows, path_id, walk
from agent.analyze.sg import SgDecision, evaluate_sg

__all__ = [
    "Flow",
    "NaclDecision",
    "SgDecision",
    "analyze_flow",
    "evaluate_nacl",
    "evaluate_nacl_range",
    "evaluate_sg",
    "flows",
    "path_id",
    "walk",
]
