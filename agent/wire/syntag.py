"""SYN tag: a keyed tag in the 32-bit initial sequence number of a raw SYN probe.

A passive sniffer can tell this deployment's SYNs apart with no per-probe state. The tag is an
HMAC under the shared key with its own prefix (``PLPS``), so it can never pass for a token's or
a reply's MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from agent.wire.mac import check_key

__all__ = ["SynTagger"]

_SYN_PREFIX = b"PLPS\x01"


class SynTagger:
    """Marks and recognises this deployment's SYNs by their initial sequence number alone.

    ``ISN = nonce (32 - tag_bits bits) || tag (tag_bits bits)`` with
    ``tag = HMAC-SHA256(key, "PLPS" 0x01 tag_bits epoch nonce)`` truncated, and
    ``epoch = floor(unix_time / rotation_s)``. No address or port is covered: the NLB rewrites
    the source address and port, and the listener port may differ from the target port, so
    only the sequence number is the same at both ends (whether AWS's NLB keeps it is
    UNCONFIRMED; the lab keeps it). Rotation bounds how long a captured ISN stays valid.

    ``verify`` accepts two epochs, the one of ``now + max_skew_s`` and the one before it: a tag
    made up to ``rotation_s - max_skew_s`` seconds ago always verifies, and so does one from a
    sender whose clock is up to ``max_skew_s`` ahead. A random ISN verifies with probability
    ``2 * 2**-tag_bits`` (``false_positive_rate``), so a match is statistical evidence that a
    tagged SYN arrived, never proof of which probe it was: correlation joins by token first.
    """

    def __init__(
        self,
        key: bytes,
        rotation_s: float = 60,
        *,
        tag_bits: int = 16,
        max_skew_s: float = 1.0,
    ) -> None:
        check_key(key, insecure=False)
        if not 8 <= tag_bits <= 24:
            raise ValueError("tag_bits must be 8..24")
        if not rotation_s > 0:
            raise ValueError("rotation_s must be positive")
        if not 0 <= max_skew_s < rotation_s:
            raise ValueError("max_skew_s must be in [0, rotation_s)")
        self.tag_bits = tag_bits
        self.rotation_s = rotation_s
        self.max_skew_s = max_skew_s
        self._tag_mask = (1 << tag_bits) - 1
        self._nonce_bits = 32 - tag_bits
        self._shift = 32 - tag_bits  # keep the top tag_bits of the digest's first word
        self._base = hmac.new(bytes(key), _SYN_PREFIX + bytes((tag_bits,)), hashlib.sha256)
        self._epoch_cache: dict[int, hmac.HMAC] = {}

    @property
    def false_positive_rate(self) -> float:
        """Probability that a uniformly random ISN verifies (two epochs accepted)."""
        return 2.0 / (1 << self.tag_bits)

    def _epoch(self, now: float) -> int:
        return int(now // self.rotation_s)

    def _tag(self, epoch: int, nonce: int) -> int:
        h = self._epoch_cache.get(epoch)
        if h is None:
            if len(self._epoch_cache) > 8:
                self._epoch_cache.clear()
            h = self._base.copy()
            h.update(epoch.to_bytes(8, "big", signed=True))
            self._epoch_cache[epoch] = h
        h = h.copy()
        h.update(nonce.to_bytes(4, "big"))
        return int.from_bytes(h.digest()[:4], "big") >> self._shift

    def make(self, now: float | None = None, *, nonce: int | None = None) -> int:
        """A tagged ISN for a SYN sent at ``now`` (default: the current time).

        ``nonce`` is random unless given (golden files, the lab); it spreads ISNs so that two
        probes in one epoch rarely share one.
        """
        t = time.time() if now is None else now
        if nonce is None:
            nonce = secrets.randbits(self._nonce_bits)
        elif not 0 <= nonce < (1 << self._nonce_bits):
            raise ValueError(f"nonce must fit in {self._nonce_bits} bits")
        return (nonce << self.tag_bits) | self._tag(self._epoch(t), nonce)

    def verify(self, isn: int, now: float | None = None) -> bool:
        """True if ``isn`` carries a tag for the current or the previous epoch."""
        if not 0 <= isn <= 0xFFFFFFFF:
            return False
        t = time.time() if now is None else now
        epoch = self._epoch(t + self.max_skew_s)
        nonce = isn >> self.tag_bits
        tag = isn & self._tag_mask
        return self._tag(epoch, nonce) == tag or self._tag(epoch - 1, nonce) == tag
