"""Sessions: the desk's (signed cookies, CSRF tokens, signed notices) and members' on the board."""

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
from starlette.responses import Response

from newsletter.config import Settings
from newsletter.errors import TokenError
from newsletter.services.unit import Actor, Role
from newsletter.tokens import Kind, Signer

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


# --- members' sessions on the board ------------------------------------------------------------

MEMBER_COOKIE = "member_session"
MAX_ID = 2**31 - 1


@dataclass(frozen=True, slots=True)
class MemberSession:
    """What a member's session cookie says: who, in which generation (a "sign out everywhere"
    starts a new one), and the session's own random number (its forms' CSRF tokens name it)."""

    member_id: int
    generation: int
    sid: int


class MemberAuth:
    """Members' session cookies and their forms' CSRF tokens, both signed tokens (tokens.py:
    SESSION and FORM), so keys rotate as every link's do. The cookie is HttpOnly, SameSite=Lax
    (a link from elsewhere still arrives signed in; a form posted from elsewhere does not) and
    Secure when the site is served over https."""

    def __init__(self, settings: Settings, signer: Signer) -> None:
        self.signer = signer
        self.days = settings.board.session_days
        self.secure = settings.list.base_url.startswith("https://")

    def new(self, member_id: int, generation: int) -> str:
        """A new session's cookie value."""
        return self.signer.make(Kind.SESSION, member_id, generation, secrets.randbits(62))

    def session(self, request: Request) -> MemberSession | None:
        """The session the request's cookie names (not yet checked against the database)."""
        token = request.cookies.get(MEMBER_COOKIE, "")
        if not token:
            return None
        try:
            member_id, generation, sid = self.signer.check(
                token, Kind.SESSION, max_age_days=self.days
            )
        except TokenError:
            return None
        if member_id > MAX_ID or generation > MAX_ID:
            return None
        return MemberSession(member_id, generation, sid)

    def csrf(self, session: MemberSession) -> str:
        return self.signer.make(Kind.FORM, session.member_id, session.sid)

    def csrf_ok(self, session: MemberSession, token: object) -> bool:
        if not isinstance(token, str):
            return False
        try:
            values = self.signer.check(token, Kind.FORM, max_age_days=self.days)
        except TokenError:
            return False
        return values == (session.member_id, session.sid)

    def set(self, response: Response, value: str) -> None:
        response.set_cookie(
            MEMBER_COOKIE,
            value,
            max_age=self.days * 86400,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.secure,
        )

    def clear(self, response: Response) -> None:
        response.delete_cookie(
            MEMBER_COOKIE, path="/", httponly=True, samesite="lax", secure=self.secure
        )
