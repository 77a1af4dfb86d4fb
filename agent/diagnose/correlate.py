"""Join what the client saw with what the targets saw: ProbeResult × Observation -> PathEvidence.

The join key is the probe's identity, never its addresses. The NLB rewrites the source IP and
port (the target sees ``nlb_ip:remapped_port``) and the listener port may differ from the target
port, so a 5-tuple join would be wrong exactly when it matters. Two keys are used:

* **token probe id** (tcp, http): 16 random bytes, authenticated by the HMAC. Every attempt of
  a retried probe has its own id; all of them are listed in ``detail["probe_ids"]`` and any of
  them joins (a return-path drop shows the target seeing each retry).
* **ISN tag** (syn): the initial sequence number; observations of kind ``syn_tag`` carry it.
  Whether the NLB keeps the ISN is undocumented: a tag that arrives proves arrival; a missing
  tag counts as "not seen" only while the ISN is known (or, in auto mode, not contradicted by
  the round itself) to be preserved — see ``correlate(isn_preserved=...)``.
  A tag has only 32 bits of which a few are random, so two probes of one round can share an
  ISN; an observed ISN that matches probes on more than one path is ambiguous and joins none.

An observation joins only within ``window_s`` of the probe's start (clock skew plus in-flight
time), and never when the token's path id (authenticated, when present) names another path.

``seen_at_target``:
    yes      an observation joined, or a tcp probe got an authenticated reply from the responder
             (in-band evidence counts even when the provider API is unreachable)
    no       the provider's observations were fetched and none joins a tagged probe we sent
    unknown  no provider evidence (not configured / unreachable: ``provider_error`` says why), or
             nothing identifiable was sent on the path (only DNS, or a connect that never
             completed and no syn tag)

Deciding outcome of a path over its probe kinds (the first that applies):
    1. ``dns_error`` if any dns probe failed: clients use the name, so a wrong or missing answer
       breaks the path even if the ENI IP itself answers;
    2. ``ok`` if every connecting probe (syn, tcp, http) is ok;
    3. otherwise the most telling failure: ``timeout`` (a silent drop: an SG or NACL), then
       ``icmp_unreachable``, then ``refused`` (the path works up to a closed port), then
       ``error``. ``timeout`` wins over ``refused`` because a refusal on one kind and a drop on
       another means something on the path drops; the refusal alone would send diagnosis to the
       service stage. A ``refused`` with ``seen_at_target == "yes"`` is the target's own RST
       (nothing listening: ``target-service``); ``refused`` and ``no`` points at something
       between that answers for it.
A path with only DNS results takes the dns outcome.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from agent.results import Observation, PathEvidence, ProbeResult, SeenAtTarget, hostport

__all__ = ["FAILURE_ORDER", "correlate", "deciding_outcome", "isn_rewritten"]

#: failures, most telling first (see the module docstring)
FAILURE_ORDER: tuple[str, ...] = ("dns_error", "timeout", "icmp_unreachable", "refused", "error")
_CONNECTING = ("syn", "tcp", "http")


def deciding_outcome(results: Sequence[ProbeResult]) -> str:
    """The one outcome that stands for a path (rules in the module docstring)."""
    if not results:
        return "error"
    if any(r.probe == "dns" and r.outcome != "ok" for r in results):
        return "dns_error"
    connecting = [r for r in results if r.probe in _CONNECTING] or list(results)
    outcomes = {r.outcome for r in connecting}
    if outcomes <= {"ok"}:
        return "ok"
    for outcome in FAILURE_ORDER:
        if outcome in outcomes:
            return outcome
    return "error"


def _probe_ids(result: ProbeResult) -> list[str]:
    ids = [result.probe_id] if result.probe_id else []
    extra = result.detail.get("probe_ids")
    if isinstance(extra, list):
        ids.extend(i for i in extra if isinstance(i, str) and i and i not in ids)
    return ids


def _isn(result: ProbeResult) -> int | None:
    if result.probe != "syn" or result.fallback:
        return None
    isn = result.detail.get("isn")
    return isn if isinstance(isn, int) and not isinstance(isn, bool) else None


def _in_window(result: ProbeResult, obs: Observation, window_s: float) -> bool:
    end = result.started_at + max(result.duration_s, 0.0)
    return result.started_at - window_s <= obs.seen_at <= end + window_s


def _rtt(results: Iterable[ProbeResult]) -> float | None:
    """Network round trip: the SYN/SYN-ACK time of a syn probe, else a tcp/http connect."""
    best: dict[str, float] = {}
    for r in results:
        if r.outcome != "ok":
            continue
        if r.probe == "syn" and not r.fallback and "rtt" in r.phases:
            best.setdefault("syn", r.phases["rtt"])
        elif "connect" in r.phases:
            best.setdefault(r.probe, r.phases["connect"])
    for kind in ("syn", "tcp", "http"):
        if kind in best:
            return best[kind]
    return next(iter(best.values()), None)


def correlate(
    results: Sequence[ProbeResult],
    observations: Sequence[Observation] | None,
    *,
    window_s: float,
    provider_error: str | None = None,
    isn_preserved: bool | None = None,
) -> list[PathEvidence]:
    """One PathEvidence per path, in the order paths first appear in ``results``.

    ``observations is None`` means no provider evidence could be had; pass the reason as
    ``provider_error`` (it is copied to every path).

    ``isn_preserved`` says whether the NLB keeps the client's initial sequence number — which
    AWS does not document (docs/AWS-BEHAVIOUR.md, last section). A SYN tag that *arrives* proves the
    probe arrived either way; only a tag that does *not* arrive depends on it: ``False`` means
    a missing tag proves nothing; ``True`` means it proves the SYN did not arrive; ``None``
    (auto) assumes it is kept unless this very round contradicts it — a syn probe that
    completed its handshake on a path where a token arrived but the SYN's tag did not.
    """
    if isn_preserved is None:
        isn_preserved = not isn_rewritten(results, observations, window_s=window_s)
    by_path: dict[str, list[ProbeResult]] = {}
    for r in results:
        by_path.setdefault(r.path, []).append(r)

    obs_list = list(observations or [])
    tokens: dict[str, list[Observation]] = defaultdict(list)
    syn_tags: dict[int, list[Observation]] = defaultdict(list)
    for o in obs_list:
        if o.kind == "token" and o.probe_id:
            tokens[o.probe_id].append(o)
        elif o.kind == "syn_tag" and o.isn is not None:
            syn_tags[o.isn].append(o)

    # an ISN is usable only when it belongs to probes of exactly one path
    isn_paths: dict[int, set[str]] = defaultdict(set)
    for r in results:
        isn = _isn(r)
        if isn is not None:
            isn_paths[isn].add(r.path)

    out: list[PathEvidence] = []
    for path, path_results in by_path.items():
        joined: list[Observation] = []
        seen_ids: set[int] = set()
        tagged_sent = False
        for r in path_results:
            candidates: list[Observation] = []
            ids = _probe_ids(r)
            # a token goes out only once the connection is up; an http/tcp probe that never
            # connected sent nothing identifiable
            if ids and (r.outcome == "ok" or r.detail.get("phase") not in (None, "connect")):
                tagged_sent = True
            for pid in ids:
                candidates.extend(tokens.get(pid, ()))
            isn = _isn(r)
            if isn is not None:
                tagged_sent = tagged_sent or isn_preserved
                if len(isn_paths[isn]) == 1:
                    candidates.extend(syn_tags.get(isn, ()))
            for o in candidates:
                if id(o) in seen_ids or not _in_window(r, o, window_s):
                    continue
                if o.path and o.path != path:
                    continue
                seen_ids.add(id(o))
                joined.append(o)
        replies = [r.reply for r in path_results if r.reply]
        seen: SeenAtTarget
        if joined or replies:
            seen = "yes"
        elif observations is None or not tagged_sent:
            seen = "unknown"
        else:
            seen = "no"
        ev = PathEvidence(
            path=path,
            outcome=deciding_outcome(path_results),
            seen_at_target=seen,
            results=list(path_results),
            observations=sorted(joined, key=lambda o: o.seen_at),
            rtt_s=_rtt(path_results),
            provider_error=provider_error if observations is None else None,
        )
        _fill_target_view(ev, joined, replies)
        out.append(ev)
    return out


def isn_rewritten(
    results: Sequence[ProbeResult],
    observations: Sequence[Observation] | None,
    *,
    window_s: float,
) -> bool:
    """Does this round show the NLB rewriting initial sequence numbers?

    Evidence: on one path, a syn probe got its SYN-ACK and the sniffer saw a token of the same
    round, yet no SYN carrying our tag was seen — the SYN went through, its ISN did not. Only
    tokens the *sniffer* saw count: a token the responder read on a port the sniffer does not
    watch (the responder port) says nothing about whether a tag could have been seen there.
    """
    if not observations:
        return False
    tokens = {
        o.probe_id for o in observations if o.kind == "token" and o.probe_id and o.via == "sniffer"
    }
    isns = {o.isn for o in observations if o.kind == "syn_tag" and o.isn is not None}
    by_path: dict[str, list[ProbeResult]] = defaultdict(list)
    for r in results:
        by_path[r.path].append(r)
    for path_results in by_path.values():
        token_arrived = any(pid in tokens for r in path_results for pid in _probe_ids(r))
        syn_ok = [
            r for r in path_results if r.probe == "syn" and r.outcome == "ok" and not r.fallback
        ]
        if token_arrived and syn_ok and not any(_isn(r) in isns for r in syn_ok):
            return True
    return False


def _fill_target_view(
    ev: PathEvidence, joined: list[Observation], replies: list[dict[str, object]]
) -> None:
    """Source at the target and PROXY v2 data: a responder reply first, then observations."""
    for reply in replies:
        src = reply.get("src")
        if ev.source_at_target is None and isinstance(src, str):
            ev.source_at_target = src
        vpce = reply.get("proxy_endpoint_id")
        if ev.proxy_endpoint_id is None and isinstance(vpce, str):
            ev.proxy_endpoint_id = vpce
        client = reply.get("proxy_src")
        if ev.proxy_client is None and isinstance(client, str):
            ev.proxy_client = client
    for o in sorted(joined, key=lambda o: (o.kind != "token", o.seen_at)):
        if ev.source_at_target is None and o.src_ip:
            ev.source_at_target = hostport(o.src_ip, o.src_port)
        if ev.proxy_endpoint_id is None and o.proxy_endpoint_id:
            ev.proxy_endpoint_id = o.proxy_endpoint_id
        if ev.proxy_client is None and o.proxy_src:
            ev.proxy_client = o.proxy_src
