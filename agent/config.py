"""Agent configuration: one YAML schema for both roles, typed and frozen.

A config file says ``role: client`` (send probes through an interface endpoint) or
``role: provider`` (observe what arrives at an NLB target). Both share the common keys
(``agent_id``, ``listen``, ``api_token_file``, ``key_file``/``key_env``, ``insecure``,
``log_format``). Every mistake is reported as ``file:line:col: key: message`` and exits 2
(``ConfigError``): the YAML goes through ``agent.yamlsrc`` so each value keeps its position.

The shared HMAC key never lives in the YAML: a config file gets copied, pasted into tickets and
committed, a key file (mode 0600) or an environment variable does not. ``insecure: true``
(lab only) turns authentication off; it must be written out, it conflicts with a key, and the
``probe`` command prints it. ``load_config`` reads the key once, so a missing key file is an
error at load time that points at the ``key_file`` line, not a surprise at the first probe.

``agent_id`` may be left out: it then comes from ``$PLPROBE_AGENT_ID`` or the host name, so
one provider config can serve every target.

Path ids (stable: metric labels on both sides) are ``<agent_id>/<az_id>/<port>``,
one per (endpoint ENI/AZ, port). They must be unique within one agent and, with the agent id,
fit in a probe token (``agent.wire.token.TOKEN_STRINGS_MAX``); both are checked at load time.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from agent.config_provider import EvidenceConfig, ProviderProbesConfig, ProviderProbeTarget
from agent.config_types import AGENT_ID, AZ_ID, ENDPOINT_ID, Port, Seconds, StrictModel, ip_text
from agent.errors import ConfigError
from agent.results import path_id  # re-exported: one definition, ground floor
from agent.yamlsrc import Loc, Located, checking, load_yaml, validate

__all__ = [
    "INSECURE_NOTE",
    "AgentConfig",
    "AwsSource",
    "ClientConfig",
    "ConfigSources",
    "EvidenceConfig",
    "PathConfig",
    "ProviderConfig",
    "ProviderProbeTarget",
    "ProviderProbesConfig",
    "ResponderConfig",
    "SnifferConfig",
    "check_listen",
    "load_config",
    "load_key",
    "parse_listen",
    "path_id",
    "read_token_file",
    "require_role",
]

#: default bind of the agent's HTTP API (docs/CONFIGURATION.md)
DEFAULT_LISTEN = "0.0.0.0:9720"
#: fills ``agent_id`` when the YAML leaves it out
AGENT_ID_ENV = "PLPROBE_AGENT_ID"
#: the responder's default port on provider targets
DEFAULT_RESPONDER_PORT = 9721
#: said on every run with ``insecure: true`` (stderr, tables, the provider's log), so a lab
#: setting that reached production is noticed; one text, so it can be grepped for
INSECURE_NOTE = "WARNING: insecure: true - probe tokens and replies are NOT authenticated"

#: a key file is a few dozen bytes; reading stops here (``key_file: /dev/zero`` is an error)
KEY_FILE_MAX = 64 * 1024


def _check_file_path(value: str) -> str:
    """A path the agent will open later must be openable in principle now: no NUL byte (the
    OS cannot take one) and a ``~user`` that exists (``expanduser`` fails on any other)."""
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL byte")
    try:
        Path(value).expanduser()
    except RuntimeError:
        raise ValueError(f"cannot expand {value.split('/', 1)[0]!r}: no such user") from None
    return value


#: a file or directory named in the config (checked at load time, see ``_check_file_path``)
FilePath = Annotated[str, AfterValidator(_check_file_path)]


def check_listen(value: str) -> str:
    """A ``HOST:PORT`` listen address, returned unchanged; ``ValueError`` saying what is wrong.

    Public because ``plprobe run --listen`` checks its override with the same rule as the
    file's ``listen`` key.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:9720")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
                raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
    return value


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _check_urls(value: str | list[str]) -> str | list[str]:
    if isinstance(value, list):
        return [_check_url(v) for v in value]
    return _check_url(value)


#: one provider agent's URL or a list of them (checked, without a trailing ``/``); the same
#: rule for a client's default and a path's own
_ProviderUrls = Annotated[str | list[str], AfterValidator(_check_urls)]


