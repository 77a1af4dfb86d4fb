"""External tools for tests (promtool, hadolint, …): found, or skipped — or failed in CI.

``PLPROBE_REQUIRE_TOOLS=1`` (set by ``.ci/run``) turns a missing tool into a failure, so a
broken CI image cannot pass by skipping. Also the metric names a Prometheus file may use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.metrics import make_metrics

PROM = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


def require_tool(name: str) -> str:
    """The tool's path; skip when missing, unless CI demands it (PLPROBE_REQUIRE_TOOLS=1)."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None
    )
    if found:
        return found
    if os.environ.get("PLPROBE_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{name} is required (PLPROBE_REQUIRE_TOOLS=1) but not installed")
    pytest.skip(f"{name} not installed")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` run in deploy/prometheus (where the rule files name each other)."""
    return subprocess.run(
        [require_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=PROM,
    )


def registered_names() -> set[str]:
    """Every series name make_metrics can expose (with counter/histogram suffixes)."""
    names: set[str] = set()
    for fam in make_metrics(CollectorRegistry()).registry.collect():
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(fam.name)
    return names
