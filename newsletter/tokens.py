"""Signed link tokens (vote, unsubscribe, view online, confirm): HMAC-SHA256, url-safe, key rotation.

A token is base64url(payload ‖ mac). The payload is a version byte, a kind byte, the day it
was issued and a few unsigned integers (ids and an option number), packed as varints: no
address or name, nothing a reader could learn about the member. The MAC is the first 16
bytes of HMAC-SHA256 over the payload. New tokens use the first key; every key in the list
is tried when checking, so a retired key keeps old links working until it is dropped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from enum import IntEnum

from newsletter.errors import TokenError

_VERSION = 1
_MAC_LEN = 16
_EPOCH_DAY = 86400


class Kind(IntEnum):
    VOTE = 1  # (survey_id, member_id, option_position)
    UNSUBSCRIBE = 2  # (member_id, issue_id)
    VIEW = 3  # (issue_id, member_id)
    CONFIRM = 4  # (member_id,)
    TRAP = 5  # (member_id, issue_id): a link hidden from people, so only machines fetch it


def _varint(n: int, out: bytearray) -> None:
    if n < 0:
        raise ValueError("token values are unsigned")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _read_varints(data: bytes) -> list[int]:
    values, n, shift = [], 0, 0
    for byte in data:
        n |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 63:
                raise TokenError("the token is malformed")
        else:
            values.append(n)
            n, shift = 0, 0
    if shift:
        raise TokenError("the token is malformed")
    return values


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

    def make(self, kind: Kind, *values: int, day: int | None = None) -> str:
        payload = bytearray((_VERSION, kind))
        _varint(int(time.time()) // _EPOCH_DAY if day is None else day, payload)
        for v in values:
            _varint(v, payload)
        raw = bytes(payload) + self._mac(0, bytes(payload))
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def check(self, token: str, kind: Kind, *, max_age_days: int | None = None) -> tuple[int, ...]:
        """The values a genuine token of `kind` carries; TokenError for anything else."""
        if not token or len(token) > 200 or not token.isascii():
            raise TokenError("the token is malformed")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("the token is malformed") from None
        if len(raw) < 3 + _MAC_LEN:
            raise TokenError("the token is malformed")
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        if not any(hmac.compare_digest(mac, self._mac(i, payload)) for i in range(len(self._macs))):
            raise TokenError("the token's signature does not match (forged or altered)")
        if payload[0] != _VERSION or payload[1] != kind:
            raise TokenError("the token is not meant for this link")
        day, *values = _read_varints(payload[2:])
        if max_age_days is not None and int(time.time()) // _EPOCH_DAY - day > max_age_days:
            raise TokenError("the token has expired")
        return tuple(values)
