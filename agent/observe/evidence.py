"""Answering evidence queries: one target speaks for the provider fleet, through the endpoint.

A client's query arrives on the responder port like a probe (the NLB picks one target), and
the responder hands it here once it has verified the MAC and the replay guard let it through
(``Responder(evidence=...)``). The answer (docs/WIRE.md, "Evidence query and answer") holds:

- **coverage**: this agent and every configured peer, each with how old its part is or why it
  is missing (a peer that did not answer makes the answer *partial*: the client then cannot
  trust a "not seen");
- **observations** (``seen-only`` and up): this client agent's observations since the query's
  ``since``, from this agent's store and from each peer, asked with a *peer query* (same
  format, peer flag: answered from the peer's own store, never fanned out again) over the
  responder port inside the provider VPC. On demand, not replicated: a peer's part is as fresh
  as the query, nothing is held between queries, and memory is bounded by the answer size;
- **findings** (``findings``): the provider's own findings for this client's flow
  (``agent.observe.findings``).

Why peers are asked on demand rather than synchronised in the background: the client queries
right after its probes, and a background exchange with any period would miss exactly those
probes; an on-demand fan-out with a short per-peer timeout is both fresher and stateless.

Hostile input: the responder closes forged, malformed, replayed and oversized queries without
writing a byte and counts them (``counters``); an answer is never larger than
``max_answer_bytes``, and only an authenticated, fresh query gets one, on the TCP connection
that carried it, so the service cannot be used to amplify traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.errors import WireError
from agent.observe.store import ObservationStore
from agent.wire.evidence import (
    ANSWER_MAX,
    SHARE_LEVELS,
    Coverage,
    EvidenceAnswer,
    EvidenceQuery,
    answer_length,
    decode_answer,
    encode_answer,
    encode_query,
)

__all__ = [
    "EvidenceCounters",
    "EvidenceService",
    "ask",
    "is_local_address",
    "parse_peer",
]

log = logging.getLogger(__name__)

#: observations per answer before the encoder's size limit (the newest are kept)
MAX_OBSERVATIONS = 500
_DEFAULTS = {"answered": True}

FindingsFn = Callable[[str, tuple[int, ...]], Awaitable[list[dict[str, Any]]]]
PeersFn = Callable[[], Awaitable[list[str]]]


@dataclass
class EvidenceCounters:
    """Monotonic counters of the evidence channel (plain ints: one event loop)."""

    queries: int = 0  # authenticated, fresh queries from clients
    peer_queries: int = 0  # authenticated, fresh queries from peer agents
    answered: int = 0  # answers written
    rejected_forged: int = 0  # query MAC did not verify: nothing sent
    rejected_malformed: int = 0  # not a query / oversized / truncated at EOF: nothing sent
    rejected_replayed: int = 0  # stale, future or seen before: nothing sent
    truncated: int = 0  # answers that dropped observations to fit
    peer_failures: int = 0  # peers that did not answer in time (or answered wrongly)
    bytes_out: int = 0  # answer bytes written

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def parse_peer(text: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def is_local_address(host: str) -> bool:
    """Is ``host`` one of this machine's addresses? (binding to it succeeds only then)"""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, addr in infos:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((addr[0], 0))
            return True
    return False


def _compact(obs: dict[str, Any]) -> dict[str, Any]:
    """Leave out empty and default fields: an observation costs ~40% fewer bytes."""
    return {k: v for k, v in obs.items() if v not in (None, "") and _DEFAULTS.get(k) is not v}


async def ask(
    host: str,
    port: int,
    query: EvidenceQuery | Callable[[str], EvidenceQuery],
    key: bytes,
    *,
    insecure: bool = False,
    timeout_s: float = 1.0,
) -> EvidenceAnswer:
    """Send ``query`` to ``host:port`` and return the verified answer to it.

    ``query`` may be a function of this end's local address (the client's private IP as the
    connection leaves it, which the query must carry). Raises ``WireError`` for a bad answer
    (forged, malformed, another query's; no answer at all is ``TruncatedError``), ``OSError``
    or ``TimeoutError`` when the channel does not carry it. Reads at most ``ANSWER_MAX`` bytes.
    """
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            if not isinstance(query, EvidenceQuery):
                local = str(writer.get_extra_info("sockname")[0]).split("%", 1)[0]
                query = query(local)
            writer.write(encode_query(query, key, insecure=insecure))
            await writer.drain()
            buf = bytearray()
            while True:
                need = answer_length(buf) or 64
                if len(buf) >= need:
                    break
                chunk = await reader.read(min(ANSWER_MAX + 1, need) - len(buf) or 1)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > ANSWER_MAX:
                    break
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 0.5)
    answer = decode_answer(bytes(buf), key, insecure=insecure)
    if answer.query_id != query.query_id:
        raise WireError("the answer is for another query")
    return answer


