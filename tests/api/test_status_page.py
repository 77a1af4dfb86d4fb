"""The status page ``/`` (agent/api/page.py): what it shows, how it is served, and escaping."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from agent.api.history import DEFAULT_RESULTS, RoundHistory
from agent.api.page import (
    CONTENT_SECURITY_POLICY,
    MAX_PROBE_ROWS,
    STYLE,
    STYLE_HASH,
    PageData,
    render_page,
)
from agent.api.server import ApiConfig, ApiDeps, build_app
from agent.metrics import make_metrics
from agent.observe.store import ObservationStore
from agent.results import HopFinding, Observation, PathEvidence, ProbeResult, Verdict

NOW = 1_760_000_000.0
BLOCKED = "client-2/apne1-az4/80"
PASSING = "client-2/apne1-az1/80"
TOKEN = "page-token"
FIX = "add an inbound rule for tcp/80 from the endpoint's subnets to sg-0nlb"


def blocked_verdict(path: str = BLOCKED, **over: object) -> Verdict:
    values: dict[str, object] = {
        "path": path,
        "status": "fail",
        "stage": "forward",
        "blocked_at": "nlb-sg-ingress",
        "explanation": "the NLB's security group drops the endpoint's traffic",
        "fix": FIX,
        "checked_at": NOW - 5,
        "findings": [
            HopFinding(
                hop="nlb-sg-ingress",
                control="nlb-sg-ingress",
                status="denied",
                resource="sg-0nlb (nlb-1)",
                rule="no inbound rule allows tcp/80 from 10.0.1.0/24",
            )
        ],
    }
    values.update(over)
    return Verdict(**values)  # type: ignore[arg-type]


def passing_verdict(path: str = PASSING) -> Verdict:
    return Verdict(path=path, status="pass", stage="pass", blocked_at=None, checked_at=NOW - 5)


def tcp(path: str, outcome: str, probe_id: str, started: float = NOW - 6) -> ProbeResult:
    return ProbeResult(
        path=path,
        probe="tcp",
        outcome=outcome,
        probe_id=probe_id,
        started_at=started,
        duration_s=0.0021,
        target_ip="10.0.1.10",
        port=80,
    )


def seen(probe_id: str, path: str) -> Observation:
    return Observation(
        kind="token",
        target="server-1",
        seen_at=NOW - 6,
        src_ip="10.1.0.99",
        src_port=41000,
        dst_ip="10.1.0.20",
        dst_port=80,
        via="responder",
        probe_id=probe_id,
        path=path,
        agent="client-2",
    )


def evidence(path: str, result: ProbeResult, obs: list[Observation]) -> PathEvidence:
    return PathEvidence(
        path=path,
        outcome=result.outcome,
        seen_at_target="yes" if obs else "no",
        results=[result],
        observations=obs,
    )


def sample_data() -> PageData:
    ok = tcp(PASSING, "ok", "aa01")
    dropped = tcp(BLOCKED, "timeout", "bb02")
    ev = {
        PASSING: evidence(PASSING, ok, [seen("aa01", PASSING)]),
        BLOCKED: evidence(BLOCKED, dropped, []),
    }
    history = RoundHistory()
    history.record("svc", NOW - 6, NOW - 4, list(ev.values()))
    return PageData(
        agent_id="client-2",
        role="client",
        ready=True,
        verdicts={PASSING: passing_verdict(), BLOCKED: blocked_verdict()},
        evidence=ev,
        rounds=history.newest_first(),
        started_at=NOW - 600,
    )


def text_of(page: str) -> str:
    """The page as a person reads it: tags removed, whitespace collapsed, entities kept."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


# -- what it shows -----------------------------------------------------------------------


