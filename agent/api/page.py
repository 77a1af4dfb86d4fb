"""The agent's status page (``GET /``): what a person opens first when a path breaks.

Like blackbox_exporter's own page of recent probes, but with the diagnosis on top: the path
matrix (client × AZ × port), each path's verdict with the blocking control, the rule that
blocks and the fix, how fresh the evidence is, then the last rounds with per-probe detail
(what was sent, what came back, what the target saw).

Why it looks like this:

* **Server-rendered, no JavaScript.** The agent already holds every value; a page of plain
  HTML needs no build step, works in any browser and in ``curl``, and cannot run code.
  It refreshes itself with ``<meta http-equiv="refresh">``.
* **Every value escaped.** Path ids, rules, fixes and DNS names come from configuration,
  AWS and the network; each one goes through ``_e`` (``html.escape`` with quotes) and
  nothing else reaches the markup. CSS class names come from fixed tables, never from data.
* **Strict Content-Security-Policy.** ``default-src 'none'``: no script, image, frame or
  connection at all; the one inline stylesheet is allowed by its SHA-256 hash
  (``STYLE_HASH``), so an injected ``<style>`` or ``<script>`` would not run even if escaping
  failed.
* **Bounded.** The matrix has one row per path; the rounds section shows at most
  ``MAX_PROBE_ROWS`` probes, newest round first, so the page stays small with many paths.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.api.history import RoundRecord
from agent.controls import BY_ID as CONTROLS
from agent.results import HopFinding, Observation, PathEvidence, ProbeResult, Verdict

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "MAX_PROBE_ROWS",
    "REFRESH_S",
    "STALE_AFTER_S",
    "STYLE",
    "STYLE_HASH",
    "PageData",
    "page_headers",
    "render_page",
]

#: seconds between the browser's automatic reloads
REFRESH_S = 10
#: evidence older than this is flagged stale (a schedule stopped, or rounds are overrunning)
STALE_AFTER_S = 180.0
#: probe rows in the "recent rounds" section, all rounds together
MAX_PROBE_ROWS = 120

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2rem auto;max-width:1400px;padding:0 1rem;
color:#1b1f24;background:#fff}
h1{font-size:1.3rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
h3{font-size:1rem;margin:1rem 0 .3rem}
.meta{color:#57606a;margin:0 0 1rem}
table{border-collapse:collapse;width:100%;margin:.3rem 0 1rem}table.m{width:auto}
th,td{border:1px solid #d0d7de;padding:.3rem .45rem;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
td.grid{text-align:center;min-width:7rem}
code{font:12px/1.3 ui-monospace,monospace;overflow-wrap:break-word}
.pass{background:#dafbe1}.fail{background:#ffebe9}.degraded{background:#fff8c5}
.unknown{background:#eaeef2}.stale{color:#cf222e;font-weight:600}
.st{font-weight:700;text-transform:uppercase}
.small{font-size:12px;color:#57606a}
.fix{max-width:32rem}
""".strip()

STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()

CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src '{STYLE_HASH}'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

#: status -> CSS class: fixed, so data never chooses a class name
_STATUS_CLASS = {"pass": "pass", "fail": "fail", "degraded": "degraded", "unknown": "unknown"}
_OUTCOME_CLASS = {"ok": "pass", "refused": "fail", "timeout": "fail", "icmp_unreachable": "fail"}
_SEEN_CLASS = {"yes": "pass", "no": "fail", "unknown": "unknown"}


def page_headers() -> dict[str, str]:
    """Headers of the page: its CSP and the usual hardening (nothing cached, not framed)."""
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }


@dataclass
class PageData:
    """What the page shows; the API server fills it from its ``ApiDeps`` per request."""

    agent_id: str
    role: str  # "client" or "provider"
    ready: bool
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    evidence: Mapping[str, PathEvidence] = field(default_factory=dict)
    results: Mapping[str, Sequence[ProbeResult]] = field(default_factory=dict)
    rounds: Sequence[RoundRecord] = ()  # newest first
    #: provider role: the most recent observations, newest first
    observations: Sequence[Observation] = ()
    observation_counters: Mapping[str, int] = field(default_factory=dict)
    started_at: float = 0.0


def _e(value: object) -> str:
    """The one way a value reaches the markup: text, HTML-escaped, quotes included."""
    if value is None:
        return ""
    return html.escape(str(value), quote=True)


