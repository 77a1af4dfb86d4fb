"""``GET /v1/observations``: stable JSON, ``since`` filtering, 400 on bad input."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.observe.api import MAX_LIMIT, build_observations_app
from agent.observe.store import ObservationStore
from agent.results import Observation

STABLE_FIELDS = {f.name for f in dataclasses.fields(Observation)}


def obs(seen_at: float, probe_id: str) -> Observation:
    return Observation(
        kind="token",
        target="target-1",
        seen_at=seen_at,
        src_ip="10.3.0.100",
        src_port=40000,
        dst_ip="10.3.1.10",
        dst_port=9721,
        via="responder",
        probe_id=probe_id,
        path="client-2/apne1-az4/9721",
        agent="client-2",
        proxy_endpoint_id="vpce-0123456789abcdef0",
        proxy_src="10.1.1.20:51000",
        proxy_dst="10.2.1.5:9721",
    )


@pytest.fixture
def store() -> ObservationStore:
    s = ObservationStore(max_entries=2)
    for t, pid in ((100.0, "aa"), (200.0, "bb"), (300.0, "cc")):
        s.append(obs(t, pid))
    return s


@pytest.fixture
async def client(store: ObservationStore) -> AsyncIterator[TestClient]:
    app = build_observations_app(
        store,
        agent_id="target-1",
        counters={"responder": lambda: {"forged": 3}},
        clock=lambda: 1234.5,
    )
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_observations_are_returned_with_the_stable_field_names(client: TestClient) -> None:
    resp = await client.get("/v1/observations")
    assert resp.status == 200
    body = await resp.json()
    assert body["agent"] == "target-1"
    assert body["now"] == 1234.5
    assert [o["probe_id"] for o in body["observations"]] == ["bb", "cc"]
    for o in body["observations"]:
        assert set(o) == STABLE_FIELDS
    assert body["observations"][0]["proxy_endpoint_id"] == "vpce-0123456789abcdef0"


async def test_since_filters_out_older_observations(client: TestClient) -> None:
    body = await (await client.get("/v1/observations", params={"since": "200"})).json()
    assert [o["probe_id"] for o in body["observations"]] == ["cc"]
    assert body["since"] == 200.0
    assert body["count"] == 1


async def test_agent_filters_to_that_clients_observations(store: ObservationStore) -> None:
    store.append(dataclasses.replace(obs(400.0, "dd"), agent="client-9"))
    app = build_observations_app(store, agent_id="target-1")
    async with TestClient(TestServer(app)) as c:
        resp = await c.get("/v1/observations", params={"agent": "client-9"})
        body = await resp.json()
    assert [o["probe_id"] for o in body["observations"]] == ["dd"]


async def test_limit_truncates_and_says_where_to_continue(client: TestClient) -> None:
    body = await (await client.get("/v1/observations", params={"limit": "1"})).json()
    assert body["truncated"] is True
    assert body["next_since"] == 200.0
    assert [o["probe_id"] for o in body["observations"]] == ["bb"]


async def test_counters_include_store_evictions_and_other_sources(client: TestClient) -> None:
    body = await (await client.get("/v1/observations")).json()
    assert body["counters"]["store"]["evicted"] == 1
    assert body["counters"]["responder"] == {"forged": 3}


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"since": "nan"},
        {"since": "inf"},
        {"since": "-5"},
        {"limit": "0"},
        {"limit": "ten"},
        {"limit": str(MAX_LIMIT + 1)},
    ],
)
async def test_bad_query_parameters_are_a_400_json_error(
    client: TestClient, params: dict[str, str]
) -> None:
    resp = await client.get("/v1/observations", params=params)
    assert resp.status == 400
    body = await resp.json()
    assert set(body) == {"error"}
    assert next(iter(params)) in body["error"]