def test_a_blocked_path_shows_its_verdict_control_rule_and_fix() -> None:
    text = text_of(render_page(sample_data(), now=NOW))
    assert "fail" in text
    assert "nlb-sg-ingress" in text
    assert "NLB security group ingress" in text  # the catalogue's title
    assert "no inbound rule allows tcp/80 from 10.0.1.0/24" in text
    assert "sg-0nlb (nlb-1)" in text
    assert "add an inbound rule for tcp/80 from the endpoint&#x27;s subnets to sg-0nlb" in text


def test_the_matrix_has_a_row_per_az_and_a_column_per_port_for_each_client() -> None:
    page = render_page(sample_data(), now=NOW)
    grid = page[page.index("<h3>client") : page.index("<h2>Verdicts")]
    assert "<th>80</th>" in grid
    assert "<th>apne1-az1</th>" in grid and "<th>apne1-az4</th>" in grid
    assert re.search(r'class="grid pass">pass', grid)
    assert re.search(r'class="grid fail">fail<br><code>nlb-sg-ingress</code>', grid)


def test_evidence_freshness_is_shown_and_old_evidence_is_flagged_stale() -> None:
    fresh = text_of(render_page(sample_data(), now=NOW))
    assert "6 s ago" in fresh
    stale = text_of(render_page(sample_data(), now=NOW + 3600))
    assert "(stale)" in stale


def test_each_recent_probe_shows_what_was_sent_what_came_back_and_what_the_target_saw() -> None:
    page = render_page(sample_data(), now=NOW)
    rounds = text_of(page[page.index("<h2>Recent rounds") :])
    assert "tcp 10.0.1.10:80 token aa01" in rounds
    assert "ok 2.1 ms" in rounds
    assert "seen server-1 via responder: from 10.1.0.99:41000 to 10.1.0.20:80" in rounds
    assert "timeout 2.1 ms" in rounds
    assert "not seen" in rounds


def test_a_missing_provider_side_is_unknown_with_the_reason_not_not_seen() -> None:
    data = sample_data()
    ev = evidence(BLOCKED, tcp(BLOCKED, "timeout", "cc03"), [])
    ev.provider_error = "provider agent API unreachable"
    history = RoundHistory()
    history.record("svc", NOW - 3, NOW - 2, [ev], "provider agent API unreachable")
    data.rounds = history.newest_first()
    rounds = text_of(render_page(data, now=NOW).split("<h2>Recent rounds")[1])
    assert "unknown : provider agent API unreachable" in rounds
    assert "not seen" not in rounds


def test_the_rounds_section_is_bounded_however_many_rounds_are_kept() -> None:
    history = RoundHistory(limit=50)
    for i in range(50):
        results = [tcp(f"client-2/az{j}/80", "ok", f"{i:02x}{j:02x}") for j in range(10)]
        history.record("svc", NOW - i, NOW - i, [evidence(r.path, r, []) for r in results])
    data = PageData(agent_id="c", role="client", ready=True, rounds=history.newest_first())
    page = render_page(data, now=NOW)
    rows = page.split("<h2>Recent rounds")[1].count("<tr><td>")
    assert rows == MAX_PROBE_ROWS
    assert "older rounds not shown" in page


def test_the_page_refreshes_itself_without_any_script() -> None:
    page = render_page(sample_data(), now=NOW, refresh_s=7)
    assert '<meta http-equiv="refresh" content="7">' in page
    assert "<script" not in page.lower()


def test_a_provider_agent_lists_the_probes_it_saw() -> None:
    data = PageData(
        agent_id="server-1",
        role="provider",
        ready=True,
        observations=[seen("aa01", PASSING)],
    )
    text = text_of(render_page(data, now=NOW))
    assert "Probes seen at this target" in text
    assert PASSING in text and "client-2" in text and "10.1.0.99:41000" in text


