"""The desk's sessions: signed, HttpOnly cookies, per-session CSRF tokens, signed notices."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request

from newsletter.config import Settings
from newsletter.services.unit import Actor, Role

COOKIE = "desk_session"
SESSION_SECONDS = 12 * 3600


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of text from a request (any characters) with a MAC."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


@dataclass(frozen=True, slots=True)
class Editor:
    name: str
    sid: str
    role: Role = Role.PUBLISHER

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.role)


class DeskAuth:
    """Signed session cookies (stdlib HMAC-SHA256) and per-session CSRF tokens."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        secret = settings.require_secret()[0]
        self.key = hmac.new(secret, b"newsletter desk session", hashlib.sha256).digest()
        self.roles = {e.name: Role(e.role) for e in settings.editor}
        self.secure = settings.list.base_url.startswith("https://")

    def _sign(self, purpose: bytes, data: bytes) -> str:
        mac = hmac.new(self.key, purpose + b"\x00" + data, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def cookie(self, name: str) -> str:
        payload = json.dumps(
            {"n": name, "s": secrets.token_urlsafe(16), "e": int(time.time()) + SESSION_SECONDS}
        ).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._sign(b'session', body.encode())}"

    def editor(self, request: Request) -> Editor | None:
        value = request.cookies.get(COOKIE, "")
        body, _, sig = value.partition(".")
        if not body or not _same(sig, self._sign(b"session", body.encode())):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            name, sid, expires = str(data["n"]), str(data["s"]), int(data["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time() or name not in self.roles:
            return None
        return Editor(name, sid, self.roles[name])

    def csrf(self, editor: Editor) -> str:
        return self._sign(b"csrf", editor.sid.encode())

    def csrf_ok(self, editor: Editor, token: object) -> bool:
        return isinstance(token, str) and _same(token, self.csrf(editor))

    def notice_query(self, text: str, error: bool = False) -> str:
        """A redirect's query string carrying a message the page shows; signed, so a link
        from elsewhere cannot make the desk display words of its choosing."""
        kind = "error" if error else "done"
        return "?" + urlencode(
            {"n": text, "k": kind, "s": self._sign(b"notice", f"{kind}:{text}".encode())}
        )

    def notice(self, request: Request) -> tuple[str, str]:
        text, kind, sig = (request.query_params.get(k, "") for k in ("n", "k", "s"))
        if text and _same(sig, self._sign(b"notice", f"{kind}:{text}".encode())):
            return text, kind
        return "", ""
