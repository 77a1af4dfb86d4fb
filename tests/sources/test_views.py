"""agent/sources/views.py: which configuration view is read; a refresh keeps the last good one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import ClientConfig, parse_config
from agent.errors import ConfigError, SourceError
from agent.lab.snapshot import write_snapshot
from agent.model import Topology
from agent.sources.topology import load_topology
from agent.sources.views import (
    LiveSource,
    SnapshotSource,
    ViewKeeper,
    for_daemon,
    load_once,
    source_for,
)
from agent.yamlsrc import load_yaml


def client_config(tmp_path: Path, **sources: Any) -> ClientConfig:
    doc = {
        "role": "client",
        "agent_id": "c1",
        "insecure": True,
        "paths": [{"name": "svc", "expected_ips": {"az1": "127.0.0.1"}}],
        "config_sources": sources,
    }
    path = tmp_path / "client.yaml"
    path.write_text(json.dumps(doc))
    config = parse_config(load_yaml(path))
    assert isinstance(config, ClientConfig)
    return config


@dataclass
class FlakySource:
    """A source whose next loads succeed or fail as the test says."""

    kind: str = "aws"
    description: str = "fake"
    timeout_s: float = 2.0
    fail: bool = False
    loads: int = 0
    gate: threading.Event | None = None
    topology: Topology = field(default_factory=lambda: Topology(region="r1", source="fake"))

    def load(self) -> Topology:
        self.loads += 1
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise SourceError("AWS said no")
        return self.topology


def test_command_line_snapshot_dirs_win_over_the_config(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    config = client_config(tmp_path, aws={"region": "ap-northeast-1"})
    source = source_for(config, snapshot_dirs=[str(tmp_path / "a")])
    assert isinstance(source, SnapshotSource)
    assert source.dirs == (tmp_path / "a",)


def test_config_snapshot_dirs_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "consumer").mkdir()
    source = source_for(client_config(tmp_path, snapshot_dirs=["consumer"]))
    assert isinstance(source, SnapshotSource)
    assert source.dirs == (tmp_path / "consumer",)


def test_a_client_reads_the_consumer_account_live(tmp_path: Path) -> None:
    source = source_for(client_config(tmp_path, aws={"region": "ap-northeast-1"}))
    assert isinstance(source, LiveSource)
    assert (source.side, source.aws.region) == ("consumer", "ap-northeast-1")


def test_no_source_means_packets_alone(tmp_path: Path) -> None:
    assert source_for(client_config(tmp_path)) is None


def test_a_missing_snapshot_directory_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="snapshot directory not found"):
        source_for(client_config(tmp_path), snapshot_dirs=[str(tmp_path / "nope")])


async def test_a_snapshot_written_by_the_lab_loads_as_a_view(tmp_path: Path) -> None:
    dirs = write_snapshot(load_topology(), tmp_path)
    view = await load_once(SnapshotSource(tuple(dirs)))
    assert view.topology is not None and view.error is None
    assert {i.name for i in view.topology.instances.values()} >= {"client-1", "client-2"}


async def test_a_failing_refresh_keeps_the_last_good_view_and_says_so() -> None:
    source = FlakySource()
    keeper = ViewKeeper(source, interval_s=60)
    good = await keeper.refresh()
    source.fail = True
    stale = await keeper.refresh()
    assert stale.topology is good.topology
    assert stale.stale and stale.error == "AWS said no"
    assert "refresh failing" in stale.note()


async def test_a_recovered_refresh_clears_the_staleness() -> None:
    source = FlakySource(fail=True)
    keeper = ViewKeeper(source, interval_s=60)
    assert (await keeper.refresh()).topology is None
    source.fail = False
    view = await keeper.refresh()
    assert view.topology is source.topology and not view.stale and keeper.failures == 0


async def test_failed_refreshes_back_off_exponentially_up_to_the_interval() -> None:
    now = [1000.0]
    keeper = ViewKeeper(
        FlakySource(fail=True), interval_s=60, backoff_initial_s=5, clock=lambda: now[0]
    )
    delays = []
    for _ in range(6):
        await keeper.refresh()
        delays.append(keeper.next_due - now[0])
    assert delays == [5, 10, 20, 40, 60, 60]


async def test_each_refresh_reports_its_source_up_or_down() -> None:
    seen: list[tuple[str, bool]] = []
    source = FlakySource()
    keeper = ViewKeeper(source, on_refresh=lambda kind, ok: seen.append((kind, ok)))
    await keeper.refresh()
    source.fail = True
    await keeper.refresh()
    assert seen == [("aws", True), ("aws", False)]


async def test_a_read_that_overruns_its_timeout_is_not_started_twice() -> None:
    gate = threading.Event()
    source = FlakySource(timeout_s=0.1, gate=gate)
    keeper = ViewKeeper(source)
    try:
        first = await keeper.refresh()
        second = await keeper.refresh()
    finally:
        gate.set()
    assert first.error is not None and "0.1s" in first.error
    assert second.error == first.error
    assert source.loads == 1


# --- the daemon's snapshot reading: no botocore model in a long-lived process ------------


@pytest.fixture
def snapshot_dirs(tmp_path: Path) -> tuple[Path, ...]:
    return tuple(write_snapshot(load_topology(), tmp_path / "snap", {}))


def test_the_daemons_snapshot_source_reads_the_same_topology(snapshot_dirs) -> None:
    daemons = for_daemon(SnapshotSource(snapshot_dirs))
    assert isinstance(daemons, SnapshotSource) and not daemons.botocore_notes
    assert daemons == SnapshotSource(snapshot_dirs)  # a reload does not restart the view
    assert daemons.load() == SnapshotSource(snapshot_dirs).load()


def test_the_daemons_snapshot_source_never_imports_botocore(snapshot_dirs) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agent.sources.views import SnapshotSource, for_daemon\n"
        f"dirs = tuple(Path(d) for d in {[str(d) for d in snapshot_dirs]!r})\n"
        "for_daemon(SnapshotSource(dirs)).load()\n"
        "print('botocore' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_a_changed_snapshot_with_a_wrong_shape_is_refused_as_in_process(snapshot_dirs) -> None:
    source = SnapshotSource(snapshot_dirs, botocore_notes=False)
    source.load()
    provider = next(d for d in snapshot_dirs if d.name == "provider")
    bad = provider / "elbv2-describe-target-groups.json"
    body = json.loads(bad.read_text())
    body["TargetGroups"][0]["Port"] = "80"
    bad.write_text(json.dumps(body))
    with pytest.raises(SourceError, match=r"elbv2-describe-target-groups\.json.*Port"):
        source.load()
    with pytest.raises(SourceError, match=r"elbv2-describe-target-groups\.json.*Port"):
        SnapshotSource(snapshot_dirs).load()  # the same message as in-process validation


async def test_a_hung_read_does_not_starve_the_event_loop() -> None:
    gate = threading.Event()
    source = FlakySource(timeout_s=0.05, gate=gate)
    calls = [0]

    def clock() -> float:  # a busy refresh loop ends here instead of hanging the test
        calls[0] += 1
        if calls[0] > 10_000:
            raise RuntimeError("the refresh loop never yielded")
        return time.time()

    keeper = ViewKeeper(
        source, interval_s=60, backoff_initial_s=0.05, min_sleep_s=0.01, clock=clock
    )
    task = asyncio.create_task(keeper.run())
    ticks = 0
    try:
        async with asyncio.timeout(2):  # watchdog: other tasks still get the loop
            for _ in range(20):
                await asyncio.sleep(0.02)
                ticks += 1
        assert not task.done(), task.exception() if task.done() else None
    finally:
        gate.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await task
    assert ticks == 20 and source.loads == 1 and keeper.view.stale


class BuggySource(FlakySource):
    def load(self) -> Topology:
        if self.fail:
            raise KeyError("vpc-1")
        return super().load()


async def test_a_source_bug_marks_the_view_stale_and_keeps_the_last_good_one() -> None:
    source = BuggySource()
    keeper = ViewKeeper(source, interval_s=60)
    good = await keeper.refresh()
    source.fail = True
    stale = await keeper.refresh()
    assert stale.topology is good.topology
    assert stale.stale and stale.error == "KeyError: 'vpc-1'"