# -- escaping ----------------------------------------------------------------------------

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def hostile_data() -> PageData:
    """Every value that comes from configuration, AWS or the network carries markup."""
    path = f"client-2/{EVIL}/80"
    result = ProbeResult(
        path=path,
        probe="http",
        outcome="error",
        probe_id=EVIL,
        started_at=NOW - 6,
        target_ip=EVIL,
        port=80,
        detail={EVIL: EVIL},
        reply={"svc": EVIL},
        error=EVIL,
        fallback=EVIL,
        addresses=[EVIL],
    )
    obs = seen(EVIL, path)
    obs.target = EVIL
    obs.proxy_endpoint_id = EVIL
    ev = PathEvidence(
        path=path,
        outcome="error",
        seen_at_target="yes",
        results=[result],
        observations=[obs],
        source_at_target=EVIL,
        provider_error=EVIL,
    )
    verdict = blocked_verdict(
        path,
        blocked_at=EVIL,
        stage=EVIL,
        explanation=EVIL,
        fix=EVIL,
        candidates=[EVIL],
        findings=[
            HopFinding(
                hop=EVIL, control=EVIL, status="denied", resource=EVIL, rule=EVIL, detail=EVIL
            )
        ],
    )
    history = RoundHistory()
    history.record(EVIL, NOW - 6, NOW - 4, [ev], EVIL)
    return PageData(
        agent_id=EVIL,
        role="client",
        ready=True,
        verdicts={path: verdict},
        evidence={path: ev},
        rounds=history.newest_first(),
        started_at=NOW - 60,
    )


def test_every_value_is_escaped_so_injected_markup_stays_text() -> None:
    page = render_page(hostile_data(), now=NOW)
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    # every tag on the page is one the template writes
    tags = set(re.findall(r"<\s*([a-zA-Z0-9!]+)", page))
    assert tags <= {
        "!DOCTYPE",
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "h3",
        "p",
        "table",
        "tr",
        "th",
        "td",
        "code",
        "span",
        "br",
        "b",
    }


def test_a_provider_page_escapes_what_the_network_sent() -> None:
    obs = seen(EVIL, EVIL)
    obs.agent = EVIL
    obs.proxy_endpoint_id = EVIL
    obs.proxy_src = EVIL
    page = render_page(
        PageData(agent_id=EVIL, role="provider", ready=True, observations=[obs]), now=NOW
    )
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page


# -- how it is served ----------------------------------------------------------------------


def make_deps(**over: object) -> ApiDeps:
    reg = CollectorRegistry()
    deps = ApiDeps(registry=reg, metrics=make_metrics(reg))
    for key, value in over.items():
        setattr(deps, key, value)
    return deps


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[ApiDeps], object]]:
    clients: list[TestClient] = []

    async def start(deps: ApiDeps) -> TestClient:
        client = TestClient(TestServer(build_app(deps)))
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            await client.close()


async def test_the_page_is_served_at_the_root_with_a_strict_csp(serve) -> None:
    data = sample_data()
    deps = make_deps(
        verdicts=data.verdicts, evidence=data.evidence, config=ApiConfig(agent_id="client-2")
    )
    client = await serve(deps)
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = resp.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    body = await resp.text()
    assert "nlb-sg-ingress" in body and "client-2" in body


def test_the_inline_style_is_allowed_by_its_hash_and_nothing_else_is() -> None:
    import base64 as b64
    import hashlib

    expected = "sha256-" + b64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    assert expected == STYLE_HASH
    assert f"style-src '{STYLE_HASH}'" in CONTENT_SECURITY_POLICY
    page = render_page(sample_data(), now=NOW)
    assert page.count("<style>") == 1 and f"<style>{STYLE}</style>" in page
    assert " style=" not in page  # inline style attributes would be blocked


async def test_the_daemons_recorded_rounds_appear_on_the_page(serve) -> None:
    deps = make_deps()
    result = tcp(BLOCKED, "timeout", "dd04", started=time.time())
    deps.history.record("svc-endpoint", time.time(), time.time(), [evidence(BLOCKED, result, [])])
    client = await serve(deps)
    body = await (await client.get("/")).text()
    assert "svc-endpoint" in body and "dd04" in body


