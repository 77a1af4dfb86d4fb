"""TCP probe: connect to one endpoint ENI IP, send the token as the first bytes, read the reply.

The connect alone tells whether the path is open (``ok``), closed at the target (``refused``:
the NLB does not terminate TCP, so a target's RST reaches the client) or silently dropped by a
security group or NACL (``timeout``). The token makes the probe recognisable at the target
(responder or sniffer) although the NLB rewrites the source address and port. On a responder
port the target answers with an authenticated ``Reply`` saying what it saw; it is decoded,
verified and stored in ``ProbeResult.reply`` (in-band evidence that needs no provider API).

Error classification (``classify_oserror``, shared with the http probe):
    ECONNREFUSED                     refused   (RST, or ICMP port unreachable 3/3)
    timeout                          timeout   (silent drop: no RST, no ICMP)
    ENETUNREACH / EHOSTUNREACH / ... icmp_unreachable with an *inferred* type/code
    any other OSError                error
Limitation: a connected (non-raw) socket only sees the errno the kernel derived from an ICMP
error, not the ICMP message. Linux maps several codes onto one errno (EHOSTUNREACH is host
unreachable 1, host prohibited 10, communication prohibited 13 and a failed neighbour lookup;
ENETUNREACH is net unreachable 0, net prohibited 9, or no local route), so the code reported is
the most common one and ``detail["icmp_inferred"]`` is true. Also, for codes Linux treats as
soft errors (0, 1, 11, 12) a SYN_SENT socket keeps retrying, so an ICMP-answered connect may
still end as ``timeout``. The ``syn`` probe reads the ICMP message itself and is exact.

The socket is closed normally (FIN), so the responder sees a clean close; on a non-responder
port (the real service) the probe half-closes after the token and drains what the service
says for a moment, so closing does not turn unread data into an RST.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import time

from agent import wire
from agent.errors import ProbeError, TruncatedError, WireError
from agent.probes.base import ProbeContext, ProbeTarget
from agent.results import ProbeResult, hostport

__all__ = [
    "classify_oserror",
    "describe_oserror",
    "make_token",
    "new_result",
    "note_failure",
    "probe",
    "reply_to_dict",
]

#: errno -> inferred ICMP destination-unreachable (type, code); see the module docstring
_ICMP_BY_ERRNO: dict[int, tuple[int, int]] = {
    errno.ENETUNREACH: (3, 0),
    errno.EHOSTUNREACH: (3, 1),
    errno.ENOPROTOOPT: (3, 2),
    errno.EHOSTDOWN: (3, 7),
}
if hasattr(errno, "ENONET"):
    _ICMP_BY_ERRNO[errno.ENONET] = (3, 8)

#: how long a non-responder probe lingers to drain the service's answer before closing
_DRAIN_S = 0.1


def classify_oserror(exc: BaseException) -> tuple[str, tuple[int, int] | None]:
    """Map a socket failure to (outcome, inferred ICMP type/code)."""
    if isinstance(exc, TimeoutError):
        return "timeout", None
    if isinstance(exc, ConnectionRefusedError):
        return "refused", None
    if isinstance(exc, OSError) and exc.errno in _ICMP_BY_ERRNO:
        return "icmp_unreachable", _ICMP_BY_ERRNO[exc.errno]
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return "timeout", None
    return "error", None


def describe_oserror(exc: BaseException) -> str:
    """``os.strerror`` when there is an errno (asyncio's messages bury it in prose)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def reply_to_dict(reply: wire.Reply) -> dict[str, object]:
    """The JSON shape of a responder reply inside ``ProbeResult.reply`` (stable names)."""
    return {
        "probe_id": reply.probe_id_hex,
        "target": reply.agent_id,
        "recv_at": reply.recv_ns / 1e9,
        "src": hostport(reply.src_ip, reply.src_port),
        "local": hostport(reply.local_ip, reply.local_port),
        "proxy_endpoint_id": reply.vpce_id,
        "proxy_src": hostport(reply.proxy_src_ip, reply.proxy_src_port),
        "proxy_dst": hostport(reply.proxy_dst_ip, reply.proxy_dst_port),
    }


def make_token(target: ProbeTarget, ctx: ProbeContext) -> tuple[wire.Token, bytes]:
    """A fresh token for one attempt, encoded under the shared key."""
    try:
        token = wire.Token.new(target.path.id, ctx.agent_id)
        return token, wire.encode_token(token, ctx.key, insecure=ctx.insecure)
    except ValueError as exc:  # path/agent id too long, key too short: configuration
        raise ProbeError(f"cannot build a probe token for {target.path.id}: {exc}") from exc


def new_result(kind: str, target: ProbeTarget, token: wire.Token, started: float) -> ProbeResult:
    """The result of a token-carrying probe (``tcp``, ``http``) before it runs.

    "ok" until a step fails, and named by the token's probe id so that what the target observed
    can be matched to it.
    """
    return ProbeResult(
        path=target.path.id,
        probe=kind,
        outcome="ok",
        probe_id=token.probe_id_hex,
        started_at=started,
        target_ip=target.path.ip,
        port=target.port,
    )


def note_failure(result: ProbeResult, exc: BaseException, phase: str) -> str:
    """Record a socket failure in ``phase`` on ``result``; return the outcome.

    Sets the outcome, the phase and the ICMP error the errno implies, the same way for every
    probe kind; the error text stays the caller's (each probe words it for its own phases).
    """
    outcome, icmp = classify_oserror(exc)
    result.outcome = outcome
    result.detail["phase"] = phase
    if icmp is not None:
        result.icmp = icmp
        result.detail["icmp_inferred"] = True
    return outcome


async def _address(target: ProbeTarget, deadline: float) -> tuple[int, str]:
    host = target.host
    try:
        return (
            socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        ), host
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    async with asyncio.timeout_at(deadline):
        infos = await loop.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
    family, _, _, _, addr = infos[0]
    return family, str(addr[0])


async def _read_reply(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, ctx: ProbeContext, deadline: float
) -> wire.Reply:
    """Read exactly one reply (bounded by REPLY_MAX) or raise WireError / TimeoutError."""
    buf = bytearray()
    limit = min(wire.REPLY_MAX, max(ctx.max_read, 1))
    async with asyncio.timeout_at(deadline):
        while True:
            chunk = await loop.sock_recv(sock, limit + 1 - len(buf))
            if not chunk:
                if not buf:
                    raise TruncatedError("the target closed the connection without a reply")
                return wire.decode_reply(bytes(buf), ctx.key, insecure=ctx.insecure)
            buf += chunk
            try:
                return wire.decode_reply(bytes(buf), ctx.key, insecure=ctx.insecure)
            except TruncatedError:
                if len(buf) > limit:
                    raise
                continue


async def _drain(loop: asyncio.AbstractEventLoop, sock: socket.socket, ctx: ProbeContext) -> None:
    """Let the service's answer in before closing (unread data would make close() send RST)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        left = ctx.max_read
        async with asyncio.timeout(_DRAIN_S):
            while left > 0:
                chunk = await loop.sock_recv(sock, min(left, 4096))
                if not chunk:
                    return
                left -= len(chunk)
    except (TimeoutError, OSError):
        return


async def probe(target: ProbeTarget, ctx: ProbeContext) -> ProbeResult:
    loop = asyncio.get_running_loop()
    started = ctx.now()
    t0 = time.perf_counter()
    deadline = loop.time() + ctx.timeout_s
    token, payload = make_token(target, ctx)
    result = new_result("tcp", target, token, started)
    sock: socket.socket | None = None
    phase = "connect"
    mark = time.perf_counter()
    try:
        family, ip = await _address(target, deadline)
        result.target_ip = ip
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        mark = time.perf_counter()
        async with asyncio.timeout_at(deadline):
            await loop.sock_connect(sock, (ip, target.port))
        result.phases["connect"] = time.perf_counter() - mark
        phase, mark = "send", time.perf_counter()
        async with asyncio.timeout_at(deadline):
            await loop.sock_sendall(sock, payload)
        result.phases["send"] = time.perf_counter() - mark
        if target.responder:
            phase, mark = "reply", time.perf_counter()
            try:
                reply = await _read_reply(loop, sock, ctx, deadline)
            except TimeoutError:
                result.detail["reply_error"] = f"no reply within {ctx.timeout_s:g}s"
            except TruncatedError as exc:
                result.detail["reply_error"] = str(exc)
            except WireError as exc:  # forged or malformed: never believed
                result.outcome = "error"
                result.error = f"invalid reply from the responder: {exc}"
                result.detail["reply_error"] = type(exc).__name__
            else:
                result.phases["reply"] = time.perf_counter() - mark
                if reply.probe_id != token.probe_id:
                    result.outcome = "error"
                    result.error = f"reply for another probe ({reply.probe_id_hex})"
                else:
                    result.reply = reply_to_dict(reply)
        else:
            # the probe's answer is in (connected, token sent); the drain is only politeness
            # towards the service, so it must not count in the probe's duration
            result.duration_s = time.perf_counter() - t0
            await _drain(loop, sock, ctx)
    except (OSError, TimeoutError) as exc:
        outcome = note_failure(result, exc, phase)
        if phase == "connect" and "connect" not in result.phases:
            result.phases["connect"] = time.perf_counter() - mark
        if isinstance(exc, OSError) and exc.errno is not None:
            result.detail["errno"] = errno.errorcode.get(exc.errno, str(exc.errno))
        if outcome == "timeout":
            result.error = f"no answer to {phase} within {ctx.timeout_s:g}s"
        else:
            result.error = f"{phase}: {describe_oserror(exc)}"
    finally:
        if sock is not None:
            sock.close()
        if not result.duration_s:
            result.duration_s = time.perf_counter() - t0
    return result
