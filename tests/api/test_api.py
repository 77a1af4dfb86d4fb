"""The HTTP API (agent/api/): metrics, health, JSON state, bearer token, blackbox /probe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from agent.api.answer import ProbeModule, ProbeReport, probe_timeout, render_probe
from agent.api.server import ApiConfig, ApiDeps, ApiServer, build_app
from agent.controls import IDS as CONTROL_IDS
from agent.errors import ConfigError, ProbeError
from agent.metrics import make_metrics
from agent.observe.store import ObservationStore
from agent.results import OUTCOMES, Observation, PathEvidence, ProbeResult, Verdict

PATH = "client-1/apne1-az1/80"
OTHER = "client-1/apne1-az2/80"
TOKEN = "s3cret-token"


def make_deps(**over: object) -> ApiDeps:
    reg = CollectorRegistry()
    deps = ApiDeps(registry=reg, metrics=make_metrics(reg))
    for key, value in over.items():
        setattr(deps, key, value)
    return deps


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[ApiDeps], asyncio.Future[TestClient]]]:
    clients: list[TestClient] = []

    async def start(deps: ApiDeps) -> TestClient:
        client = TestClient(TestServer(build_app(deps)))
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield start  # type: ignore[misc]
    finally:
        for client in clients:
            await client.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def tcp_result(outcome: str = "ok", path: str = PATH) -> ProbeResult:
    return ProbeResult(path=path, probe="tcp", outcome=outcome, duration_s=0.002)


def fixed_probe(report: ProbeReport) -> Callable[..., object]:
    async def probe(target: str, module: ProbeModule, timeout_s: float) -> ProbeReport:
        return report

    return probe


# -- /metrics ----------------------------------------------------------------------------


async def test_metrics_serves_the_agents_registry(serve) -> None:
    deps = make_deps()
    assert deps.metrics is not None
    deps.metrics.observe_result(tcp_result())
    client = await serve(deps)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    key = ("plprobe_probes_total", (("path", PATH), ("probe", "tcp"), ("result", "ok")))
    assert samples(await resp.text())[key] == 1


async def test_metrics_speaks_openmetrics_when_asked(serve) -> None:
    client = await serve(make_deps())
    resp = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


# -- /healthz ----------------------------------------------------------------------------


async def test_liveness_answers_before_the_agent_is_ready(serve) -> None:
    client = await serve(make_deps())
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["ready"] is False


@pytest.mark.parametrize("url", ["/healthz/ready", "/healthz?ready=1"])
async def test_readiness_waits_for_config_and_first_round(serve, url: str) -> None:
    deps = make_deps()
    client = await serve(deps)
    assert (await client.get(url)).status == 503
    deps.config_loaded = True
    assert (await client.get(url)).status == 503
    deps.first_round_done = True
    resp = await client.get(url)
    assert resp.status == 200
    assert (await resp.json())["ready"] is True


# -- /v1 ---------------------------------------------------------------------------------


async def test_results_lists_the_latest_results_of_each_path(serve) -> None:
    deps = make_deps(results={PATH: [tcp_result()], OTHER: [tcp_result("timeout", OTHER)]})
    client = await serve(deps)
    body = await (await client.get("/v1/results")).json()
    assert [(r["path"], r["outcome"]) for r in body["results"]] == [
        (PATH, "ok"),
        (OTHER, "timeout"),
    ]


async def test_v1_filters_by_path(serve) -> None:
    deps = make_deps(
        verdicts={
            PATH: Verdict(path=PATH, status="pass", stage="pass", blocked_at=None),
            OTHER: Verdict(path=OTHER, status="fail", stage="forward", blocked_at="dns"),
        }
    )
    client = await serve(deps)
    body = await (await client.get("/v1/verdicts", params={"path": OTHER})).json()
    assert [v["blocked_at"] for v in body["verdicts"]] == ["dns"]


async def test_verdicts_use_the_stable_field_names(serve) -> None:
    v = Verdict(path=PATH, status="fail", stage="forward", blocked_at="nlb-sg-ingress")
    client = await serve(make_deps(verdicts={PATH: v}))
    (got,) = (await (await client.get("/v1/verdicts")).json())["verdicts"]
    stable = {"path", "status", "stage", "blocked_at", "candidates", "evidence", "explanation"}
    assert stable | {"fix", "checked_at"} <= set(got)


async def test_evidence_is_served_per_path(serve) -> None:
    ev = PathEvidence(path=PATH, outcome="timeout", seen_at_target="no")
    client = await serve(make_deps(evidence={PATH: ev}))
    body = await (await client.get("/v1/evidence")).json()
    assert body["evidence"][0]["seen_at_target"] == "no"


async def test_observations_come_from_the_providers_store(serve) -> None:
    store = ObservationStore()
    store.append(
        Observation(
            kind="token",
            target="target-1",
            seen_at=1_700_000_000.0,
            src_ip="10.3.0.100",
            src_port=40000,
            dst_ip="10.3.1.10",
            dst_port=80,
            via="responder",
            path=PATH,
        )
    )
    client = await serve(make_deps(observations=store))
    resp = await client.get("/v1/observations")
    assert resp.status == 200
    assert [o["path"] for o in (await resp.json())["observations"]] == [PATH]


async def test_a_client_agent_has_no_observations(serve) -> None:
    client = await serve(make_deps())
    resp = await client.get("/v1/observations")
    assert resp.status == 404
    assert "error" in await resp.json()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
)
async def test_v1_needs_the_bearer_token_when_one_is_configured(serve, headers) -> None:
    client = await serve(make_deps(config=ApiConfig(token=TOKEN)))
    resp = await client.get("/v1/results", headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert "error" in await resp.json()


async def test_v1_accepts_the_right_bearer_token(serve) -> None:
    client = await serve(make_deps(config=ApiConfig(token=TOKEN)))
    resp = await client.get("/v1/results", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200


async def test_metrics_and_health_stay_open_when_a_token_is_configured(serve) -> None:
    client = await serve(make_deps(config=ApiConfig(token=TOKEN)))
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/healthz")).status == 200


async def test_a_reloaded_token_applies_to_the_next_request(serve) -> None:
    deps = make_deps()
    client = await serve(deps)
    assert (await client.get("/v1/results")).status == 200
    deps.config = ApiConfig(token=TOKEN)
    assert (await client.get("/v1/results")).status == 401


# -- /probe ------------------------------------------------------------------------------


async def test_a_passing_probe_says_probe_success_1(serve) -> None:
    client = await serve(make_deps(probe_fn=fixed_probe(ProbeReport(tcp_result()))))
    resp = await client.get("/probe", params={"target": "10.1.1.10:80", "module": "tcp"})
    assert resp.status == 200
    got = samples(await resp.text())
    assert got[("probe_success", ())] == 1
    assert got[("plprobe_probe_result", (("result", "ok"),))] == 1
    assert ("probe_duration_seconds", ()) in got


async def test_a_blocked_probe_is_a_successful_request_naming_the_control(serve) -> None:
    report = ProbeReport(
        tcp_result("timeout"),
        Verdict(path=PATH, status="fail", stage="forward", blocked_at="target-sg-ingress"),
    )
    client = await serve(make_deps(probe_fn=fixed_probe(report)))
    resp = await client.get("/probe", params={"target": PATH, "module": "tcp"})
    assert resp.status == 200
    got = samples(await resp.text())
    assert got[("probe_success", ())] == 0
    assert got[("plprobe_probe_result", (("result", "timeout"),))] == 1
    assert got[("plprobe_probe_result", (("result", "ok"),))] == 0
    assert got[("plprobe_probe_blocked", (("control", "target-sg-ingress"),))] == 1


async def test_an_unknown_module_is_a_bad_request_and_is_counted(serve) -> None:
    deps = make_deps(probe_fn=fixed_probe(ProbeReport(tcp_result())))
    client = await serve(deps)
    resp = await client.get("/probe", params={"target": PATH, "module": "icmp_echo"})
    assert resp.status == 400
    assert deps.registry.get_sample_value("plprobe_probe_module_unknown_total") == 1


async def test_a_probe_without_target_is_a_bad_request(serve) -> None:
    client = await serve(make_deps(probe_fn=fixed_probe(ProbeReport(tcp_result()))))
    assert (await client.get("/probe", params={"module": "tcp"})).status == 400


async def test_a_target_the_prober_cannot_parse_is_a_bad_request(serve) -> None:
    async def probe(target: str, module: ProbeModule, timeout_s: float) -> ProbeReport:
        raise ValueError("not host:port")

    client = await serve(make_deps(probe_fn=probe))
    assert (await client.get("/probe", params={"target": "nonsense"})).status == 400


async def test_a_probe_that_cannot_run_is_a_failed_probe_not_a_failed_request(serve) -> None:
    async def probe(target: str, module: ProbeModule, timeout_s: float) -> ProbeReport:
        raise ProbeError("no CAP_NET_RAW")

    client = await serve(make_deps(probe_fn=probe))
    resp = await client.get("/probe", params={"target": PATH, "module": "syn"})
    assert resp.status == 200
    got = samples(await resp.text())
    assert got[("probe_success", ())] == 0
    assert got[("plprobe_probe_result", (("result", "error"),))] == 1


async def test_a_probe_is_cut_at_the_scrape_timeout_minus_the_offset(serve) -> None:
    seen: list[float] = []

    async def probe(target: str, module: ProbeModule, timeout_s: float) -> ProbeReport:
        seen.append(timeout_s)
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    config = ApiConfig(scrape_timeout_offset_s=0.1)
    client = await serve(make_deps(probe_fn=probe, config=config))
    loop = asyncio.get_running_loop()
    start = loop.time()
    resp = await client.get(
        "/probe",
        params={"target": PATH, "module": "tcp"},
        headers={"X-Prometheus-Scrape-Timeout-Seconds": "0.3"},
    )
    elapsed = loop.time() - start
    assert seen == [pytest.approx(0.2)]
    assert elapsed < 2
    got = samples(await resp.text())
    assert got[("probe_success", ())] == 0
    assert got[("plprobe_probe_result", (("result", "timeout"),))] == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, 5.0), ("10", 5.0), ("3", 2.5), ("0.4", 5.0)],
)
def test_probe_timeout_follows_blackbox_exporter(header: str | None, expected: float) -> None:
    module = ProbeModule("tcp", "tcp", timeout_s=5.0)
    assert probe_timeout(header, module, 0.5) == expected


def test_a_scrape_timeout_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match="not a number"):
        probe_timeout("soon", ProbeModule("tcp", "tcp"), 0.5)


async def test_a_scraper_that_gives_up_cancels_its_probe() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def probe(target: str, module: ProbeModule, timeout_s: float) -> ProbeReport:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("not reached")

    deps = make_deps(probe_fn=probe)
    async with ApiServer(build_app(deps), host="127.0.0.1", port=0) as server:
        host, port = server.addresses[0]
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(
                session.get(f"http://{host}:{port}/probe", params={"target": PATH})
            )
            await asyncio.wait_for(started.wait(), 5)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
        await asyncio.wait_for(cancelled.wait(), 5)


# -- ApiServer ---------------------------------------------------------------------------


async def test_the_server_reports_the_port_it_bound() -> None:
    async with ApiServer(build_app(make_deps()), host="127.0.0.1", port=0) as server:
        ((host, port),) = server.addresses
        assert host == "127.0.0.1"
        assert port > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/healthz") as resp,
        ):
            assert resp.status == 200


async def test_a_port_in_use_is_a_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ApiServer(build_app(make_deps()), host="127.0.0.1", port=port)
        with pytest.raises(ConfigError, match="cannot listen"):
            await server.start()


async def test_a_client_that_disconnects_does_not_cancel_its_reload() -> None:
    entered, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def reload() -> tuple[bool, str]:
        entered.set()
        await release.wait()
        finished.set()
        return True, "configuration reloaded"

    deps = make_deps(reload_fn=reload)
    async with ApiServer(build_app(deps), host="127.0.0.1", port=0) as server:
        ((host, port),) = server.addresses
        async with aiohttp.ClientSession() as session:
            request = asyncio.ensure_future(session.post(f"http://{host}:{port}/-/reload"))
            await asyncio.wait_for(entered.wait(), 2)
            request.cancel()  # the client goes away mid-reload
            with contextlib.suppress(asyncio.CancelledError):
                await request
        await asyncio.sleep(0.1)  # let the server see the disconnect
        release.set()
        await asyncio.wait_for(finished.wait(), 2)


# -- /probe answer: text rendering ---------------------------------------------------------

OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def reference_probe_registry(
    success: bool, duration_s: float, outcome: str, control: str | None
) -> CollectorRegistry:
    """The /probe answer as prometheus-client builds it (what /probe served before)."""
    reg = CollectorRegistry(auto_describe=True)
    Gauge("probe_success", "Whether the probe succeeded.", registry=reg).set(1 if success else 0)
    Gauge("probe_duration_seconds", "How long the probe took.", registry=reg).set(duration_s)
    result = Gauge(
        "plprobe_probe_result", "The probe's client-side result, one-hot.", ["result"], registry=reg
    )
    for value in OUTCOMES:
        result.labels(value).set(1 if value == outcome else 0)
    if control is not None:
        Gauge(
            "plprobe_probe_blocked",
            "1 for the control that blocked the probed path.",
            ["control"],
            registry=reg,
        ).labels(control).set(1)
    return reg


@pytest.mark.parametrize("accept", ["", OPENMETRICS_ACCEPT], ids=["text-0.0.4", "openmetrics"])
@pytest.mark.parametrize("outcome", OUTCOMES)
def test_the_probe_answer_is_byte_equal_to_prometheus_clients_rendering(
    outcome: str, accept: str
) -> None:
    encoder, content_type = choose_encoder(accept)
    openmetrics = content_type.startswith("application/openmetrics-text")
    for control in (None, *CONTROL_IDS):
        for duration in (0.000123, 0.5, 1.0, 2.75, 1234567.5):
            success = outcome == "ok" and control is None
            want = encoder(reference_probe_registry(success, duration, outcome, control))
            got = render_probe(success, duration, outcome, control, openmetrics=openmetrics)
            assert got == want, (outcome, control, duration)


def test_promtool_accepts_the_probe_answer() -> None:
    promtool = shutil.which("promtool") or (
        "/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None
    )
    if promtool is None:
        if os.environ.get("PLPROBE_REQUIRE_TOOLS") == "1":
            pytest.fail("promtool is required (PLPROBE_REQUIRE_TOOLS=1) but not installed")
        pytest.skip("promtool not installed")
    body = render_probe(False, 0.0123, "timeout", "target-sg-ingress", openmetrics=False)
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=20, check=False
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.decode().strip() == "", proc.stdout.decode()


# -- /probe over the wire (ApiServer): a request corpus, malformed requests included --------

BLOCKED = ProbeReport(
    tcp_result("timeout"),
    Verdict(path=PATH, status="fail", stage="forward", blocked_at="target-sg-ingress"),
)


async def read_response(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.x response with a Content-Length: (status line, headers, body)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
    status, *lines = head[:-4].split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return status, headers, body


async def exchange(port: int, *requests: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Send ``requests`` on one connection (pipelined); read one response per request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(requests))
        await writer.drain()
        return [await read_response(reader) for _ in requests]
    finally:
        writer.close()


def get(target: str, *headers: str, version: str = "HTTP/1.1", close: bool = True) -> bytes:
    lines = [f"GET {target} {version}", "Host: plprobe", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
async def server_port() -> AsyncIterator[Callable[[ApiDeps], asyncio.Future[int]]]:
    """Start an ApiServer for the given deps on a free loopback port; stopped at the end."""
    started: list[ApiServer] = []

    async def start(deps: ApiDeps) -> int:
        server = ApiServer(build_app(deps), host="127.0.0.1", port=0)
        await server.start()
        started.append(server)
        return server.addresses[0][1]

    try:
        yield start  # type: ignore[misc]
    finally:
        for server in started:
            await server.stop()


TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize(
    ("request_bytes", "status", "content_type", "body_start"),
    [
        (get("/probe?target=10.2.0.20:80&module=tcp"), "HTTP/1.1 200 OK", TEXT_0_0_4, "# HELP"),
        (get("/probe?target=10.2.0.20%3A80"), "HTTP/1.1 200 OK", TEXT_0_0_4, "# HELP"),
        (
            get("/probe?target=10.2.0.20:80", f"Accept: {OPENMETRICS_ACCEPT}"),
            "HTTP/1.1 200 OK",
            "application/openmetrics-text",
            "# HELP",
        ),
        (
            get("/probe?target=10.2.0.20:80", "X-Prometheus-Scrape-Timeout-Seconds: 10"),
            "HTTP/1.1 200 OK",
            TEXT_0_0_4,
            "# HELP",
        ),
        (
            get("/probe?target=10.2.0.20:80", "X-Prometheus-Scrape-Timeout-Seconds: soon"),
            "HTTP/1.1 400 Bad Request",
            "text/plain; charset=utf-8",
            "X-Prometheus-Scrape-Timeout-Seconds is not a number",
        ),
        (
            get("/probe?module=tcp"),
            "HTTP/1.1 400 Bad Request",
            "text/plain; charset=utf-8",
            "target parameter is missing",
        ),
        (
            get("/probe?target=10.2.0.20:80&module=icmp_echo"),
            "HTTP/1.1 400 Bad Request",
            "text/plain; charset=utf-8",
            "unknown module 'icmp_echo'",
        ),
        (
            get("/probe?target=10.2.0.20:80", version="HTTP/1.0"),
            "HTTP/1.0 200 OK",
            TEXT_0_0_4,
            "# HELP",
        ),
        (
            get("/probe?target=10.2.0.20:80", version="HTTP/1.0", close=False),
            "HTTP/1.0 200 OK",
            TEXT_0_0_4,
            "# HELP",
        ),
    ],
    ids=[
        "ok",
        "percent-encoded",
        "openmetrics",
        "scrape-timeout",
        "bad-scrape-timeout",
        "no-target",
        "unknown-module",
        "http-1.0",
        "http-1.0-default",
    ],
)
async def test_probe_requests_get_blackbox_exporters_answers(
    server_port, request_bytes: bytes, status: str, content_type: str, body_start: str
) -> None:
    port = await server_port(make_deps(probe_fn=fixed_probe(ProbeReport(tcp_result()))))
    ((got_status, headers, body),) = await exchange(port, request_bytes)
    assert got_status == status
    assert headers["content-type"].startswith(content_type)
    assert body.decode().startswith(body_start)
    if status.endswith("200 OK"):
        assert "probe_success 1" in body.decode()


async def test_a_probe_answer_names_the_blocking_control(server_port) -> None:
    port = await server_port(make_deps(probe_fn=fixed_probe(BLOCKED)))
    ((status, _, body),) = await exchange(port, get("/probe?target=10.2.0.20:80"))
    assert status == "HTTP/1.1 200 OK"
    assert 'plprobe_probe_blocked{control="target-sg-ingress"} 1.0' in body.decode()
    assert "probe_success 0.0" in body.decode()


async def test_a_kept_alive_connection_serves_probes_and_other_requests(server_port) -> None:
    port = await server_port(make_deps(probe_fn=fixed_probe(ProbeReport(tcp_result()))))
    responses = await exchange(
        port,
        get("/probe?target=10.2.0.20:80", close=False),
        get("/probe?target=10.2.0.20:81", close=False),
        get("/healthz"),
    )
    assert [r[0] for r in responses] == ["HTTP/1.1 200 OK"] * 3
    assert [b"probe_success 1.0" in r[2] for r in responses] == [True, True, False]
    assert b'"status": "ok"' in responses[2][2]
    assert "connection" not in responses[0][1]  # HTTP/1.1 keep-alive is the default


#: malformed or unusual requests: each gets a 4xx from aiohttp's parser or router, never a
#: probe, never a 5xx, and the server keeps serving
MALFORMED = {
    "post-with-body": b"POST /probe?target=a:1 HTTP/1.1\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\nhi",
    "sub-path": b"GET /probe/x?target=a:1 HTTP/1.1\r\nConnection: close\r\n\r\n",
    "non-ascii-header": b"GET /probe?target=a:1 HTTP/1.1\r\nX-Odd\xff: 1\r\n"
    b"Connection: close\r\n\r\n",
    "bad-version": b"GET /probe?target=a:1 HTTP/9.9\r\nHost: p\r\n\r\n",
    "space-in-target": b"GET /probe?target=a b:1 HTTP/1.1\r\nHost: p\r\n\r\n",
    "control-char-in-target": b"GET /probe?target=a\x01:1 HTTP/1.1\r\nHost: p\r\n\r\n",
    "header-without-colon": b"GET /probe?target=a:1 HTTP/1.1\r\nHost p\r\n\r\n",
    "bad-content-length": b"GET /probe?target=a:1 HTTP/1.1\r\nHost: p\r\n"
    b"Content-Length: -1\r\n\r\n",
    "two-content-lengths": b"GET /probe?target=a:1 HTTP/1.1\r\nHost: p\r\n"
    b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "chunked-garbage": b"POST /probe?target=a:1 HTTP/1.1\r\nHost: p\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "huge-header": b"GET /probe?target=a:1 HTTP/1.1\r\nHost: p\r\nX-Big: "
    + b"a" * 20000
    + b"\r\n\r\n",
    "huge-target": b"GET /probe?target=" + b"a" * 20000 + b" HTTP/1.1\r\nHost: p\r\n\r\n",
    "not-http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
}


async def read_status(port: int, request: bytes) -> str:
    """The status line the server answers ``request`` with ("" if it closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            return line.decode("latin-1").strip()
        return ""
    finally:
        writer.close()


@pytest.mark.parametrize("request_bytes", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_request_is_a_client_error_and_never_a_probe(
    server_port, request_bytes: bytes
) -> None:
    probes: list[str] = []

    async def probe(target: str, module: ProbeModule, timeout_s: float) -> ProbeReport:
        probes.append(target)
        return ProbeReport(tcp_result())

    port = await server_port(make_deps(probe_fn=probe))
    status = await read_status(port, request_bytes)
    assert re.match(r"HTTP/1\.[01] 4\d\d ", status), status
    assert probes == []
    ((after, _, _),) = await exchange(port, get("/healthz"))
    assert after == "HTTP/1.1 200 OK"


async def test_a_request_that_arrives_in_pieces_is_answered(server_port) -> None:
    port = await server_port(make_deps(probe_fn=fixed_probe(ProbeReport(tcp_result()))))
    request = get("/probe?target=10.2.0.20:80")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(0, len(request), 7):
            writer.write(request[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0.001)
        status, _, body = await read_response(reader)
    finally:
        writer.close()
    assert status == "HTTP/1.1 200 OK"
    assert b"probe_success 1.0" in body


async def test_a_probe_function_that_fails_unexpectedly_is_a_failed_probe_not_a_dropped_connection(
    server_port,
) -> None:
    async def broken(target: str, module: ProbeModule, timeout_s: float) -> ProbeReport:
        raise RuntimeError("a bug")

    port = await server_port(make_deps(probe_fn=broken))
    ((status, _, body),) = await exchange(port, get("/probe?target=10.2.0.20:80"))
    assert status == "HTTP/1.1 200 OK"
    assert "probe_success 0" in body.decode()
    assert 'plprobe_probe_result{result="error"} 1.0' in body.decode()


async def test_stopping_the_server_closes_its_idle_keep_alive_connections() -> None:
    deps = make_deps(probe_fn=fixed_probe(ProbeReport(tcp_result())))
    server = ApiServer(build_app(deps), host="127.0.0.1", port=0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0][1])
        writer.write(get("/probe?target=10.2.0.20:80", close=False))
        await read_response(reader)
    finally:
        await server.stop()
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