def _age(now: float, then: float | None) -> str:
    if not then:
        return "never"
    s = max(0.0, now - then)
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def _split_path(path: str) -> tuple[str, str, str]:
    """``client/az/port`` -> its parts; other ids keep the whole id as the client."""
    parts = path.rsplit("/", 2)
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return path, "", ""


def _port_key(port: str) -> tuple[int, str]:
    return (int(port), port) if port.isdigit() else (1 << 30, port)


def _blocking(verdict: Verdict) -> HopFinding | None:
    """The finding that names the blocking rule: the denial of ``blocked_at``, else any."""
    denied = [f for f in verdict.findings if f.status == "denied"]
    for f in denied:
        if f.control == verdict.blocked_at:
            return f
    return denied[0] if denied else None


def _control_cell(verdict: Verdict | None) -> str:
    if verdict is None or not verdict.blocked_at:
        if verdict is not None and verdict.candidates:
            return "candidates: " + _e(", ".join(verdict.candidates))
        return "-"
    control = CONTROLS.get(verdict.blocked_at)
    title = f"<br><span class=small>{_e(control.title)}</span>" if control else ""
    return f"<code>{_e(verdict.blocked_at)}</code>{title}"


def _rule_cell(verdict: Verdict | None) -> str:
    if verdict is None:
        return "-"
    finding = _blocking(verdict)
    if finding is None:
        return _e(verdict.explanation) or "-"
    parts = [f"<code>{_e(finding.rule)}</code>"] if finding.rule else []
    if finding.resource:
        parts.append(f"<span class=small>{_e(finding.resource)}</span>")
    if finding.detail:
        parts.append(f"<span class=small>{_e(finding.detail)}</span>")
    return "<br>".join(parts)


def _freshness(now: float, verdict: Verdict | None, evidence: PathEvidence | None) -> str:
    times = [r.started_at for r in (evidence.results if evidence else []) if r.started_at]
    last = max(times, default=0.0) or (verdict.checked_at if verdict else 0.0)
    text = _e(_age(now, last))
    if not last or now - last > STALE_AFTER_S:
        return f"<span class=stale>{text} (stale)</span>"
    if evidence is not None and evidence.provider_error:
        return f"{text}<br><span class=small>provider: {_e(evidence.provider_error)}</span>"
    return text


def _status_badge(status: str) -> str:
    css = _STATUS_CLASS.get(status, "unknown")
    return f'<span class="st {css}">{_e(status)}</span>'


def _matrix(data: PageData, now: float) -> list[str]:
    paths = sorted(
        set(data.verdicts) | set(data.evidence),
        key=lambda p: (_split_path(p)[0], _split_path(p)[1], _port_key(_split_path(p)[2])),
    )
    out = ["<h2>Paths</h2>"]
    if not paths:
        out.append("<p>No round has finished yet.</p>")
        return out
    # the grid: per client, AZ rows × port columns, one status per cell
    by_client: dict[str, dict[tuple[str, str], str]] = {}
    for p in paths:
        client, az, port = _split_path(p)
        by_client.setdefault(client, {})[(az, port)] = p
    for client, cells in by_client.items():
        azs = sorted({az for az, _ in cells})
        ports = sorted({port for _, port in cells}, key=_port_key)
        out.append(f"<h3>client <code>{_e(client)}</code></h3>")
        out.append("<table class=m><tr><th>AZ \\ port</th>")
        out.extend(f"<th>{_e(port)}</th>" for port in ports)
        out.append("</tr>")
        for az in azs:
            out.append(f"<tr><th>{_e(az or '-')}</th>")
            for port in ports:
                cell = cells.get((az, port))
                v = data.verdicts.get(cell) if cell else None
                if cell is None:
                    out.append("<td class=grid>-</td>")
                elif v is None:
                    out.append('<td class="grid unknown">no verdict</td>')
                else:
                    css = _STATUS_CLASS.get(v.status, "unknown")
                    blocked = f"<br><code>{_e(v.blocked_at)}</code>" if v.blocked_at else ""
                    out.append(f'<td class="grid {css}">{_e(v.status)}{blocked}</td>')
            out.append("</tr>")
        out.append("</table>")
    out.append("<h2>Verdicts</h2>")
    out.append(
        "<table><tr><th>client</th><th>AZ</th><th>port</th><th>verdict</th><th>stage</th>"
        "<th>blocking control</th><th>rule</th><th>fix</th><th>at the target</th>"
        "<th>evidence</th></tr>"
    )
    for p in paths:
        client, az, port = _split_path(p)
        v = data.verdicts.get(p)
        ev = data.evidence.get(p)
        status = v.status if v else "unknown"
        seen = ev.seen_at_target if ev else "unknown"
        seen_css = _SEEN_CLASS.get(seen, "unknown")
        source = f"<br><span class=small>from {_e(ev.source_at_target)}</span>" if ev else ""
        if ev is None or not ev.source_at_target:
            source = ""
        out.append(
            f'<tr id="path-{_e(p)}"><td><code>{_e(client)}</code></td><td>{_e(az)}</td>'
            f"<td>{_e(port)}</td><td>{_status_badge(status)}"
            f"<br><span class=small>{_e(v.explanation if v else '')}</span></td>"
            f"<td>{_e(v.stage if v else '')}</td><td>{_control_cell(v)}</td>"
            f"<td>{_rule_cell(v)}</td><td class=fix>{_e(v.fix if v else '') or '-'}</td>"
            f'<td class="{seen_css}">{_e(seen)}{source}</td>'
            f"<td>{_freshness(now, v, ev)}</td></tr>"
        )
    out.append("</table>")
    return out


