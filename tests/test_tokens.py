from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from newsletter.errors import TokenError
from newsletter.tokens import Kind, Signer

KEY, OLD = b"current-key-0123456789", b"retired-key-0123456789"


def test_round_trip_and_kind() -> None:
    signer = Signer((KEY,))
    token = signer.make(Kind.VOTE, 7, 12345, 2)
    assert signer.check(token, Kind.VOTE) == (7, 12345, 2)
    assert token.isascii() and all(c.isalnum() or c in "-_" for c in token)
    with pytest.raises(TokenError, match="not meant"):
        signer.check(token, Kind.UNSUBSCRIBE)


def test_tokens_differ_per_member_and_option() -> None:
    signer = Signer((KEY,))
    tokens = {
        signer.make(Kind.VOTE, 1, member, option) for member in range(50) for option in (1, 2, 3)
    }
    assert len(tokens) == 150


def test_forged_and_altered_tokens_are_refused() -> None:
    signer = Signer((KEY,))
    forger = Signer((b"someone-elses-key-0123",))
    with pytest.raises(TokenError, match="signature"):
        signer.check(forger.make(Kind.VOTE, 1, 2, 3), Kind.VOTE)
    raw = bytearray(base64.urlsafe_b64decode(signer.make(Kind.VOTE, 1, 2, 1) + "=="))
    raw[-17] ^= 0x03  # the option number, the last payload byte
    altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature"):
        signer.check(altered, Kind.VOTE)
    for junk in ("", "x", "!!!!", "A" * 500, "ünïcode"):
        with pytest.raises(TokenError):
            signer.check(junk, Kind.VOTE)


def test_rotation_accepts_old_keys_and_signs_with_the_new() -> None:
    old_token = Signer((OLD,)).make(Kind.UNSUBSCRIBE, 5, 1)
    rotated = Signer((KEY, OLD))
    assert rotated.check(old_token, Kind.UNSUBSCRIBE) == (5, 1)
    assert Signer((KEY,)).check(rotated.make(Kind.UNSUBSCRIBE, 5, 1), Kind.UNSUBSCRIBE) == (5, 1)
    with pytest.raises(TokenError):
        Signer((KEY,)).check(old_token, Kind.UNSUBSCRIBE)


def test_expiry() -> None:
    signer = Signer((KEY,))
    token = signer.make(Kind.CONFIRM, 9, day=1)
    assert signer.check(token, Kind.CONFIRM) == (9,)
    with pytest.raises(TokenError, match="expired"):
        signer.check(token, Kind.CONFIRM, max_age_days=7)


@given(st.text(max_size=80))
def test_arbitrary_input_never_passes(text: str) -> None:
    with pytest.raises(TokenError):
        Signer((KEY,)).check(text, Kind.VOTE)
