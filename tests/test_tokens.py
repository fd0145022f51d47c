"""Link tokens: every token make() writes checks back, and it has exactly one spelling."""

from __future__ import annotations

import base64
import hashlib
import hmac
import string

import pytest
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from newsletter.errors import TokenError
from newsletter.tokens import VALUE_LIMIT, Kind, Signer

KEY, OLD = b"current-key-0123456789", b"retired-key-0123456789"
SIGNER = Signer((KEY,))
ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
# The longest genuine token: a vote whose day and values all take 9 varint bytes.
LONGEST = 72
DAY = 20423  # 2025-12-01: the day given to the tokens in test_tokens_issued_before_still_check

# Real ids are small; the varint byte boundaries and the 2**63 bound are where encodings break.
ids = st.one_of(
    st.integers(0, 2**21),
    st.integers(0, VALUE_LIMIT - 1),
    st.sampled_from([0, 127, 128, 2**14 - 1, 2**14, 2**56 - 1, 2**56, VALUE_LIMIT - 1]),
)
kinds = st.sampled_from(list(Kind))
# Each case costs microseconds, so the spelling properties try more than the default 100.
thorough = settings(max_examples=400)
# Characters a link could gain: the alphabet itself (which reaches the MAC check), the
# examples from the issue, padding, whitespace, base64's other alphabet, and anything at all.
chars = st.one_of(
    st.sampled_from(ALPHABET), st.sampled_from("~*=+/. \t\n%"), st.characters(codec="utf-8")
)


@st.composite
def issued(draw: st.DrawFn) -> tuple[Kind, int, tuple[int, ...]]:
    """A kind, a day and as many values as that kind carries."""
    kind = draw(kinds)
    return kind, draw(ids), tuple(draw(ids) for _ in kind.fields)


def make(case: tuple[Kind, int, tuple[int, ...]]) -> str:
    kind, day, values = case
    return SIGNER.make(kind, *values, day=day)


def refused(token: str, kind: Kind, match: str | None = None) -> None:
    with pytest.raises(TokenError, match=match):
        SIGNER.check(token, kind)


# --- the format, built by hand --------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >= 0x80 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def signed(payload: bytes, key: bytes = KEY) -> str:
    """base64url(payload ‖ the first 16 bytes of HMAC-SHA256), written independently of make()."""
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()


def layout(kind: int, numbers: list[int], version: int = 1) -> bytes:
    return bytes((version, kind)) + b"".join(varint(n) for n in numbers)


@given(issued())
def test_make_writes_the_documented_layout(case: tuple[Kind, int, tuple[int, ...]]) -> None:
    kind, day, values = case
    assert make(case) == signed(layout(kind, [day, *values]))


def test_tokens_issued_before_still_check() -> None:
    # Made by main at 943ef19 (before spellings were made unique), like links in sent mail.
    assert SIGNER.check("AQHHnwEDkMcCAtk9AtzUkVceS3BQWPiF32s", Kind.VOTE) == (3, 41872, 2)
    assert SIGNER.check("AQLHnwGQxwIRyzcH3D_NxzvRe-GaLxuSIQ", Kind.UNSUBSCRIBE) == (41872, 17)
    assert SIGNER.check("AQPHnwERkMcCnue5uWPHbNtP_vJ26wxHlg", Kind.VIEW) == (17, 41872)
    assert SIGNER.check("AQTHnwGQxwLWq1QdQtXkoDSpBFbkjzug", Kind.CONFIRM) == (41872,)
    assert SIGNER.check("AQXHnwGQxwIRo4bOp98Ce_0BtTn7R0sWdg", Kind.TRAP) == (41872, 17)
    old = "AQLHnwEA__________9_pVxzsFrRaPUjpzg6PhWW_Q"
    assert Signer((KEY, OLD)).check(old, Kind.UNSUBSCRIBE) == (0, VALUE_LIMIT - 1)


# --- round trips ------------------------------------------------------------------------


