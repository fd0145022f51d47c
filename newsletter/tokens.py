"""Signed tokens (member links, sign-in, board sessions and forms): HMAC-SHA256, url-safe, key rotation.

A token is base64url(payload ‖ mac), unpadded. The payload is a version byte, a kind byte, the
day it was issued and the kind's unsigned integers (ids and an option number), each a varint:
no address or name, nothing a reader could learn about the member. The MAC is the first 16
bytes of HMAC-SHA256 over the payload. New tokens use the first key; every key in the list
is tried when checking, so a retired key keeps old links working until it is dropped.

Each token has exactly one spelling. `check` refuses anything `make` would not have written
(padding, characters outside the alphabet, unused bits set in the last character, overlong or
oversized varints, the wrong number of values, trailing bytes), because a decoder that
tolerated those would let an altered link pass as the genuine one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from enum import IntEnum, unique

from newsletter.errors import TokenError

_VERSION = 1
_MAC_LEN = 16
_EPOCH_DAY = 86400

# Every value (and the day) is below this bound, so it fits a signed 64-bit column (BIGINT,
# SQLite's INTEGER) and its varint takes at most 9 bytes: 9 x 7 bits = 63 bits.
VALUE_LIMIT = 2**63
_VARINT_MAX_BYTES = 9

# A tag (Signer.tag) is 8 base32 characters: 40 bits, so a forger guessing at one address
# needs about 2**39 tries on average, each a message to the bounce address.
TAG_LENGTH = 8

_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@unique  # two kinds sharing a byte would read each other's links
class Kind(IntEnum):
    """What a token is for (its byte in the token) and the values it carries, in order.

    Adding a kind is one line here: a new byte (never reuse one: links already sent carry it)
    and the names of its values. `make` and `check` take the count from this table.
    """

    fields: tuple[str, ...]

    def __new__(cls, code: int, fields: tuple[str, ...]) -> Kind:
        member = int.__new__(cls, code)
        member._value_ = code
        member.fields = fields
        return member

    VOTE = 1, ("survey_id", "member_id", "option_position")
    UNSUBSCRIBE = 2, ("member_id", "issue_id")
    VIEW = 3, ("issue_id", "member_id")
    CONFIRM = 4, ("member_id",)
    # A link hidden from people, so only machines fetch it.
    TRAP = 5, ("member_id", "issue_id")
    # The members' board (docs/board.md): a sign-in link sent by email (its row makes it
    # single-use and short-lived), the board link every issue carries, a member's session
    # cookie and the forms' CSRF token bound to it, and the link that stops reply notices.
    SIGNIN = 6, ("member_id", "signin_id")
    BOARD = 7, ("member_id", "issue_id")
    SESSION = 8, ("member_id", "generation", "session")
    FORM = 9, ("member_id", "session")
    NOTICES = 10, ("member_id",)
    # A link of an issue's own (an item's, the footer's), by its place in the list.
    CLICK = 11, ("issue_id", "member_id", "link")
    # The member's preference page, from an issue (bytes 20 and 21: far from the kinds other
    # work in progress adds, so merges never give two kinds one byte).
    PREFERENCES = 20, ("member_id", "issue_id")
    # A change of address, mailed to the new address; the nonce is the pending change's.
    ADDRESS = 21, ("member_id", "nonce")


_KINDS = {int(k): k for k in Kind}
# Version and kind bytes, then the day and each value (1 to 9 bytes each), then the MAC. A
# shorter token than _MIN_RAW cannot even say its kind; _parse gives the reason for the rest.
_MIN_RAW = 2 + _MAC_LEN
_MAX_RAW = 2 + _VARINT_MAX_BYTES * (1 + max(len(k.fields) for k in Kind)) + _MAC_LEN
_MAX_CHARS = -(-_MAX_RAW * 4 // 3)  # unpadded base64 of _MAX_RAW bytes


def _decode(token: str) -> bytes:
    """The bytes `token` spells, if it is the one spelling `make` writes for them."""
    if not token:
        raise TokenError("the token is empty")
    if len(token) > _MAX_CHARS:
        raise TokenError(
            f"the token is {len(token)} characters long; no token is longer than {_MAX_CHARS}"
        )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(_spelling_fault(token)) from None
    # The decoder skips characters outside the alphabet and ignores the last character's
    # unused low bits, so several strings decode to the same bytes. Re-encoding gives the
    # only one accepted; the comparison costs well under a microsecond.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != token.encode("ascii"):
        raise TokenError(_spelling_fault(token))
    return raw


def _spelling_fault(token: str) -> str:
    """Why `token` is not a canonical unpadded base64url string (it is known not to be one)."""
    for i, c in enumerate(token, 1):
        if c not in _ALPHABET:
            if c == "=":
                return f"the token has '=' padding at character {i}; links carry none"
            if c.isspace():
                return f"the token has whitespace at character {i}"
            return (
                f"the token has {c!r} at character {i}, "
                "outside the base64url alphabet (A-Z a-z 0-9 - _)"
            )
    if len(token) % 4 == 1:
        return f"the token is {len(token)} characters long, a length no token has (cut or padded)"
    return f"the token's last character {token[-1]!r} has its unused low bits set"


def _parse(payload: bytes) -> tuple[Kind, int, tuple[int, ...]]:
    """The kind, day and values of a payload laid out exactly as `make` lays it out."""
    if payload[0] != _VERSION:
        raise TokenError(f"the token has version {payload[0]}, which this site does not issue")
    kind = _KINDS.get(payload[1])
    if kind is None:
        raise TokenError(f"the token has kind {payload[1]}, which this site does not issue")
    count = 1 + len(kind.fields)  # the day, then the kind's values
    values: list[int] = []
    pos, end = 2, len(payload)
    while len(values) < count:
        n = shift = 0
        while True:
            if pos == end:
                raise TokenError(
                    f"the token ends after {len(values)} of the {count} values "
                    f"{kind.name.lower()} tokens carry (the day, {', '.join(kind.fields)})"
                )
            byte = payload[pos]
            pos += 1
            n |= (byte & 0x7F) << shift
            if byte < 0x80:  # the high bit is clear on a value's last byte
                break
            shift += 7
            if shift == 7 * _VARINT_MAX_BYTES:
                raise TokenError(f"the token's value {len(values) + 1} is 2**63 or more")
        # A last byte of 0 after continuation bytes adds nothing: an overlong spelling.
        if byte == 0 and shift:
            raise TokenError(f"the token's value {len(values) + 1} is not in its shortest form")
        values.append(n)
    if pos != end:
        extra = end - pos
        raise TokenError(f"the token has {extra} byte{'s' * (extra > 1)} after its last value")
    return kind, values[0], tuple(values[1:])


class Signer:
    """Makes and checks tokens with the given keys (the first signs, all verify)."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        # A prepared HMAC per key; copy() is cheaper than hmac.new for each token.
        self._macs = [hmac.new(k, digestmod=hashlib.sha256) for k in keys]

    def _mac(self, index: int, payload: bytes) -> bytes:
        mac = self._macs[index].copy()
        mac.update(payload)
        return mac.digest()[:_MAC_LEN]

    def tag(self, text: str, length: int = TAG_LENGTH) -> str:
        """A short MAC of `text`: lower-case base32 (a-z, 2-7), for places where a token does
        not fit, such as a VERP return path. Lower case, since many hosts fold the case of a
        local part. A prefix keeps it apart from every link token's MAC."""
        return self._tag(0, text)[:length]

    def tag_matches(self, text: str, tag: str) -> bool:
        """Whether `tag` is `text`'s tag under any key (checked in constant time)."""
        if len(tag) != TAG_LENGTH:
            return False
        tag = tag.lower()
        return any(
            hmac.compare_digest(tag, self._tag(i, text)[:TAG_LENGTH])
            for i in range(len(self._macs))
        )

    def _tag(self, index: int, text: str) -> str:
        mac = self._macs[index].copy()
        mac.update(b"tag\x00" + text.encode())
        return base64.b32encode(mac.digest()[:10]).decode("ascii").lower()

    def make(self, kind: Kind, *values: int, day: int | None = None) -> str:
        """A token carrying `values` (as many as `kind` has fields, each in [0, 2**63))."""
        if len(values) != len(kind.fields):
            raise ValueError(
                f"{kind.name.lower()} tokens carry {len(kind.fields)} "
                f"value{'s' * (len(kind.fields) != 1)} ({', '.join(kind.fields)}), "
                f"not {len(values)}"
            )
        payload = bytearray((_VERSION, kind))
        for v in (_today() if day is None else day, *values):
            # A value check() could not read back would make a link that never works.
            if not 0 <= v < VALUE_LIMIT:
                name = ("day", *kind.fields)[(day, *values).index(v)]
                raise ValueError(f"token value {name}={v} is outside [0, 2**63)")
            while v >= 0x80:  # a varint: 7 bits a byte, low bits first, high bit = more follow
                payload.append((v & 0x7F) | 0x80)
                v >>= 7
            payload.append(v)
        raw = bytes(payload) + self._mac(0, bytes(payload))
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def make_series(self, kind: Kind, *values: int, last: range) -> list[str]:
        """make(kind, *values, n) for each n in `last`, the shared start signed once: the
        tokens of one message's links differ only in their last value, so the shared bytes
        are laid out and hashed once, and the HMAC state after them copied for each link."""
        if not last:
            return []
        first = self.make(kind, *values, last[0])  # checks the values and the count
        raw = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4))
        head = raw[: -_MAC_LEN - _varint_size(last[0])]
        started = self._macs[0].copy()
        started.update(head)
        out = [first]
        for n in last[1:]:
            if not 0 <= n < VALUE_LIMIT:
                raise ValueError(f"token value {kind.fields[-1]}={n} is outside [0, 2**63)")
            tail = _varint(n)
            mac = started.copy()
            mac.update(tail)
            token = head + tail + mac.digest()[:_MAC_LEN]
            out.append(base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii"))
        return out

    def check(self, token: str, kind: Kind, *, max_age_days: int | None = None) -> tuple[int, ...]:
        """The values a genuine token of `kind` carries; TokenError for anything else."""
        raw = _decode(token)
        if len(raw) < _MIN_RAW:
            raise TokenError(f"the token is too short ({len(raw)} bytes; the least is {_MIN_RAW})")
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        # The layout is checked before the MAC (it is public, and this refuses a cut or
        # mangled link with the reason); the kind asked for only after, so a genuine token
        # of another kind is told apart from a forged one.
        token_kind, day, values = _parse(payload)
        if not any(hmac.compare_digest(mac, self._mac(i, payload)) for i in range(len(self._macs))):
            raise TokenError("the token's signature does not match (forged or altered)")
        if token_kind is not kind:
            raise TokenError(
                f"the token is not meant for this link (it is for {token_kind.name.lower()} links)"
            )
        if max_age_days is not None and _today() - day > max_age_days:
            raise TokenError("the token has expired")
        return values


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _varint_size(v: int) -> int:
    return max(1, -(-v.bit_length() // 7))


def _today() -> int:
    return int(time.time()) // _EPOCH_DAY
