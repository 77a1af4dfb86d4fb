"""``plprobe config schema`` and ``plprobe config check FILE``: a config you can check first.

    config schema                         JSON Schema (2020-12) of the agent config, both roles,
                                          generated from the pydantic models: editors validate
                                          the YAML with it (yaml-language-server, VS Code, ...)
    config check FILE [--output table|json] [--no-resolve]
                                          validate without starting anything; exit 0 valid,
                                          2 invalid (every error as FILE:LINE:COL: key: message);
                                          then resolve the DNS names and say what would be probed

Why both: a deployment finds a typo when the daemon refuses to start on the host, which is
late (an ECS task crash-looping, a systemd unit failing). ``schema`` moves the error to the
editor; ``check`` to CI or the shell, with the same messages ``plprobe run`` would print.

``check`` reports *every* validation error of the document with its position (``run`` stops
at the first), then the checks that need the whole config (path ids, token files). What only
the target host can tell is a warning, not an error: the HMAC key (``key_env`` is set by the
deployment, a ``key_file`` may only exist there) and DNS names (endpoint names resolve only
inside the consumer VPC), so checking on a laptop does not fail a good file.

The probe plan follows the runner's labelling (``agent.diagnose.rounds``): one path per
(AZ id, port) when ``expected_ips`` gives the ENI IPs, else per resolved zonal name, else per
address the regional name returns.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import sys
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from agent.config import (
    AgentConfig,
    ClientConfig,
    ProviderConfig,
    default_agent_id,
    load_key,
    parse_config,
    path_id,
)
from agent.errors import ConfigError
from agent.yamlsrc import Located, load_yaml

__all__ = ["CheckReport", "ProbePlan", "check_file", "config_schema", "register"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: seconds per DNS name; names resolve in parallel
RESOLVE_TIMEOUT_S = 2.0
_MODELS: dict[str, type[ClientConfig] | type[ProviderConfig]] = {
    "client": ClientConfig,
    "provider": ProviderConfig,
}


# -- schema --------------------------------------------------------------------------------


def config_schema() -> dict[str, Any]:
    """The agent config's JSON Schema: one of the two roles, chosen by ``role``.

    ``agent_id`` is optional in the file (``$PLPROBE_AGENT_ID`` or the host name fill it), so
    it is removed from ``required``; everything else is pydantic's own schema of the models
    ``load_config`` validates with, so the two cannot drift apart.
    """
    union = Annotated[ClientConfig | ProviderConfig, Field(discriminator="role")]
    schema = TypeAdapter(union).json_schema()
    for name in ("ClientConfig", "ProviderConfig"):
        model = schema["$defs"][name]
        model["required"] = [k for k in model.get("required", []) if k != "agent_id"]
        model["title"] = f"plprobe {name.removesuffix('Config').lower()} agent"
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "plprobe agent configuration",
        "description": "plprobe agent config (role: client or role: provider); "
        "see docs/CONFIGURATION.md",
        **schema,
    }


# -- check ---------------------------------------------------------------------------------


@dataclass
class ProbePlan:
    """One path the client would probe: its id, where, and how."""

    path: str
    endpoint: str
    name: str  # the DNS name the path is probed by
    ip: str | None
    port: int
    probes: list[str]
    interval_s: float
    timeout_s: float
    retries: int


@dataclass
class Resolution:
    name: str
    kind: str  # regional | zonal | private
    az_id: str | None
    addresses: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def matches(self) -> bool | None:
        """Do the answers equal the expected ENI IPs? None: nothing expected or no answer."""
        if self.error or not self.expected:
            return None
        return sorted(self.addresses) == sorted(self.expected)


@dataclass
class CheckReport:
    """The outcome of ``config check``: valid or not, and what the config would do."""

    file: str
    valid: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    role: str | None = None
    agent_id: str | None = None
    resolved: list[Resolution] = field(default_factory=list)
    plan: list[ProbePlan] = field(default_factory=list)
    #: provider role: what it would listen on and watch
    provider: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.valid else 2

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["resolved"] = [{**asdict(r), "matches": r.matches} for r in self.resolved]
        return out


def _all_errors(doc: Located) -> list[ConfigError]:
    """Every schema error of the document with its position (``validate`` keeps the first)."""
    if not isinstance(doc.value, dict):
        return [doc.error((), "an agent config is a mapping with role: client or role: provider")]
    role = doc.value.get("role")
    if role not in _MODELS:
        loc = ("role",) if "role" in doc.value else ()
        return [doc.error(loc, f"role must be 'client' or 'provider' (got {role!r})")]
    value = doc.value if "agent_id" in doc.value else {**doc.value, "agent_id": "x"}
    try:
        _MODELS[role].model_validate(value)
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            err_loc = tuple(p for p in err["loc"] if not isinstance(p, str) or p)
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown key (check the spelling; see the configuration reference)"
            elif err["type"] == "missing":
                message = "required key is missing"
            out.append(doc.error(err_loc, message))
        return sorted(out, key=lambda e: (e.line or 0, e.col or 0))
    return []


def _resolve(name: str) -> list[str]:
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _resolutions(config: ClientConfig, timeout_s: float) -> list[Resolution]:
    wanted: list[Resolution] = []
    for p in config.paths:
        every = sorted(set(p.expected_ips.values()))
        if p.regional:
            wanted.append(Resolution(p.regional, "regional", None, expected=every))
        for az, name in sorted(p.zonal.items()):
            ip = p.expected_ips.get(az)
            wanted.append(Resolution(name, "zonal", az, expected=[ip] if ip else []))
        if p.private:
            wanted.append(Resolution(p.private, "private", None, expected=every))
    if not wanted:
        return []
    # getaddrinfo cannot be interrupted: a pool we do not wait for when a name hangs
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(wanted)))
    try:
        futures = [pool.submit(_resolve, r.name) for r in wanted]
        for r, fut in zip(wanted, futures, strict=True):
            try:
                r.addresses = fut.result(timeout=timeout_s)
            except concurrent.futures.TimeoutError:
                r.error = f"no answer within {timeout_s:g} s"
            except OSError as exc:
                r.error = exc.strerror or str(exc)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return wanted


def _plan(config: ClientConfig, resolved: list[Resolution] | None) -> list[ProbePlan]:
    """The paths a round would probe (module docstring: the runner's labelling)."""
    out: list[ProbePlan] = []
    answers = resolved or []
    for p in config.paths:
        s = config.for_path(p)
        display = p.regional or p.private or next(iter(sorted(p.zonal.values())), "")
        slots: dict[str, tuple[str | None, str | None]] = {}
        if p.expected_ips:
            slots = {az: (az, ip) for az, ip in sorted(p.expected_ips.items())}
        else:
            mine = [r for r in answers if r.name in {p.regional, p.private, *p.zonal.values()}]
            for r in mine:
                if r.kind == "zonal" and r.az_id:
                    slots[r.az_id] = (r.az_id, r.addresses[0] if r.addresses else None)
            known = {ip for _, ip in slots.values() if ip}
            for r in mine:
                for addr in r.addresses if r.kind != "zonal" else []:
                    if addr not in known:
                        slots[addr] = (None, addr)
                        known.add(addr)
            if not slots:
                slots[p.name] = (None, None)
        for label, (az, ip) in slots.items():
            name = p.zonal.get(az, display) if az else display
            for port in p.ports:
                out.append(
                    ProbePlan(
                        path=path_id(config.agent_id, label, port),
                        endpoint=p.name,
                        name=name or "",
                        ip=ip,
                        port=port,
                        probes=list(p.probes),
                        interval_s=s.interval,
                        timeout_s=s.timeout,
                        retries=s.retries,
                    )
                )
    return out


def _host_warnings(config: AgentConfig) -> list[str]:
    """What only the agent's host can tell: the key (module docstring)."""
    try:
        load_key(config)
    except ConfigError as exc:
        return [f"{exc} (on this host; it must hold where the agent runs)"]
    return []


def _provider_summary(config: ProviderConfig) -> dict[str, Any]:
    r, s = config.responder, config.sniffer
    return {
        "responder": f"{r.bind}:{r.port}" + (" (PROXY v2)" if r.proxy_v2 else "")
        if r.enabled
        else "off",
        "sniffer": f"{s.interface} ports {', '.join(map(str, s.ports))}" if s.enabled else "off",
        "expected_endpoint_ids": list(config.expected_endpoint_ids),
        "listen": config.listen,
    }


def check_file(
    path: str, *, resolve: bool = True, timeout_s: float = RESOLVE_TIMEOUT_S
) -> CheckReport:
    """Validate ``path`` as ``plprobe run`` would, collecting every error; never starts anything."""
    report = CheckReport(file=path, valid=False)
    try:
        doc = load_yaml(path)
    except ConfigError as exc:
        report.errors.append(str(exc))
        return report
    errors = _all_errors(doc)
    if errors:
        report.errors = [str(e) for e in errors]
        return report
    try:
        config = parse_config(doc)  # the checks that need the whole config
    except ConfigError as exc:
        report.errors.append(str(exc))
        return report
    report.valid = True
    report.role = config.role
    report.agent_id = config.agent_id
    if isinstance(doc.value, dict) and "agent_id" not in doc.value:
        report.warnings.append(
            f"agent_id not set: here it is {default_agent_id()!r} ($PLPROBE_AGENT_ID or the "
            "host name); on each host it will be that host's"
        )
    report.warnings += _host_warnings(config)
    if config.insecure:
        report.warnings.append("insecure: true: probes are not authenticated (lab only)")
    if isinstance(config, ClientConfig):
        if resolve:
            report.resolved = _resolutions(config, timeout_s)
            unresolved = [r for r in report.resolved if r.error]
            if unresolved:
                report.warnings.append(
                    f"{len(unresolved)} of {len(report.resolved)} DNS name(s) do not resolve "
                    "here (endpoint names resolve inside the consumer VPC)"
                )
            for r in report.resolved:
                if r.matches is False:
                    report.warnings.append(
                        f"{r.name} resolves to {', '.join(r.addresses)}, expected "
                        f"{', '.join(r.expected)}"
                    )
        report.plan = _plan(config, report.resolved if resolve else None)
    else:
        report.provider = _provider_summary(config)
    return report


def render_text(report: CheckReport) -> str:
    lines: list[str] = []
    if not report.valid:
        lines += report.errors
        lines.append(f"{report.file}: invalid ({len(report.errors)} error(s))")
        return "\n".join(lines) + "\n"
    lines.append(f"{report.file}: valid {report.role} config, agent {report.agent_id}")
    lines += [f"warning: {w}" for w in report.warnings]
    if report.resolved:
        width = max(len(r.name) for r in report.resolved)
        lines.append("")
        lines.append(f"{'NAME':{width}} {'KIND':16} ANSWER")
        for r in report.resolved:
            answer = r.error or ", ".join(r.addresses)
            mark = (
                ""
                if r.matches is None
                else " (as expected)"
                if r.matches
                else " (NOT the expected ENI IPs)"
            )
            kind = r.kind + (f" {r.az_id}" if r.az_id else "")
            lines.append(f"{r.name:{width}} {kind:16} {answer}{mark}")
    if report.plan:
        lines.append("")
        lines.append(f"would probe {len(report.plan)} path(s):")
        lines.append(f"{'PATH':32} {'TARGET':22} {'PROBES':20} EVERY")
        for p in report.plan:
            target = f"{p.ip or p.name}:{p.port}"
            every = f"{p.interval_s:g}s (timeout {p.timeout_s:g}s, {p.retries} retries)"
            lines.append(f"{p.path:32} {target:22} {','.join(p.probes):20} {every}")
    if report.provider:
        lines.append("")
        for k, v in report.provider.items():
            lines.append(f"{k}: {', '.join(v) if isinstance(v, list) else v or '-'}")
    return "\n".join(lines) + "\n"


# -- CLI -----------------------------------------------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    json.dump(config_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    report = check_file(args.file, resolve=not args.no_resolve, timeout_s=args.resolve_timeout)
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        out = sys.stdout if report.valid else sys.stderr
        out.write(render_text(report))
    return report.exit_code


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config", help="the agent config: its JSON Schema, or check a file before deploying"
    )
    sub = parser.add_subparsers(dest="config_command", metavar="CONFIG_COMMAND")
    sub.required = True
    schema = sub.add_parser("schema", help="print the config's JSON Schema (for editors)")
    schema.set_defaults(func=cmd_schema)
    check = sub.add_parser(
        "check",
        help="validate a config file without starting anything (exit 0 valid, 2 invalid)",
        description="Validate FILE as plprobe run would (every error as FILE:LINE:COL: key: "
        "message), resolve its DNS names and list the paths it would probe.",
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument("--output", choices=("table", "json"), default="table")
    check.add_argument("--no-resolve", action="store_true", help="do not resolve DNS names")
    check.add_argument(
        "--resolve-timeout",
        type=float,
        default=RESOLVE_TIMEOUT_S,
        metavar="SECONDS",
        help="per DNS name (default: %(default)s)",
    )
    check.set_defaults(func=cmd_check)


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.cli.config``: the ``config`` command through the one CLI entry."""
    from agent.cli import main as cli_main

    return cli_main(["config", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