@thorough
@given(issued())
@example((Kind.VOTE, VALUE_LIMIT - 1, (VALUE_LIMIT - 1,) * 3))  # the longest token there is
@example((Kind.CONFIRM, 0, (0,)))  # the shortest
def test_every_token_make_writes_checks_back(case: tuple[Kind, int, tuple[int, ...]]) -> None:
    kind, _, values = case
    token = make(case)
    assert set(token) <= set(ALPHABET)
    assert len(token) <= LONGEST
    assert SIGNER.check(token, kind) == values
    for other in Kind:
        if other is not kind:
            refused(token, other, "not meant for this link")


@given(
    kinds,
    st.integers(0, 3),
    st.one_of(
        st.sampled_from([-1, VALUE_LIMIT, VALUE_LIMIT + 1, 2**64, 2**70]),
        st.integers(max_value=-1),
        st.integers(min_value=VALUE_LIMIT),
    ),
)
@example(Kind.VOTE, 2, VALUE_LIMIT).via("an id past 63 bits (issue 11)")
@example(Kind.CONFIRM, 0, -1).via("a negative day")
def test_make_refuses_values_it_could_not_read_back(kind: Kind, at: int, bad: int) -> None:
    names = ("day", *kind.fields)
    at %= len(names)
    numbers = [1] * len(names)
    numbers[at] = bad
    with pytest.raises(ValueError, match=rf"{names[at]}={bad} is outside \[0, 2\*\*63\)"):
        SIGNER.make(kind, *numbers[1:], day=numbers[0])


@given(kinds, st.integers(0, 8))
def test_make_refuses_the_wrong_number_of_values(kind: Kind, count: int) -> None:
    assume(count != len(kind.fields))
    with pytest.raises(ValueError, match=f"^{kind.name.lower()} tokens carry {len(kind.fields)} "):
        SIGNER.make(kind, *range(count))


def test_kinds_fit_their_byte_and_carry_their_values() -> None:
    assert all(0 < kind < 256 and kind.fields for kind in Kind)
    counts = {kind.name: len(kind.fields) for kind in Kind}
    assert counts == {
        "VOTE": 3,
        "UNSUBSCRIBE": 2,
        "VIEW": 2,
        "CONFIRM": 1,
        "TRAP": 2,
        "SIGNIN": 2,
        "BOARD": 2,
        "SESSION": 3,
        "FORM": 2,
        "NOTICES": 1,
        "CLICK": 3,
        "PREFERENCES": 2,
        "ADDRESS": 2,
    }
    # No byte reused: the board's kinds are 6 to 10, the click's 11, the preference page's
    # 20 and 21.
    assert [int(kind) for kind in Kind] == [*range(1, 12), 20, 21]
    top = VALUE_LIMIT - 1
    assert len(SIGNER.make(Kind.VOTE, top, top, top, day=top)) == LONGEST


# --- one spelling: every variant of a genuine token is refused ----------------------------

GENUINE = (Kind.VOTE, DAY, (3, 41872, 2))  # AQHHnwEDkMcCAtk9AtzUkVceS3BQWPiF32s


# Positions are drawn from 0..79 and taken modulo the token's length (at most 72 characters).
positions = st.integers(0, 79)


@thorough
@given(issued(), positions, chars)
@example(GENUINE, 34, "t").via("only the unused low bits of the last character changed")
def test_a_changed_character_is_refused(
    case: tuple[Kind, int, tuple[int, ...]], at: int, c: str
) -> None:
    token = make(case)
    at %= len(token)
    assume(c != token[at])
    refused(token[:at] + c + token[at + 1 :], case[0])


@thorough
@given(issued(), positions, chars)
@example(GENUINE, 5, "~").via("a '~' inserted (issue 11)")
@example(GENUINE, 12, "*").via("a '*' inserted (issue 11)")
@example(GENUINE, 35, "~").via("a '~' appended")
def test_an_inserted_character_is_refused(
    case: tuple[Kind, int, tuple[int, ...]], at: int, c: str
) -> None:
    token = make(case)
    at %= len(token) + 1
    refused(token[:at] + c + token[at:], case[0])


@pytest.mark.parametrize("c", ["~", "*"])
@pytest.mark.parametrize("at", [0, 5, 20, 35])
def test_the_issues_insertions_are_refused_with_the_place(c: str, at: int) -> None:
    token = make(GENUINE)
    refused(token[:at] + c + token[at:], Kind.VOTE, rf"{c!r} at character {at + 1}, outside")