def _ids(result: ProbeResult) -> list[str]:
    ids = [result.probe_id] if result.probe_id else []
    extra = result.detail.get("probe_ids")
    if isinstance(extra, list):
        ids += [str(i) for i in extra if i and str(i) not in ids]
    return ids


def _matching(result: ProbeResult, observations: Iterable[Observation]) -> list[Observation]:
    """The target's observations of this probe: its tokens, or its SYN's ISN tag."""
    ids = set(_ids(result))
    isn = result.detail.get("isn")
    return [
        o
        for o in observations
        if (o.kind == "token" and o.probe_id in ids)
        or (o.kind == "syn_tag" and isinstance(isn, int) and o.isn == isn)
    ]


def _sent(result: ProbeResult) -> str:
    if result.probe == "dns":
        return f"<b>dns</b> query <code>{_e(result.detail.get('name', ''))}</code>"
    where = f"{result.target_ip or '?'}:{result.port}" if result.port else result.target_ip or ""
    parts = [f"<b>{_e(result.probe)}</b> <code>{_e(where)}</code>"]
    ids = _ids(result)
    if ids:
        parts.append(f"<span class=small>token {_e(', '.join(ids))}</span>")
    if isinstance(result.detail.get("isn"), int):
        parts.append(f"<span class=small>SYN ISN tag {_e(result.detail['isn'])}</span>")
    if result.fallback:
        parts.append(f"<span class=small>{_e(result.fallback)}</span>")
    return "<br>".join(parts)


def _came_back(result: ProbeResult) -> str:
    css = _OUTCOME_CLASS.get(result.outcome, "unknown")
    parts = [f'<span class="st {css}">{_e(result.outcome)}</span> {result.duration_s * 1e3:.1f} ms']
    if result.addresses:
        parts.append("answer " + _e(", ".join(result.addresses)))
    if result.missing:
        parts.append("missing " + _e(", ".join(result.missing)))
    if result.extra:
        parts.append("unexpected " + _e(", ".join(result.extra)))
    if result.icmp:
        parts.append(f"ICMP type {_e(result.icmp[0])} code {_e(result.icmp[1])}")
    hidden = ("probe_ids", "isn", "name") if result.probe == "dns" else ("probe_ids", "isn")
    shown = {k: v for k, v in result.detail.items() if k not in hidden}
    if shown:
        parts.append(
            "<span class=small>"
            + _e(", ".join(f"{k}={v}" for k, v in sorted(shown.items())))
            + "</span>"
        )
    if result.reply:
        reply = ", ".join(f"{k}={v}" for k, v in sorted(result.reply.items()))
        parts.append(f"<span class=small>reply: {_e(reply)}</span>")
    if result.error:
        parts.append(f"<span class=small>{_e(result.error)}</span>")
    return "<br>".join(parts)


