"""Editors: password hashes for config.toml, the login throttle, and the audited login itself."""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable

from newsletter.config import EditorSettings
from newsletter.services.unit import Unit, use_case

# scrypt parameters for new hashes: 16 MiB of memory, about 50 ms.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    """An editor's password hash for config.toml: `scrypt$N$r$p$salt$hash` (base64url)."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, password_hash: str) -> bool:
    """Whether `password` matches a hash from hash_password; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, digest = password_hash.split("$")
        if scheme != "scrypt":
            return False
        n_i, r_i, p_i = int(n), int(r), int(p)
        if not (2 <= n_i <= 2**20 and 1 <= r_i <= 32 and 1 <= p_i <= 16):
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=n_i,
            r=r_i,
            p=p_i,
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


class Passwords:
    """Checks a name and password against the [[editor]] entries in constant-ish time."""

    def __init__(self, editors: list[EditorSettings]) -> None:
        self.editors = editors
        # Checked when the name is unknown, so a wrong name takes as long as a wrong password.
        self._dummy_hash = hash_password(secrets.token_urlsafe(16)) if editors else ""
        # scrypt runs so far (the throttle's tests count them). Checks run in worker threads
        # at once, and `+= 1` is not atomic: an unlocked count could come out low.
        self.checks = 0
        self._count = threading.Lock()

    def check(self, name: str, password: str) -> str | None:
        """The editor's name when name and password match an [[editor]] entry, else None."""
        found = None
        for editor in self.editors:
            if hmac.compare_digest(editor.name.encode(), name.encode()):
                found = editor
        with self._count:
            self.checks += 1
        ok = verify_password(password, found.password_hash if found else self._dummy_hash)
        return found.name if found and ok else None


class LoginThrottle:
    """Login attempts, counted per client address and per editor name over `window` seconds.

    An attempt counts BEFORE its password is checked (`admit`), so guesses sent all at once are
    counted as they arrive, not after scrypt has already run for each of them. Past
    `per_address` attempts from one address, or `per_name` against one name, the login form
    answers 429 without checking the password until the oldest attempt leaves the window. A
    login that succeeds takes its own attempt back and clears its address. In memory, per
    `serve` process; at most `keys` addresses and names are tracked, least recent dropped first.
    """

    def __init__(
        self,
        per_address: int = 10,
        per_name: int = 30,
        window: float = 900.0,
        keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = {"address": per_address, "name": per_name}
        self.window = window
        self.keys = keys
        self.clock = clock
        self._lock = threading.Lock()
        self._attempts: collections.OrderedDict[tuple[str, str], collections.deque[float]] = (
            collections.OrderedDict()
        )

    def _recent(self, key: tuple[str, str], now: float) -> collections.deque[float]:
        times = self._attempts.get(key)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._attempts[key]
        return times

    def _keys(self, address: str, name: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("address", address), ("name", name.casefold())

    def admit(self, address: str, name: str) -> tuple[int, float]:
        """(0, ticket) and the attempt counted, or (seconds to wait, 0) and nothing counted."""
        with self._lock:
            now = self.clock()
            wait = 0.0
            for key in self._keys(address, name):
                times = self._recent(key, now)
                if len(times) >= self.limits[key[0]]:
                    wait = max(wait, times[0] + self.window - now)
            if wait:
                return max(1, math.ceil(wait)), 0.0
            for key in self._keys(address, name):
                self._attempts.setdefault(key, collections.deque()).append(now)
                self._attempts.move_to_end(key)
            while len(self._attempts) > self.keys:
                self._attempts.popitem(last=False)
            return 0, now

    def retry_after(self, address: str, name: str) -> int:
        """Seconds until an attempt from `address` as `name` is admitted; 0: now."""
        with self._lock:
            now = self.clock()
            wait = 0.0
            for key in self._keys(address, name):
                times = self._recent(key, now)
                if len(times) >= self.limits[key[0]]:
                    wait = max(wait, times[0] + self.window - now)
            return math.ceil(wait)

    def succeeded(self, address: str, name: str, ticket: float) -> None:
        """The admitted attempt was the right password: it does not count against the name,
        and the address starts afresh."""
        with self._lock:
            self._attempts.pop(("address", address), None)
            times = self._attempts.get(("name", name.casefold()))
            if times is not None and ticket in times:
                times.remove(ticket)


@use_case
def login(unit: Unit, name: str, *, address: str) -> None:
    """An editor logged in (the password was checked before, off the event loop)."""
    unit.audit("login", actor=name, detail=f"from {address or '?'}")