@thorough
@given(issued(), positions)
def test_a_deleted_character_is_refused(case: tuple[Kind, int, tuple[int, ...]], at: int) -> None:
    token = make(case)
    at %= len(token)
    refused(token[:at] + token[at + 1 :], case[0])


@thorough
@given(issued(), positions)
def test_a_flipped_case_is_refused(case: tuple[Kind, int, tuple[int, ...]], at: int) -> None:
    token = make(case)
    letters = [i for i, c in enumerate(token) if c.isalpha()]
    at = letters[at % len(letters)]
    refused(token[:at] + token[at].swapcase() + token[at + 1 :], case[0])
    refused(token.swapcase(), case[0])


@given(issued(), st.sampled_from(["=", "=="]))
@example(GENUINE, "=").via("TOKEN= (issue 11)")
def test_padding_is_refused(case: tuple[Kind, int, tuple[int, ...]], pad: str) -> None:
    # The longest tokens are refused for their length before any character is looked at.
    refused(make(case) + pad, case[0], "'=' padding|is longer than")


@given(
    issued(),
    st.text(" \t\r\n\x0b\x0c\xa0\u3000", max_size=3),
    st.text(" \t\r\n\x0b\x0c\xa0\u3000", max_size=3),
)
@example(GENUINE, "", "\n")
@example(GENUINE, " ", "")
def test_surrounding_whitespace_is_refused(
    case: tuple[Kind, int, tuple[int, ...]], before: str, after: str
) -> None:
    assume(before or after)
    refused(before + make(case) + after, case[0], "whitespace|is longer than")


@thorough
@given(issued())
@example((Kind.UNSUBSCRIBE, DAY, (41872, 17)))  # 34 characters: 4 unused bits
@example(GENUINE)  # 35 characters: 2 unused bits
def test_unused_bits_in_the_last_character_are_refused(
    case: tuple[Kind, int, tuple[int, ...]],
) -> None:
    token = make(case)
    unused = {0: 0, 2: 4, 3: 2}[len(token) % 4]
    event(f"{unused} unused bits")
    assume(unused)  # a token whose length is a multiple of 4 has none
    last = ALPHABET.index(token[-1])
    assert last % 2**unused == 0  # make() leaves them zero
    for low in range(1, 2**unused):
        refused(token[:-1] + ALPHABET[last | low], case[0], "unused low bits set")


# --- the layout: correctly signed payloads that make() would never write -------------------


@st.composite
def misshapen(draw: st.DrawFn) -> tuple[Kind, bytes, str]:
    """A payload one rule away from a genuine one, and the reason check() should give."""
    kind, day, values = draw(issued())
    numbers = [day, *values]
    fault = draw(
        st.sampled_from(
            ["version", "kind", "overlong", "too large", "too few", "too many", "cut", "trailing"]
        )
    )
    event(fault)
    at = draw(st.integers(0, len(numbers) - 1))
    if fault == "version":
        version = draw(st.integers(0, 255).filter(lambda v: v != 1))
        return kind, layout(kind, numbers, version), f"version {version},"
    if fault == "kind":
        byte = draw(st.integers(0, 255).filter(lambda b: b not in set(Kind)))
        return kind, layout(byte, numbers), f"kind {byte},"
    if fault == "overlong":
        # The value's shortest form with zero bytes after it: 0x80 0x00 for 0, and so on.
        # Past 9 bytes the reader stops at the 2**63 bound before it sees the zero.
        short = varint(numbers[at])
        pad = draw(st.integers(1, max(1, 9 - len(short))))
        long = short[:-1] + bytes((short[-1] | 0x80,)) + b"\x80" * (pad - 1) + b"\x00"
        head = layout(kind, numbers[:at])
        reason = "not in its shortest" if len(long) <= 9 else "2\\*\\*63 or more"
        return kind, head + long + layout(kind, numbers[at + 1 :])[2:], reason
    if fault == "too large":
        numbers[at] = draw(st.integers(VALUE_LIMIT, 2**80))
        return kind, layout(kind, numbers), "2\\*\\*63 or more"
    if fault == "too few":
        return kind, layout(kind, numbers[:at]), f"ends after {at} of the {len(numbers)} values"
    if fault == "too many":
        extra = draw(st.lists(ids, min_size=1, max_size=3))
        return kind, layout(kind, numbers + extra), "after its last value"
    if fault == "cut":  # the last value's final byte says another follows
        payload = bytearray(layout(kind, numbers))
        payload[-1] |= 0x80
        if len(varint(numbers[-1])) == 9:  # a tenth byte would already pass the bound
            return kind, bytes(payload), "2\\*\\*63 or more"
        return kind, bytes(payload), f"ends after {len(numbers) - 1} of"
    junk = draw(st.binary(min_size=1, max_size=4))
    return kind, layout(kind, numbers) + junk, f"has {len(junk)} bytes? after its last value"


