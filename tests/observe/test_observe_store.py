"""The provider's observation store: bounded, ordered by time, safe to share with a thread."""

from __future__ import annotations

import threading

import pytest

from agent.observe.store import ObservationStore
from agent.results import Observation


def obs(seen_at: float, probe_id: str = "", via: str = "responder") -> Observation:
    return Observation(
        kind="token",
        target="target-1",
        seen_at=seen_at,
        src_ip="10.3.0.100",
        src_port=40000,
        dst_ip="10.3.1.10",
        dst_port=9721,
        via=via,  # type: ignore[arg-type]
        probe_id=probe_id or f"{int(seen_at * 1000):032x}",
    )


def test_since_returns_only_later_observations_oldest_first() -> None:
    store = ObservationStore()
    for t in (30.0, 10.0, 20.0):
        store.append(obs(t))
    page = store.since(10.0)
    assert [o.seen_at for o in page.observations] == [20.0, 30.0]
    assert page.next_since == 30.0
    assert not page.truncated


def test_a_full_store_evicts_the_oldest_and_counts_it() -> None:
    store = ObservationStore(max_entries=3)
    for t in range(1, 6):
        store.append(obs(float(t)))
    assert len(store) == 3
    assert [o.seen_at for o in store.since(0).observations] == [3.0, 4.0, 5.0]
    assert store.counters.evicted == 2
    assert store.counters.appended == 5


def test_limit_truncates_and_next_since_continues_without_gaps() -> None:
    store = ObservationStore()
    for t in range(1, 8):
        store.append(obs(float(t)))
    seen: list[float] = []
    since = 0.0
    while True:
        page = store.since(since, limit=3)
        seen += [o.seen_at for o in page.observations]
        if not page.truncated:
            break
        assert page.next_since is not None
        since = page.next_since
    assert seen == [float(t) for t in range(1, 8)]


def test_a_page_never_splits_observations_that_share_a_timestamp() -> None:
    store = ObservationStore()
    for t, pid in ((1.0, "a"), (2.0, "b"), (2.0, "c"), (3.0, "d")):
        store.append(obs(t, probe_id=pid))
    first = store.since(0, limit=2)
    assert [o.probe_id for o in first.observations] == ["a"]
    assert first.truncated
    assert first.next_since is not None
    rest = store.since(first.next_since, limit=2)
    assert [o.probe_id for o in rest.observations] == ["b", "c"]


def test_counters_split_by_observer() -> None:
    store = ObservationStore()
    store.append(obs(1.0, via="responder"))
    store.append(obs(2.0, via="sniffer"))
    store.append(obs(3.0, via="sniffer"))
    counters = store.counters
    assert (counters.by_via_responder, counters.by_via_sniffer) == (1, 2)


def test_appends_from_threads_are_all_counted_and_bounded() -> None:
    store = ObservationStore(max_entries=500)

    def writer(base: int) -> None:
        for i in range(1000):
            store.append(obs(base + i / 1000, via="sniffer"))

    threads = [threading.Thread(target=writer, args=(b,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.counters.appended == 4000
    assert store.counters.evicted == 3500
    assert len(store) == 500


@pytest.mark.parametrize("bad", [0, -1])
def test_a_store_needs_room_for_one(bad: int) -> None:
    with pytest.raises(ValueError):
        ObservationStore(max_entries=bad)


def test_nan_since_is_rejected() -> None:
    with pytest.raises(ValueError):
        ObservationStore().since(float("nan"))


def test_observations_older_than_the_ttl_expire_and_are_counted_apart_from_evictions() -> None:
    now = [1000.0]
    store = ObservationStore(ttl_s=60, clock=lambda: now[0])
    store.append(obs(950.0))
    store.append(obs(990.0))
    now[0] = 1020.0
    assert [o.seen_at for o in store.since(0).observations] == [990.0]
    counters = store.counters
    assert (counters.expired, counters.evicted) == (1, 0)


def test_tail_returns_each_appended_observation_once_even_out_of_time_order() -> None:
    store = ObservationStore()
    store.append(obs(10.0, probe_id="a"))
    first, cursor = store.tail()
    store.append(obs(5.0, probe_id="late-sniffer-record"))
    store.append(obs(11.0, probe_id="b"))
    second, cursor = store.tail(cursor)
    third, _ = store.tail(cursor)
    assert [o.probe_id for o in first] == ["a"]
    assert [o.probe_id for o in second] == ["late-sniffer-record", "b"]
    assert third == []
