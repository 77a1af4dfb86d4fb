"""aws_live: the same calls as a snapshot, through boto3 + botocore's Stubber; IMDSv2.

No live AWS call and no hand-rolled fake client: each client is a real boto3 client whose
responses come from botocore's Stubber (which validates them against the service model),
fed with the very JSON ``write_snapshot`` produces.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import boto3
import pytest
from botocore.stub import Stubber
from test_snapshot_fixtures import enriched, reference

from agent.errors import SourceError
from agent.lab.snapshot import render_snapshot, write_snapshot
from agent.model import to_plain
from agent.sources import aws_live
from agent.sources.aws_actions import IAM_PREFIX, calls_for, iam_actions
from agent.sources.aws_live import (
    InstanceIdentity,
    LiveOptions,
    assume_role,
    dump_account,
    instance_identity,
)
from agent.sources.aws_snapshot import load_snapshot, parse_accounts

REGION = "ap-northeast-1"


def client(service: str):
    return boto3.client(
        service, region_name=REGION, aws_access_key_id="AKIDTEST", aws_secret_access_key="x"
    )


class Recorder:
    """Operation names as botocore builds each request (before the Stubber answers)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, model, **_: object) -> None:
        prefix = IAM_PREFIX[model.service_model.service_name]
        self.seen.append(f"{prefix}:{model.name}")


def stubbed(files: dict, side: str) -> tuple[dict, list[Stubber], Recorder]:
    """Clients whose stubbed responses are one account's snapshot files, in call order."""
    clients = {"ec2": client("ec2"), "elbv2": client("elbv2")}
    stubs = {name: Stubber(c) for name, c in clients.items()}
    rec = Recorder()
    for c in clients.values():
        c.meta.events.register("before-parameter-build.*.*", rec)
    for call in calls_for(side):
        stub = stubs[call.service]
        if call.per is None:
            stub.add_response(call.method, files[call.file], {})
            continue
        for item in files[f"{call.per.source}.json"][call.per.list_key]:
            rid = item[call.per.id_key]
            stub.add_response(call.method, files[call.resource_file(rid)], {call.per.param: rid})
    for s in stubs.values():
        s.activate()
    return clients, list(stubs.values()), rec


@pytest.mark.parametrize("make", [reference, enriched], ids=["reference", "enriched"])
def test_live_read_equals_the_snapshot_read(make, tmp_path: Path):
    t = make()
    snapshot = load_snapshot(write_snapshot(t, tmp_path))
    rendered = render_snapshot(t)
    dumps = []
    for side in ("consumer", "provider"):
        clients, stubs, _ = stubbed(rendered[side], side)
        dumps.append(dump_account(clients, side, options=LiveOptions()))
        for s in stubs:
            s.assert_no_pending_responses()
    live = parse_accounts(dumps)
    a, b = to_plain(live), to_plain(snapshot)
    a.pop("source"), b.pop("source")
    assert a == b


@pytest.mark.parametrize("side", ["consumer", "provider"])
def test_live_read_calls_only_the_actions_listed_for_its_side(side):
    clients, _, rec = stubbed(render_snapshot(reference())[side], side)
    dump_account(clients, side, options=LiveOptions())
    assert rec.seen and set(rec.seen) <= set(iam_actions(side))


def test_live_account_id_comes_from_the_role_arn_when_assuming_one():
    clients, _, _ = stubbed(render_snapshot(reference())["consumer"], "consumer")
    options = LiveOptions(role_arn="arn:aws:iam::333333333333:role/plprobe-read")
    assert dump_account(clients, "consumer", options=options).id == "333333333333"


def test_access_denied_is_a_source_error_naming_the_missing_action():
    ec2 = client("ec2")
    with Stubber(ec2) as stub:
        stub.add_client_error("describe_vpcs", "UnauthorizedOperation", "not allowed")
        with pytest.raises(SourceError, match=r"needs ec2:DescribeVpcs"):
            aws_live.fetch_account({"ec2": ec2, "elbv2": client("elbv2")}, "consumer")


def test_assume_role_passes_the_external_id_and_uses_the_temporary_credentials():
    sts = client("sts")
    options = LiveOptions(role_arn="arn:aws:iam::222222222222:role/r", external_id="ext-1")
    with Stubber(sts) as stub:
        stub.add_response(
            "assume_role",
            {
                "Credentials": {
                    "AccessKeyId": "ASIATEMPORARYKEY01",
                    "SecretAccessKey": "secret",
                    "SessionToken": "token",
                    "Expiration": "2030-01-01T00:00:00Z",
                }
            },
            {"RoleArn": options.role_arn, "RoleSessionName": "plprobe", "ExternalId": "ext-1"},
        )
        session = assume_role(sts, options, REGION)
    creds = session.get_credentials()
    assert (creds.access_key, creds.token, session.region_name) == (
        "ASIATEMPORARYKEY01",
        "token",
        REGION,
    )


def test_retry_mode_and_timeouts_reach_botocore():
    config = aws_live._botocore_config(LiveOptions(retry_mode="adaptive", max_attempts=7))
    assert config.retries == {"mode": "adaptive", "max_attempts": 7}
    assert (config.connect_timeout, config.read_timeout) == (5.0, 30.0)


def test_missing_boto3_is_a_source_error_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(SourceError, match=r"pip install 'plprobe\[aws\]'"):
        aws_live.make_clients(LiveOptions(region=REGION))


# --- IMDSv2 ---------------------------------------------------------------------------------------


class FakeImds(http.server.BaseHTTPRequestHandler):
    token = "tok-123"
    fail_get = False
    requests: ClassVar[list[tuple[str, str]]] = []

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def reply(self, code: int, body: str) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_PUT(self) -> None:
        self.requests.append(("PUT", self.path))
        if (
            self.path == "/latest/api/token"
            and self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        ):
            self.reply(200, self.token)
        else:
            self.reply(400, "")

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path))
        if self.headers["X-aws-ec2-metadata-token"] != self.token:
            self.reply(401, "")
        elif self.fail_get:
            self.reply(500, "")
        else:
            data = {
                "/latest/meta-data/instance-id": "i-0123456789abcdef0",
                "/latest/meta-data/placement/region": REGION,
            }
            self.reply(200, data[self.path]) if self.path in data else self.reply(404, "")


@pytest.fixture
def imds() -> Iterator[tuple[str, type[FakeImds]]]:
    handler = type("Handler", (FakeImds,), {"requests": [], "fail_get": False})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_imds_gives_instance_id_and_region_after_a_token_put(imds):
    url, handler = imds
    assert instance_identity(url) == InstanceIdentity("i-0123456789abcdef0", REGION)
    assert handler.requests[0] == ("PUT", "/latest/api/token")


def test_imds_that_fails_after_the_token_is_a_source_error(imds):
    url, handler = imds
    handler.fail_get = True
    with pytest.raises(SourceError, match="instance-id"):
        instance_identity(url)


def test_no_imds_listening_means_not_on_ec2():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert instance_identity(f"http://127.0.0.1:{port}", timeout_s=0.5) is None


def test_an_imds_that_never_answers_gives_up_within_the_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # accepts into the backlog, never replies
        start = time.monotonic()
        assert instance_identity(f"http://127.0.0.1:{s.getsockname()[1]}", timeout_s=0.3) is None
        assert time.monotonic() - start < 2.0


def test_region_comes_from_imds_when_nothing_else_sets_it(imds, monkeypatch):
    url, _ = imds
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    clients = aws_live.make_clients(LiveOptions(imds_url=url))
    assert clients["ec2"].meta.region_name == REGION
