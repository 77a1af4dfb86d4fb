"""Live AWS -> Topology: boto3, read-only, paginated, with retries.

Why it is this thin: live reading is "fetch the same describe-* outputs a snapshot holds,
then parse them with the snapshot parser" (``aws_snapshot.parse_accounts``). The calls come
from ``aws_actions.CALLS`` only, so the IAM policies in ``deploy/iam/`` are complete by
construction, and a test checks the operations actually made against that table.

Blocking: boto3 is synchronous. The asyncio agent must call :func:`load_live` through
``asyncio.to_thread``; every network wait here has an explicit timeout (botocore
connect/read timeouts, IMDS timeouts).

boto3 is the optional extra ``plprobe[aws]``; it is imported only when a live read starts.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from agent.errors import SourceError
from agent.model import Topology
from agent.sources.aws_actions import ApiCall, Side, calls_for
from agent.sources.aws_snapshot import AccountDump, parse_accounts

log = logging.getLogger(__name__)

IMDS_URL = "http://169.254.169.254"
_INSTALL = "live AWS reads need boto3: pip install 'plprobe[aws]'"


# --- IMDSv2 ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceIdentity:
    instance_id: str
    region: str


def instance_identity(
    base_url: str = IMDS_URL, *, timeout_s: float = 1.0, token_ttl_s: int = 60
) -> InstanceIdentity | None:
    """This EC2 instance's id and region through IMDSv2, or ``None`` when not on EC2.

    IMDSv2: PUT a session token, then GET with it. "Not on EC2" (nothing answers, or the
    token request is refused — e.g. a container beyond the hop limit) is ``None``; an IMDS
    that hands out a token and then fails is a :class:`SourceError`.
    """
    base = base_url.rstrip("/")
    try:
        req = urllib.request.Request(
            f"{base}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(token_ttl_s)},
        )
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            token = resp.read().decode()
    except (OSError, urllib.error.URLError) as exc:  # HTTPError, timeouts, refused
        log.debug("IMDS token request failed (%s): not on EC2", exc)
        return None

    def get(path: str) -> str:
        req = urllib.request.Request(
            f"{base}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.read().decode().strip()
        except (OSError, urllib.error.URLError) as exc:
            raise SourceError(f"IMDS {base}: GET {path} failed: {exc}") from exc

    return InstanceIdentity(get("instance-id"), get("placement/region"))


# --- sessions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveOptions:
    """How to reach one account. Everything optional: the default credential chain and the
    region from the environment, the profile or (on EC2) IMDS."""

    region: str | None = None
    profile: str | None = None
    #: assume this role first (``sts:AssumeRole``), e.g. the other side's read-only role
    role_arn: str | None = None
    external_id: str | None = None
    session_name: str = "plprobe"
    #: account id; default: the role ARN's, else the owner of the resources read
    account_id: str | None = None
    retry_mode: str = "standard"  # or "adaptive"
    max_attempts: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    imds_url: str | None = IMDS_URL
    imds_timeout_s: float = 1.0


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise SourceError(_INSTALL) from exc
    return boto3


def _botocore_config(options: LiveOptions) -> Any:
    from botocore.config import Config

    return Config(
        retries={"mode": options.retry_mode, "max_attempts": options.max_attempts},
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
        user_agent_extra="plprobe",
    )


def assume_role(sts: Any, options: LiveOptions, region: str) -> Any:
    """A boto3 Session with ``options.role_arn``'s temporary credentials.

    The *caller* needs ``sts:AssumeRole`` on that ARN (and the role's trust policy must name
    the caller, with the external id if one is set); the assumed role needs only the
    read-only policy of its side (``deploy/iam/``).
    """
    boto3 = _boto3()
    params: dict[str, Any] = {
        "RoleArn": options.role_arn,
        "RoleSessionName": options.session_name,
    }
    if options.external_id:
        params["ExternalId"] = options.external_id
    creds = sts.assume_role(**params)["Credentials"]
    return boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=region,
    )


def make_clients(options: LiveOptions) -> dict[str, Any]:
    """``{"ec2": client, "elbv2": client}`` for the account ``options`` point at."""
    boto3 = _boto3()
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        session = boto3.Session(profile_name=options.profile, region_name=options.region)
        region = session.region_name
        if region is None and options.imds_url:
            ident = instance_identity(options.imds_url, timeout_s=options.imds_timeout_s)
            region = ident.region if ident else None
        if region is None:
            raise SourceError("no AWS region: pass --region, set AWS_REGION, or run on EC2")
        config = _botocore_config(options)
        if options.role_arn:
            sts = session.client("sts", region_name=region, config=config)
            session = assume_role(sts, options, region)
        return {
            name: session.client(name, region_name=region, config=config)
            for name in ("ec2", "elbv2")
        }
    except (BotoCoreError, ClientError) as exc:
        raise SourceError(f"AWS session: {exc}") from exc


# --- fetching -----------------------------------------------------------------------------------


def _call(client: Any, call: ApiCall, params: dict[str, Any]) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if client.can_paginate(call.method):
            pages = client.get_paginator(call.method).paginate(**params)
            result = pages.build_full_result()
        else:
            result = getattr(client, call.method)(**params)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        hint = (
            f" (the role needs {call.iam_action}; see deploy/iam/)"
            if "AccessDenied" in code or "UnauthorizedOperation" in code
            else ""
        )
        raise SourceError(f"aws {call.service} {call.cli_name}: {exc}{hint}") from exc
    except BotoCoreError as exc:
        raise SourceError(f"aws {call.service} {call.cli_name}: {exc}") from exc
    result.pop("ResponseMetadata", None)
    for marker in ("NextToken", "NextMarker"):
        result.pop(marker, None)
    return result


def fetch_account(clients: dict[str, Any], side: Side) -> dict[str, Any]:
    """Every describe-* output one side reads, keyed like a snapshot directory's files."""
    files: dict[str, Any] = {}
    for call in calls_for(side):
        client = clients[call.service]
        if call.per is None:
            files[call.file] = _call(client, call, {})
            continue
        listing = files.get(f"{call.per.source}.json") or {}
        for item in listing.get(call.per.list_key) or []:
            rid = item[call.per.id_key]
            files[call.resource_file(rid)] = _call(client, call, {call.per.param: rid})
    return files


def _owner(files: dict[str, Any]) -> str | None:
    for key, member in (("ec2-describe-vpcs.json", "Vpcs"),):
        for item in (files.get(key) or {}).get(member) or []:
            if item.get("OwnerId"):
                return str(item["OwnerId"])
    return None


def dump_account(
    clients: dict[str, Any], side: Side, *, name: str | None = None, options: LiveOptions
) -> AccountDump:
    """Fetch one account into the snapshot parser's input."""
    files = fetch_account(clients, side)
    region = clients["ec2"].meta.region_name
    account_id = options.account_id
    if account_id is None and options.role_arn:
        account_id = options.role_arn.split(":")[4]
    if account_id is None:
        account_id = _owner(files)
    if account_id is None:
        raise SourceError("cannot tell the account id (no VPCs visible): pass --account-id")
    return AccountDump(name or side, account_id, side, region, files, origin=f"aws:{account_id}")


def load_live(accounts: list[tuple[Side, LiveOptions]]) -> Topology:
    """Read each (side, options) account live and parse them together."""
    dumps = [
        dump_account(make_clients(options), side, options=options) for side, options in accounts
    ]
    return parse_accounts(dumps)
