"""SYN tags carried in the initial sequence number (agent/wire/syntag.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.wire.syntag import SynTagger

KEY = b"k" * 32
T0 = 1_700_000_040.0  # the start of a 60 s epoch
FEW = settings(max_examples=200, deadline=None)


def test_tagged_isn_verifies_at_the_moment_it_was_made() -> None:
    tagger = SynTagger(KEY)
    assert tagger.verify(tagger.make(T0 + 5), T0 + 5)


def test_tagged_isn_verifies_in_the_following_epoch() -> None:
    tagger = SynTagger(KEY, rotation_s=60, max_skew_s=1.0)
    isn = tagger.make(T0 + 1)
    assert tagger.verify(isn, T0 + 1 + 58)


def test_tagged_isn_does_not_verify_two_epochs_later() -> None:
    tagger = SynTagger(KEY, rotation_s=60)
    isns = [tagger.make(T0 + 1, nonce=n) for n in range(50)]
    assert not any(tagger.verify(isn, T0 + 125) for isn in isns)


def test_tag_from_a_sender_whose_clock_is_slightly_ahead_verifies() -> None:
    tagger = SynTagger(KEY, rotation_s=60, max_skew_s=1.0)
    isn = tagger.make(T0 + 0.2)  # sender already in the next epoch
    assert tagger.verify(isn, T0 - 0.5)


def test_tag_made_under_another_key_does_not_verify() -> None:
    mine, theirs = SynTagger(KEY), SynTagger(b"o" * 32)
    isns = [theirs.make(T0, nonce=n) for n in range(200)]
    assert sum(mine.verify(isn, T0) for isn in isns) <= 2


def test_tag_with_a_given_nonce_is_deterministic_and_keeps_the_nonce_in_the_high_bits() -> None:
    tagger = SynTagger(KEY)
    isn = tagger.make(T0, nonce=0xBEEF)
    assert isn == tagger.make(T0, nonce=0xBEEF)
    assert isn >> 16 == 0xBEEF


def test_verify_rejects_values_outside_32_bits() -> None:
    tagger = SynTagger(KEY)
    assert not tagger.verify(-1, T0)
    assert not tagger.verify(1 << 32, T0)


@pytest.mark.parametrize("bits", [7, 25])
def test_tag_width_outside_8_to_24_bits_is_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="tag_bits"):
        SynTagger(KEY, tag_bits=bits)


def test_syn_tagger_refuses_a_short_key() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        SynTagger(b"short")


@FEW
@given(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.integers(min_value=8, max_value=24),
    st.floats(min_value=0, max_value=50),
)
def test_tagged_isn_is_32_bits_and_verifies_within_the_look_back(
    now: float, bits: int, delay: float
) -> None:
    tagger = SynTagger(KEY, rotation_s=60, tag_bits=bits, max_skew_s=1.0)
    isn = tagger.make(now)
    assert 0 <= isn <= 0xFFFFFFFF
    assert tagger.verify(isn, now + delay)


def _false_matches(tagger: SynTagger, samples: int) -> int:
    rng = random.Random(20240601)
    return sum(tagger.verify(rng.getrandbits(32), T0 + 30) for _ in range(samples))


def test_random_isns_match_at_about_two_epochs_times_two_to_the_minus_16() -> None:
    tagger = SynTagger(KEY, tag_bits=16)
    samples = 200_000
    expected = samples * tagger.false_positive_rate  # 6.1
    assert tagger.false_positive_rate == pytest.approx(3.05e-5, rel=1e-3)
    # Poisson(6.1): P(X > 20) < 1e-5; P(X == 0) = 0.2 %, so also require at least one.
    assert 1 <= _false_matches(tagger, samples) <= 20, expected


def test_random_isns_match_at_the_theoretical_rate_for_a_narrow_tag() -> None:
    """At 8 bits the count is large enough to check the rate itself, not just its order."""
    tagger = SynTagger(KEY, tag_bits=8)
    samples = 200_000
    expected = samples * tagger.false_positive_rate  # 1562.5, sd ~ 39
    assert abs(_false_matches(tagger, samples) - expected) < 5 * expected**0.5
