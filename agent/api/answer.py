"""The blackbox-compatible ``/probe`` answer, independent of the HTTP layer that carries it.

The aiohttp route (``agent.api.server``) answers ``/probe`` through ``answer_probe`` here. This
module is a leaf of ``agent.api``: it knows nothing of aiohttp's app or of connections, and
reads what it needs of the server's state through the small ``ProbeDeps`` protocol
(``agent.api.server.ApiDeps`` satisfies it), so it is tested without a server.

blackbox_exporter's rules: a failed probe is a *successful* request whose body says
``probe_success 0`` (plus plprobe's ``plprobe_probe_result{result}`` and, when a verdict is
available, ``plprobe_probe_blocked{control}``); only a bad request (no target, a target the probe
function cannot parse, an unknown module — also counted) is an HTTP error. The deadline is the
scraper's ``X-Prometheus-Scrape-Timeout-Seconds`` minus an offset, or the module's timeout if
that is smaller.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from agent.controls import IDS as CONTROL_IDS
from agent.errors import PlprobeError
from agent.metrics import Metrics
from agent.results import OUTCOMES, PROBE_KINDS, ProbeResult, Verdict

__all__ = [
    "MAX_TARGET_LEN",
    "SCRAPE_TIMEOUT_HEADER",
    "ProbeAnswer",
    "ProbeDeps",
    "ProbeFn",
    "ProbeModule",
    "ProbeReport",
    "ProbeSettings",
    "answer_probe",
    "probe_content_type",
    "probe_timeout",
    "render_probe",
]

log = logging.getLogger(__name__)

MAX_TARGET_LEN = 512
#: the header in which Prometheus sends its scrape timeout (blackbox_exporter reads the same)
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


@dataclass(frozen=True)
class ProbeModule:
    """A named probe setting for ``/probe?module=NAME`` (blackbox's modules)."""

    name: str
    prober: str  # a PROBE_KINDS value
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.prober not in PROBE_KINDS:
            raise ValueError(f"module {self.name!r}: prober {self.prober!r} not in {PROBE_KINDS}")
        if not self.timeout_s > 0:
            raise ValueError(f"module {self.name!r}: timeout_s must be positive")


@dataclass(frozen=True)
class ProbeReport:
    """What a probe function returns for ``/probe``: the result, and a verdict if it has one."""

    result: ProbeResult
    verdict: Verdict | None = None


#: ``probe_fn(target, module, timeout_s)``; raises ``ValueError`` for a target it cannot parse
ProbeFn = Callable[[str, ProbeModule, float], Awaitable[ProbeReport]]


class ProbeSettings(Protocol):
    """The part of the API configuration ``/probe`` reads (``ApiConfig`` has it)."""

    @property
    def modules(self) -> Mapping[str, ProbeModule]: ...

    @property
    def scrape_timeout_offset_s(self) -> float: ...


class ProbeDeps(Protocol):
    """What ``answer_probe`` reads at request time from the server's mutable holder.

    A protocol rather than ``ApiDeps`` itself: that holder belongs to the aiohttp server
    module, and this one must not import it (both carriers of ``/probe`` build on this one).
    Read per request, because the daemon swaps ``config`` on reload.
    """

    @property
    def config(self) -> ProbeSettings: ...

    @property
    def metrics(self) -> Metrics | None: ...

    @property
    def probe_fn(self) -> ProbeFn | None: ...


def probe_timeout(header: str | None, module: ProbeModule, offset_s: float) -> float:
    """blackbox_exporter's rule: scrape timeout minus offset, unless the module's is smaller.

    A missing header, or one that leaves no time after the offset, gives the module's timeout.
    ``ValueError`` for a header that is not a number.
    """
    if not header:
        return module.timeout_s
    try:
        scrape = float(header)
    except ValueError:
        raise ValueError(f"{SCRAPE_TIMEOUT_HEADER} is not a number: {header!r}") from None
    if not math.isfinite(scrape):
        raise ValueError(f"{SCRAPE_TIMEOUT_HEADER} is not finite: {header!r}")
    budget = scrape - offset_s
    if budget <= 0:
        return module.timeout_s
    return min(budget, module.timeout_s)


def _escape_label(value: str) -> str:
    """Label-value escaping of both text formats: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, help_text: str) -> str:
    help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n"


_SUCCESS_HEAD = _family("probe_success", "Whether the probe succeeded.")
_DURATION_HEAD = _family("probe_duration_seconds", "How long the probe took.")
_RESULT_HEAD = _family("plprobe_probe_result", "The probe's client-side result, one-hot.")
_BLOCKED_HEAD = _family("plprobe_probe_blocked", "1 for the control that blocked the probed path.")

#: success -> the probe_success family plus the head of probe_duration_seconds' sample line
_PROBE_HEAD: dict[bool, str] = {
    ok: f"{_SUCCESS_HEAD}probe_success {1.0 if ok else 0.0}\n"
    f"{_DURATION_HEAD}probe_duration_seconds "
    for ok in (False, True)
}
#: outcome -> the one-hot plprobe_probe_result family (every outcome, in OUTCOMES' order)
_PROBE_RESULT: dict[str, str] = {
    outcome: _RESULT_HEAD
    + "".join(
        f'plprobe_probe_result{{result="{_escape_label(v)}"}} {1.0 if v == outcome else 0.0}\n'
        for v in OUTCOMES
    )
    for outcome in OUTCOMES
}
#: control -> the plprobe_probe_blocked family naming it
_PROBE_BLOCKED: dict[str, str] = {
    control: f'{_BLOCKED_HEAD}plprobe_probe_blocked{{control="{_escape_label(control)}"}} 1.0\n'
    for control in CONTROL_IDS
}
_OPENMETRICS_EOF = "# EOF\n"


def render_probe(
    success: bool, duration_s: float, outcome: str, control: str | None, *, openmetrics: bool
) -> bytes:
    """The ``/probe`` answer, from text precomputed at import.

    Why not a prometheus-client registry: building one with its gauges and running its
    exposition cost more CPU per request than the probe itself (docs/BENCHMARKS.md). Every
    label value comes from a fixed set (OUTCOMES, the control catalogue), so each family's
    text is built (and escaped) once; only the duration is formatted per request, with
    prometheus-client's own float formatting. tests/api/test_api.py holds the output byte-equal
    to prometheus-client's encoders for every outcome and control, in both formats.
    """
    parts = [_PROBE_HEAD[success], floatToGoString(duration_s), "\n", _PROBE_RESULT[outcome]]
    if control is not None:
        parts.append(_PROBE_BLOCKED[control])
    if openmetrics:
        parts.append(_OPENMETRICS_EOF)
    return "".join(parts).encode()


@functools.lru_cache(maxsize=32)
def probe_content_type(accept: str) -> tuple[bool, str]:
    """(openmetrics?, Content-Type) for an Accept header, as prometheus-client negotiates.

    Cached: a scraper sends the same Accept header on every request, and the set of
    distinct headers is small (bounded by the cache either way).
    """
    _, content_type = choose_encoder(accept)
    return content_type.startswith("application/openmetrics-text"), content_type


_TEXT = "text/plain; charset=utf-8"

#: (HTTP status, Content-Type, body) of a ``/probe`` answer
ProbeAnswer = tuple[int, str, bytes]


def _text(status: int, message: str) -> ProbeAnswer:
    return status, _TEXT, message.encode()


async def answer_probe(
    deps: ProbeDeps, target: str, module_name: str, scrape_timeout: str | None, accept: str
) -> ProbeAnswer:
    """One ``/probe`` request, independent of the HTTP layer that carries it."""
    config = deps.config
    if not target:
        return _text(400, "target parameter is missing\n")
    if len(target) > MAX_TARGET_LEN:
        return _text(400, "target parameter is too long\n")
    module = config.modules.get(module_name)
    if module is None:
        if deps.metrics is not None:
            deps.metrics.probe_module_unknown.inc()
        return _text(400, f"unknown module {module_name!r}\n")
    probe_fn = deps.probe_fn
    if probe_fn is None:
        return _text(503, "this agent does not probe (provider role)\n")
    try:
        timeout_s = probe_timeout(scrape_timeout, module, config.scrape_timeout_offset_s)
    except ValueError as exc:
        return _text(400, f"{exc}\n")

    started = time.perf_counter()
    verdict: Verdict | None = None
    try:
        async with asyncio.timeout(timeout_s):
            report = await probe_fn(target, module, timeout_s)
        outcome = report.result.outcome if report.result.outcome in OUTCOMES else "error"
        verdict = report.verdict
    except TimeoutError:
        outcome = "timeout"
    except ValueError as exc:
        return _text(400, f"bad target {target!r}: {exc}\n")
    except PlprobeError as exc:
        log.info("probe of %s (%s) could not run: %s", target, module_name, exc)
        outcome = "error"
    except Exception:  # a failed probe is a successful request (blackbox_exporter)
        log.exception("probe of %s (%s) failed unexpectedly", target, module_name)
        outcome = "error"
    duration = time.perf_counter() - started
    control: str | None = None
    if verdict is not None and verdict.status == "fail":
        control = verdict.blocked_at if verdict.blocked_at in _PROBE_BLOCKED else "unknown"
    openmetrics, content_type = probe_content_type(accept)
    body = render_probe(
        outcome == "ok" and control is None, duration, outcome, control, openmetrics=openmetrics
    )
    return 200, content_type, body