def _target_saw(result: ProbeResult, evidence: PathEvidence) -> str:
    if result.probe == "dns":
        return '<span class="small">(DNS: not a target probe)</span>'
    seen = _matching(result, evidence.observations)
    if not seen:
        if evidence.provider_error:
            return f'<span class="unknown">unknown</span>: {_e(evidence.provider_error)}'
        return '<span class="st fail">not seen</span>'
    rows = []
    for o in seen:
        text = f"{o.target} via {o.via}: from {o.src_ip}:{o.src_port} to {o.dst_ip}:{o.dst_port}"
        if o.proxy_endpoint_id:
            text += f", PROXY v2 {o.proxy_endpoint_id} client {o.proxy_src or '?'}"
        if not o.answered:
            text += ", not answered"
        rows.append(_e(text))
    return '<span class="st pass">seen</span><br>' + "<br>".join(rows)


def _rounds(data: PageData) -> list[str]:
    out = ["<h2>Recent rounds</h2>"]
    if not data.rounds:
        out.append("<p>No round recorded yet.</p>")
        return out
    budget = MAX_PROBE_ROWS
    for rec in data.rounds:
        if budget <= 0:
            out.append(f"<p class=small>older rounds not shown (at most {MAX_PROBE_ROWS} probes)")
            break
        note = f" — provider: {_e(rec.provider_error)}" if rec.provider_error else ""
        out.append(
            f"<h3>{_e(_clock(rec.started_at))} endpoint <code>{_e(rec.endpoint)}</code> "
            f"<span class=small>({rec.duration_s:.2f} s){note}</span></h3>"
        )
        out.append(
            "<table><tr><th>path</th><th>sent</th><th>came back</th><th>the target saw</th></tr>"
        )
        for ev in rec.evidence:
            for r in ev.results:
                if budget <= 0:
                    break
                budget -= 1
                out.append(
                    f"<tr><td><code>{_e(ev.path)}</code></td><td>{_sent(r)}</td>"
                    f"<td>{_came_back(r)}</td><td>{_target_saw(r, ev)}</td></tr>"
                )
        out.append("</table>")
    return out


def _provider(data: PageData, now: float) -> list[str]:
    out = ["<h2>Probes seen at this target</h2>"]
    if data.observation_counters:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(data.observation_counters.items()))
        out.append(f"<p class=small>{_e(counts)}</p>")
    if not data.observations:
        out.append("<p>No probe has arrived yet.</p>")
        return out
    out.append(
        "<table><tr><th>seen</th><th>path</th><th>client agent</th><th>via</th>"
        "<th>from</th><th>to</th><th>PROXY v2</th></tr>"
    )
    for o in data.observations:
        proxy = f"{o.proxy_endpoint_id} {o.proxy_src or ''}" if o.proxy_endpoint_id else "-"
        out.append(
            f"<tr><td>{_e(_age(now, o.seen_at))}</td><td><code>{_e(o.path or '-')}</code></td>"
            f"<td>{_e(o.agent or '-')}</td><td>{_e(o.via)}</td>"
            f"<td>{_e(o.src_ip)}:{_e(o.src_port)}</td><td>{_e(o.dst_ip)}:{_e(o.dst_port)}</td>"
            f"<td>{_e(proxy)}</td></tr>"
        )
    out.append("</table>")
    return out


def render_page(data: PageData, *, now: float | None = None, refresh_s: int = REFRESH_S) -> str:
    """The whole page as one string (a few ms for hundreds of paths; docs/BENCHMARKS.md)."""
    now = time.time() if now is None else now
    counts: dict[str, int] = {}
    for v in data.verdicts.values():
        counts[v.status] = counts.get(v.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no verdict yet"
    title = f"plprobe {data.agent_id or data.role}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{int(refresh_s)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>plprobe agent <code>{_e(data.agent_id or '-')}</code> ({_e(data.role)})</h1>",
        f'<p class="meta">{_e(summary)} · {"ready" if data.ready else "not ready"} · '
        f"page generated {_e(_clock(now))}, refreshes every {int(refresh_s)} s · up "
        f"{_e(_age(now, data.started_at).removesuffix(' ago'))} · "
        "JSON: /v1/verdicts /v1/evidence /v1/results · /metrics</p>",
    ]
    if data.role == "provider":
        parts += _provider(data, now)
    else:
        parts += _matrix(data, now)
        parts += _rounds(data)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
