"""Lab fixtures: ``reference_lab`` (one per module) and ``restore_after`` (see labfixtures)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from labfixtures import lab_up

from agent.lab.lab import Lab
from agent.sources.topology import load_topology


@pytest.fixture(scope="module")
def reference_lab() -> Iterator[Lab]:
    """The reference topology, one lab per test module, always torn down and checked."""
    with lab_up(load_topology(), "ref") as lab:
        yield lab


@pytest.fixture
def restore_after(reference_lab: Lab) -> Iterator[Lab]:
    """The reference lab, restored to its ``lab up`` topology after the test."""
    try:
        yield reference_lab
    finally:
        reference_lab.restore()