class EvidenceService:
    """Builds the answer to one verified query (module docstring)."""

    def __init__(
        self,
        *,
        key: bytes,
        agent_id: str,
        store: ObservationStore,
        share: str = "seen-only",
        peers: Sequence[str] = (),
        peer_timeout: float = 1.0,
        max_answer_bytes: int = ANSWER_MAX,
        findings: FindingsFn | None = None,
        insecure: bool = False,
        clock_ns: Callable[[], int] = time.time_ns,
        skip_local_peers: bool = True,
        discover: PeersFn | None = None,
    ) -> None:
        if share not in SHARE_LEVELS:
            raise ValueError(f"share must be one of {SHARE_LEVELS}")
        self.key = bytes(key)
        self.insecure = insecure
        self.agent_id = agent_id
        self.store = store
        self.share = share
        self.peer_timeout = peer_timeout
        self.max_answer_bytes = min(max_answer_bytes, ANSWER_MAX)
        self.findings = findings
        self.counters = EvidenceCounters()
        self._clock_ns = clock_ns
        self._skip_local = skip_local_peers
        self._local: dict[str, bool] = {}
        self.peers = self._not_local([parse_peer(p) for p in peers])
        #: with no configured peers: where to find them (the provider's view), per query
        self.discover = discover if not peers else None

    def _not_local(self, peers: list[tuple[str, int]]) -> list[tuple[str, int]]:
        if not self._skip_local:
            return peers
        for host, _ in peers:
            if host not in self._local:
                self._local[host] = is_local_address(host)
        return [(h, p) for h, p in peers if not self._local[h]]

    async def _current_peers(self) -> list[tuple[str, int]]:
        """The configured peers, or those the provider's view lists right now."""
        if self.discover is None:
            return self.peers
        try:
            found = [parse_peer(p) for p in await self.discover()]
        except Exception:  # discovery is best effort: answer for this agent alone
            log.exception("peer discovery failed")
            return []
        return self._not_local(found)

    def _own(self, query: EvidenceQuery) -> tuple[dict[str, Any], ...]:
        """This client's observations, plus SYN-tag matches (they carry no agent id: a tag
        says "a tagged SYN arrived", which is how a reset by a stopped service is seen)."""
        page = self.store.since(query.since_ns / 1e9)
        mine = [o for o in page.observations if o.agent in (query.agent_id, "")]
        return tuple(_compact(o.to_json()) for o in mine[-MAX_OBSERVATIONS:])

    async def _peer(
        self, host: str, port: int, query: EvidenceQuery
    ) -> tuple[list[Coverage], tuple[dict[str, Any], ...]]:
        label = f"{host}:{port}"
        ask_peer = EvidenceQuery.new(
            query.agent_id, query.client_ip, query.since_ns, ports=(), peer=True
        )
        started = time.monotonic()
        try:
            answer = await ask(
                host,
                port,
                ask_peer,
                self.key,
                insecure=self.insecure,
                timeout_s=self.peer_timeout,
            )
        except TimeoutError:
            error = f"no answer within {self.peer_timeout:g}s"
        except (OSError, WireError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            age = time.monotonic() - started
            covers = [Coverage(c.target, c.ok, age, c.error) for c in answer.covers] or [
                Coverage(answer.agent_id, True, age)
            ]
            return covers, answer.observations
        self.counters.peer_failures += 1
        return [Coverage(label, False, 0.0, error)], ()

    async def answer(self, query: EvidenceQuery) -> bytes:
        """The encoded answer to ``query`` (already verified and replay-checked)."""
        if query.peer:
            self.counters.peer_queries += 1
        else:
            self.counters.queries += 1
        level = self.share
        covers = [Coverage(self.agent_id, True, 0.0)]
        observations: tuple[dict[str, Any], ...] = ()
        findings: tuple[dict[str, Any], ...] = ()
        if level != "none":
            observations = self._own(query)
        peers = await self._current_peers() if not query.peer else []
        if peers:
            parts = await asyncio.gather(*(self._peer(h, p, query) for h, p in peers))
            for peer_covers, peer_obs in parts:
                covers.extend(peer_covers)
                if level != "none":
                    observations += peer_obs
        if level == "findings" and not query.peer and self.findings is not None:
            try:
                findings = tuple(await self.findings(str(query.client_ip), query.ports))
            except Exception:  # findings are extra evidence: never lose the answer over them
                log.exception("provider findings failed")
        observations = tuple(sorted(observations, key=lambda o: o.get("seen_at", 0.0)))
        answer = EvidenceAnswer(
            query_id=query.query_id,
            agent_id=self.agent_id,
            sent_ns=self._clock_ns(),
            level=level,
            covers=tuple(covers),
            observations=observations,
            findings=findings,
            partial=any(not c.ok for c in covers),
        )
        data = encode_answer(
            answer, self.key, insecure=self.insecure, max_len=self.max_answer_bytes
        )
        if data[5] & 0x01:
            self.counters.truncated += 1
        return data

    def count_rejected(self, reason: str) -> None:
        """The responder refused a query (``forged``, ``malformed``, ``replayed``)."""
        name = f"rejected_{reason}"
        setattr(self.counters, name, getattr(self.counters, name) + 1)

    def count_written(self, size: int) -> None:
        self.counters.answered += 1
        self.counters.bytes_out += size