@thorough
@given(misshapen())
@example((Kind.CONFIRM, b"\x01\x04\xc7\x9f\x01\x80\x00", "value 2 is not in its shortest")).via(
    "0x80 0x00 for 0"
)
def test_a_signed_payload_of_the_wrong_shape_is_refused(case: tuple[Kind, bytes, str]) -> None:
    kind, payload, reason = case
    token = signed(payload)
    # Oversized values can make a token longer than any genuine one: refused for that first.
    refused(token, kind, reason if len(token) <= LONGEST else f"{len(token)} characters long")


def test_a_token_too_short_to_carry_a_mac_is_refused() -> None:
    refused(signed(b"\x01"), Kind.CONFIRM, "too short")


# --- signatures, keys and age -------------------------------------------------------------


def test_tokens_differ_per_member_and_option() -> None:
    tokens = {
        SIGNER.make(Kind.VOTE, 1, member, option) for member in range(50) for option in (1, 2, 3)
    }
    assert len(tokens) == 150


def test_forged_and_altered_tokens_are_refused() -> None:
    forger = Signer((b"someone-elses-key-0123",))
    refused(forger.make(Kind.VOTE, 1, 2, 3), Kind.VOTE, "signature")
    raw = bytearray(base64.urlsafe_b64decode(SIGNER.make(Kind.VOTE, 1, 2, 1) + "=="))
    raw[-17] ^= 0x03  # the option number, the last payload byte
    refused(base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode(), Kind.VOTE, "signature")
    for junk in ("", "x", "!!!!", "A" * 500, "ünïcode"):
        refused(junk, Kind.VOTE)


def test_rotation_accepts_old_keys_and_signs_with_the_new() -> None:
    old_token = Signer((OLD,)).make(Kind.UNSUBSCRIBE, 5, 1)
    rotated = Signer((KEY, OLD))
    assert rotated.check(old_token, Kind.UNSUBSCRIBE) == (5, 1)
    assert SIGNER.check(rotated.make(Kind.UNSUBSCRIBE, 5, 1), Kind.UNSUBSCRIBE) == (5, 1)
    refused(old_token, Kind.UNSUBSCRIBE, "signature")


def test_expiry() -> None:
    token = SIGNER.make(Kind.CONFIRM, 9, day=1)
    assert SIGNER.check(token, Kind.CONFIRM) == (9,)
    with pytest.raises(TokenError, match="expired"):
        SIGNER.check(token, Kind.CONFIRM, max_age_days=7)
    assert SIGNER.check(SIGNER.make(Kind.CONFIRM, 9), Kind.CONFIRM, max_age_days=0) == (9,)


@given(st.text(max_size=80))
def test_arbitrary_input_never_passes(text: str) -> None:
    refused(text, Kind.VOTE)


@given(
    st.integers(0, VALUE_LIMIT - 1),
    st.integers(0, VALUE_LIMIT - 1),
    st.integers(0, 300),
    st.integers(0, 40),
)
def test_a_series_of_click_tokens_is_the_tokens_made_one_by_one(
    issue: int, member: int, start: int, count: int
) -> None:
    last = range(start, start + count)
    series = SIGNER.make_series(Kind.CLICK, issue, member, last=last)
    assert series == [SIGNER.make(Kind.CLICK, issue, member, n) for n in last]
    assert [SIGNER.check(t, Kind.CLICK) for t in series] == [(issue, member, n) for n in last]