async def test_with_a_token_the_page_asks_the_browser_for_it(serve) -> None:
    client = await serve(make_deps(config=ApiConfig(token=TOKEN)))
    resp = await client.get("/")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic ")
    wrong = base64.b64encode(b"me:wrong").decode()
    assert (await client.get("/", headers={"Authorization": f"Basic {wrong}"})).status == 401


@pytest.mark.parametrize(
    "header",
    [f"Basic {base64.b64encode(f'anyone:{TOKEN}'.encode()).decode()}", f"Bearer {TOKEN}"],
)
async def test_with_a_token_the_page_accepts_it_as_basic_password_or_bearer(
    serve, header: str
) -> None:
    client = await serve(make_deps(config=ApiConfig(token=TOKEN)))
    assert (await client.get("/", headers={"Authorization": header})).status == 200


async def test_a_provider_agents_page_lists_its_stores_observations(serve) -> None:
    store = ObservationStore()
    store.append(seen("ee05", PASSING))
    client = await serve(make_deps(observations=store, config=ApiConfig(agent_id="server-1")))
    body = await (await client.get("/")).text()
    assert "(provider)" in body
    assert PASSING in body


# -- the history ---------------------------------------------------------------------------


def test_the_round_history_keeps_only_the_newest_rounds() -> None:
    history = RoundHistory(limit=3)
    for i in range(5):
        history.record(f"ep{i}", float(i), float(i) + 1, [])
    assert [r.endpoint for r in history.newest_first()] == ["ep4", "ep3", "ep2"]


def round_of(i: int, paths: int, per_path: int = 1) -> list[PathEvidence]:
    """Round ``i``'s evidence: ``paths`` paths with ``per_path`` tcp results each."""
    out = []
    for j in range(paths):
        path = f"client-2/az{j}/80"
        results = [tcp(path, "ok", f"{i:02x}{j:04x}{k:02x}") for k in range(per_path)]
        out.append(PathEvidence(path=path, outcome="ok", seen_at_target="no", results=results))
    return out


def test_the_history_keeps_no_more_results_than_the_page_can_show() -> None:
    """A batched round of 1,000 paths holds 5,000 results; 20 of them were ~60 MiB."""
    history = RoundHistory()
    for i in range(20):
        history.record("svc", NOW - 20 + i, NOW - 20 + i, round_of(i, 1000))
    assert sum(len(e.results) for rec in history for e in rec.evidence) == DEFAULT_RESULTS


def test_the_history_bound_is_what_the_page_shows() -> None:
    assert DEFAULT_RESULTS == MAX_PROBE_ROWS


def test_a_bounded_history_renders_the_same_page_as_an_unbounded_one() -> None:
    bounded, unbounded = RoundHistory(), RoundHistory(max_results=10**9)
    for i, (paths, per_path) in enumerate([(3, 1), (20, 3), (7, 2), (45, 2), (1, 1), (200, 1)]):
        rounds = round_of(i, paths, per_path)
        for history in (bounded, unbounded):
            history.record(f"ep{i}", NOW - 10 + i, NOW - 10 + i, rounds)
        bounded_page, unbounded_page = (
            render_page(
                PageData(agent_id="c", role="client", ready=True, rounds=h.newest_first()),
                now=NOW,
            )
            for h in (bounded, unbounded)
        )
        assert bounded_page == unbounded_page


def test_forgetting_a_path_removes_it_from_every_kept_round() -> None:
    history = RoundHistory()
    a = evidence(PASSING, tcp(PASSING, "ok", "01"), [])
    b = evidence(BLOCKED, tcp(BLOCKED, "ok", "02"), [])
    history.record("svc", 1.0, 2.0, [a, b])
    history.record("svc", 3.0, 4.0, [b])
    history.forget(BLOCKED)
    assert [[e.path for e in r.evidence] for r in history] == [[PASSING]]