class _Common(StrictModel):
    agent_id: str
    listen: str = DEFAULT_LISTEN
    api_token_file: FilePath | None = None
    key_file: FilePath | None = None
    key_env: str | None = None
    insecure: bool = False
    log_format: Literal["text", "json"] = "text"

    #: where the file came from (for relative paths and for error messages); not a YAML key
    _source: str | None = PrivateAttr(default=None)
    _marks: dict[Loc, tuple[int, int]] = PrivateAttr(default_factory=dict)

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, value: str) -> str:
        if not AGENT_ID.match(value):
            raise ValueError("1-32 characters: letters, digits, '.', '_', '-' (a metric label)")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return check_listen(value)

    @field_validator("key_env")
    @classmethod
    def _key_env(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be an environment variable name")
        return value

    @model_validator(mode="after")
    def _key_source(self) -> _Common:
        if self.key_file and self.key_env:
            raise ValueError("set one of key_file or key_env, not both")
        if self.insecure and (self.key_file or self.key_env):
            raise ValueError(
                "insecure: true turns authentication off; remove it or remove key_file/key_env"
            )
        if not self.insecure and not (self.key_file or self.key_env):
            raise ValueError(
                "no HMAC key: set key_file: PATH (mode 0600) or key_env: VAR; "
                "insecure: true runs without one (lab only)"
            )
        return self

    @property
    def source(self) -> str | None:
        return self._source

    def mark(self, key: Loc) -> tuple[int | None, int | None]:
        """1-based (line, column) of ``key`` in the file this config was loaded from.

        ``(None, None)`` for a key the file does not spell out (a default) or a config built in
        memory. Errors found after loading (a wrong role for a command, an unreadable key file)
        use it to point at the line to fix, as load-time errors do.
        """
        return self._marks.get(key, (None, None))

    def resolve_file(self, value: str) -> Path:
        """Relative paths in a config are relative to the config file, not to the cwd."""
        path = Path(value).expanduser()
        if not path.is_absolute() and self._source:
            path = Path(self._source).resolve().parent / path
        return path


# -------------------------------------------------------------------------------- client


class AwsSource(StrictModel):
    """Read-only live AWS settings for diagnosis (used by later issues)."""

    region: str | None = None
    profile: str | None = None
    role_arn: str | None = None


class ConfigSources(StrictModel):
    """Where diagnosis reads configuration: AWS-CLI snapshot directories and/or live AWS."""

    snapshot_dirs: list[FilePath] = Field(default_factory=list)
    aws: AwsSource | None = None
    #: seconds between re-reads of the configuration view by the daemon (agent/sources/views.py);
    #: slower than probing: configuration changes rarely and live reads cost API calls
    refresh_interval: Seconds = 300.0


def _probe_kinds(value: list[str]) -> list[str]:
    from agent.probes import PROBERS  # late: the table imports probers, which import us not

    for kind in value:
        if kind not in PROBERS:
            raise ValueError(f"unknown probe kind {kind!r}; known: {', '.join(PROBERS)}")
    if len(set(value)) != len(value):
        raise ValueError("a probe kind is listed twice")
    return value


class PathConfig(StrictModel):
    """One endpoint to probe: its DNS names, its expected ENI IPs, ports and probe kinds.

    ``interval``, ``timeout``, ``retries`` and ``provider_url`` override the client-wide
    values for this endpoint only (``ClientConfig.for_path``).
    """

    name: str = Field(min_length=1, max_length=64)
    regional: str | None = None
    #: AZ id -> zonal DNS name (AWS names zonal records after the AZ *name*; key them by AZ id)
    zonal: dict[str, str] = Field(default_factory=dict)
    private: str | None = None
    #: AZ id -> ENI IP, e.g. {apne1-az4: 10.2.0.20}
    expected_ips: dict[str, str] = Field(default_factory=dict)
    ports: list[Port] = Field(default_factory=lambda: [80], min_length=1)
    probes: list[str] = Field(default_factory=lambda: ["dns", "tcp"], min_length=1)
    responder_ports: list[Port] = Field(default_factory=list)
    http_path: str = "/"
    http_host: str | None = None
    interval: Seconds | None = None
    timeout: Seconds | None = None
    retries: Annotated[int, Field(ge=0, le=10)] | None = None
    provider_url: _ProviderUrls | None = None

    @field_validator("probes")
    @classmethod
    def _probes(cls, value: list[str]) -> list[str]:
        return _probe_kinds(value)

    @field_validator("expected_ips")
    @classmethod
    def _expected(cls, value: dict[str, str]) -> dict[str, str]:
        return {az: ip_text(ip) for az, ip in value.items()}

    @field_validator("http_path")
    @classmethod
    def _http_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PathConfig:
        if not (self.regional or self.zonal or self.private or self.expected_ips):
            raise ValueError(
                "nothing to probe: give a DNS name (regional, zonal, private) or expected_ips"
            )
        for az in (*self.zonal, *self.expected_ips):
            if not AZ_ID.match(az):
                raise ValueError(f"{az!r} is not an AZ id (e.g. apne1-az4)")
        stray = sorted(set(self.responder_ports) - set(self.ports))
        if stray:
            raise ValueError(f"responder_ports {stray} are not in ports")
        if len(set(self.ports)) != len(self.ports):
            raise ValueError("a port is listed twice")
        return self

    @property
    def provider_urls(self) -> tuple[str, ...] | None:
        if self.provider_url is None:
            return None
        return (
            (self.provider_url,) if isinstance(self.provider_url, str) else tuple(self.provider_url)
        )


class ClientConfig(_Common):
    role: Literal["client"]
    paths: list[PathConfig] = Field(min_length=1)
    interval: Seconds = 30.0
    timeout: Seconds = 2.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    #: probes in flight at once (per round)
    concurrency: Annotated[int, Field(ge=1, le=4096)] = 64
    #: where observations can be fetched: one URL or a list (one provider agent per target)
    provider_url: _ProviderUrls | None = None
    #: bearer token file for the provider's /v1 API
    provider_token_file: FilePath | None = None
    #: wait this long after the last probe before fetching observations (sniffer lag)
    provider_delay: Annotated[float, Field(ge=0, le=30)] = 0.25
    #: how far apart a probe and its observation may be (clock skew + in-flight time)
    correlation_window: Seconds = 30.0
    #: does the NLB keep the client's initial sequence number (AWS does not document it)?
    #: auto: assume so unless a round shows otherwise (agent.diagnose.correlate)
    nlb_preserves_isn: bool | Literal["auto"] = "auto"
    config_sources: ConfigSources = Field(default_factory=ConfigSources)

    @property
    def isn_preserved(self) -> bool | None:
        """``nlb_preserves_isn`` as ``correlate`` takes it (None: decide from the round)."""
        return None if self.nlb_preserves_isn == "auto" else self.nlb_preserves_isn

    @property
    def provider_urls(self) -> tuple[str, ...]:
        if self.provider_url is None:
            return ()
        if isinstance(self.provider_url, str):
            return (self.provider_url,)
        return tuple(self.provider_url)

    def for_path(self, path: PathConfig) -> PathSettings:
        """The effective timing/provider settings of one endpoint (path overrides win)."""
        urls = path.provider_urls
        return PathSettings(
            interval=path.interval if path.interval is not None else self.interval,
            timeout=path.timeout if path.timeout is not None else self.timeout,
            retries=path.retries if path.retries is not None else self.retries,
            provider_urls=urls if urls is not None else self.provider_urls,
        )


class PathSettings(StrictModel):
    interval: float
    timeout: float
    retries: int
    provider_urls: tuple[str, ...]


# -------------------------------------------------------------------------------- provider


class ResponderConfig(StrictModel):
    """The in-band responder on a probe port of the target."""

    enabled: bool = True
    port: Port = DEFAULT_RESPONDER_PORT
    bind: str = "0.0.0.0"
    #: expect a PROXY protocol v2 header first (target group ``proxy_protocol_v2.enabled``)
    proxy_v2: bool = False
    max_connections: Annotated[int, Field(ge=1, le=65536)] = 1024
    read_timeout: Seconds = 2.0
    max_bytes: Annotated[int, Field(ge=64, le=65536)] = 1024
    #: a token older (or further in the future) than this is a replay
    replay_window: Seconds = 30.0

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        return ip_text(value)


class SnifferConfig(StrictModel):
    """Passive observation of the real service port(s)."""

    enabled: bool = True
    interface: str = "eth0"
    ports: list[Port] = Field(default_factory=lambda: [80], min_length=1)
    #: PROXY v2 headers precede the token on these service ports
    proxy_v2: bool = False


class ProviderConfig(_Common):
    role: Literal["provider"]
    responder: ResponderConfig = Field(default_factory=ResponderConfig)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    sniffer: SnifferConfig = Field(default_factory=SnifferConfig)
    #: PROXY v2 endpoint ids that may connect (empty: any); others are reported
    expected_endpoint_ids: list[str] = Field(default_factory=list)
    #: how many observations the provider keeps for /v1/observations
    max_observations: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    #: and for how long
    observation_ttl: Seconds = 600.0
    config_sources: ConfigSources = Field(default_factory=ConfigSources)
    #: probes from inside the provider VPC (agent/daemon/provider_probes.py)
    probes: ProviderProbesConfig = Field(default_factory=ProviderProbesConfig)

    @field_validator("expected_endpoint_ids")
    @classmethod
    def _endpoint_ids(cls, value: list[str]) -> list[str]:
        for v in value:
            if not ENDPOINT_ID.match(v):
                raise ValueError(f"{v!r} is not a VPC endpoint id (vpce-0123456789abcdef0)")
        return value


AgentConfig = ClientConfig | ProviderConfig
_ROLES: dict[str, type[ClientConfig] | type[ProviderConfig]] = {
    "client": ClientConfig,
    "provider": ProviderConfig,
}


# -------------------------------------------------------------------------------- path ids


def _check_path_ids(config: ClientConfig, doc: Located) -> None:
    from agent.wire.token import PATH_ID_MAX, TOKEN_STRINGS_MAX

    seen: dict[str, int] = {}
    for i, path in enumerate(config.paths):
        azs = set(path.expected_ips) | set(path.zonal)
        # without per-AZ information the runner labels paths by ENI IP; budget for the longest
        labels = azs or {"255.255.255.255"}
        for az in sorted(labels):
            for port in path.ports:
                pid = path_id(config.agent_id, az, port)
                size = len(pid.encode()) + len(config.agent_id.encode())
                if len(pid.encode()) > PATH_ID_MAX or size > TOKEN_STRINGS_MAX:
                    raise doc.error(
                        ("paths", i),
                        f"path id {pid!r} plus agent id is {size} bytes; a probe token holds "
                        f"{TOKEN_STRINGS_MAX}: shorten agent_id or the AZ ids",
                    )
                if azs and pid in seen:
                    raise doc.error(
                        ("paths", i),
                        f"path id {pid!r} is also produced by paths[{seen[pid]}]; "
                        "probe one endpoint per (AZ, port) per agent, or use another agent_id",
                    )
                seen[pid] = i


# -------------------------------------------------------------------------------- loading


def default_agent_id() -> str:
    """``$PLPROBE_AGENT_ID``, else the host name (first label): for a config shared by many
    targets (the lab starts one provider agent per target from one file)."""
    value = os.environ.get(AGENT_ID_ENV) or socket.gethostname().split(".", 1)[0]
    return value[:32]


def _reject_inline_key(doc: Located) -> None:
    if isinstance(doc.value, dict):
        for name in ("key", "hmac_key", "secret"):
            if name in doc.value:
                raise doc.error(
                    (name,),
                    "the HMAC key must not be written in the config file; put it in a file "
                    "(key_file: /etc/plprobe/key, mode 0600) or an environment variable "
                    "(key_env: PLPROBE_KEY)",
                )


def parse_config(doc: Located) -> AgentConfig:
    """Validate an already loaded document (tests and the lab build configs in memory).

    With ``load_yaml`` this is the input boundary: whatever the document holds, the result
    is a config or a ConfigError (``checking`` maps what a check did not foresee).
    """
    with checking(doc):
        return _parse_config(doc)


def _parse_config(doc: Located) -> AgentConfig:
    if not isinstance(doc.value, dict):
        raise doc.error((), "an agent config is a mapping with role: client or role: provider")
    _reject_inline_key(doc)
    role = doc.value.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        loc: Loc = ("role",) if "role" in doc.value else ()
        raise doc.error(loc, f"role must be 'client' or 'provider' (got {role!r})")
    if "agent_id" not in doc.value:
        doc = Located({**doc.value, "agent_id": default_agent_id()}, doc.path, doc.marks)
    config = validate(_ROLES[role], doc)
    config._source = doc.path
    config._marks = doc.marks
    if isinstance(config, ClientConfig):
        _check_path_ids(config, doc)
    for name in ("api_token_file", "provider_token_file"):
        value = getattr(config, name, None)
        if value is not None and not config.resolve_file(value).is_file():
            raise doc.error((name,), f"file not found: {config.resolve_file(value)}")
    return config


def load_config(path: str | Path) -> AgentConfig:
    """Read, validate and check one agent config (the key is read once to fail early)."""
    config = parse_config(load_yaml(path))
    load_key(config)
    return config


_Role = TypeVar("_Role", ClientConfig, ProviderConfig)


def require_role(config: AgentConfig, role: type[_Role], *, command: str, hint: str = "") -> _Role:
    """``config`` if it has the role ``command`` needs, else ConfigError at its ``role:`` line.

    Every command that runs only one role calls this, so the refusal reads the same everywhere:
    ``plprobe <command> needs role: <role> (this is a <other> config[; <hint>])``, exit 2.
    """
    if isinstance(config, role):
        return config
    want = next(name for name, cls in _ROLES.items() if cls is role)
    line, col = config.mark(("role",))
    raise ConfigError(
        f"plprobe {command} needs role: {want} (this is a {config.role} config"
        + (f"; {hint})" if hint else ")"),
        path=config.source,
        line=line,
        col=col,
        key="role",
    )


def _key_error(config: _Common, key: str, message: str) -> ConfigError:
    line, col = config.mark((key,))
    return ConfigError(message, path=config.source, line=line, col=col, key=key)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` (validated at load time) -> (host, port)."""
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def read_token_file(config: AgentConfig, key: str) -> str | None:
    """The bearer token in the file a config key names (``api_token_file``, ...), or None.

    Read once at start/reload so a missing or empty file is bad input at that key, not a
    401 storm later.
    """
    name = getattr(config, key, None)
    if not name:
        return None
    path = config.resolve_file(name)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {key} {path}: {exc}", path=config.source, key=key) from exc
    if not token:
        raise ConfigError(f"{key} {path} is empty", path=config.source, key=key)
    return token


def load_key(config: AgentConfig) -> bytes:
    """The shared HMAC key: the bytes of ``key_file`` or ``$key_env``, trailing whitespace cut.

    ``b""`` when ``insecure: true``. Generate one with ``head -c 32 /dev/urandom | base64``.
    """
    from agent.wire.mac import MIN_KEY_LEN

    if config.insecure:
        return b""
    if config.key_file:
        file = config.resolve_file(config.key_file)
        try:
            with open(file, "rb") as stream:
                key = stream.read(KEY_FILE_MAX + 1).rstrip()
        except FileNotFoundError:
            raise _key_error(config, "key_file", f"key file not found: {file}") from None
        except OSError as exc:
            raise _key_error(config, "key_file", f"cannot read key file {file}: {exc}") from exc
        where, what = "key_file", f"key file {file}"
        if len(key) > KEY_FILE_MAX:
            raise _key_error(config, "key_file", f"{what} is larger than {KEY_FILE_MAX} bytes")
        if file.stat().st_mode & 0o007:
            # group access is how the service user reads it (0640 root:plprobe); others never
            raise _key_error(
                config,
                "key_file",
                f"key file {file} is accessible to every user on this host: chmod o-rwx {file} "
                "(e.g. 0600, or 0640 with the agent's group)",
            )
    else:
        assert config.key_env is not None  # the model validator guarantees one of the two
        value = os.environ.get(config.key_env)
        if value is None:
            raise _key_error(config, "key_env", f"environment variable {config.key_env} is not set")
        key = value.encode("utf-8").rstrip()
        where, what = "key_env", f"${config.key_env}"
    if len(key) < MIN_KEY_LEN:
        raise _key_error(
            config,
            where,
            f"{what} holds {len(key)} bytes; the key needs at least {MIN_KEY_LEN} "
            "(head -c 32 /dev/urandom | base64)",
        )
    return key


def config_summary(config: AgentConfig) -> dict[str, Any]:
    """What the agent says about itself at start-up (never the key)."""
    return {
        "agent_id": config.agent_id,
        "role": config.role,
        "source": config.source,
        "insecure": config.insecure,
        "key": "none (insecure)" if config.insecure else (config.key_file or f"${config.key_env}"),
    }
