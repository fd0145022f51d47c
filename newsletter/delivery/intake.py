"""Bounce intake: an SMTP receiver for the bounce domain, and an IMAP mailbox reader.

Both hand each message to a function the door gives them (`Take`), which reads and applies
it and says whether it was understood; neither knows the database. The receiver runs that
function off the event loop (in a thread), so a slow database never stalls SMTP sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from newsletter.errors import NewsletterError

log = logging.getLogger(__name__)

# What a message came to: True once it was read and acted on (or found to be an auto-reply
# or a forgery: nothing to do); False when it was not understood.
Take = Callable[[bytes, tuple[str, ...]], bool]
AsyncTake = Callable[[bytes, tuple[str, ...]], Awaitable[bool]]


class BounceHandler:
    """aiosmtpd handler for the bounce domain: takes mail for it, refuses relaying, hands each
    message over, and answers 451 when that fails (the sending MTA tries again later)."""

    def __init__(self, domain: str, take: AsyncTake, max_bytes: int) -> None:
        self.domain = domain.lower()
        self.take = take
        self.max_bytes = max_bytes
        self.count = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.rpartition("@")[2].lower().rstrip(".") != self.domain:
            return "550 5.7.1 relaying denied: this server takes bounces for " + self.domain
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if len(raw) > self.max_bytes:
            return "552 5.3.4 message too big for a bounce"
        try:
            await self.take(raw, tuple(envelope.rcpt_tos))
        # The report is still with the sender, who will try again: nothing is lost.
        except Exception:
            log.exception("bounce intake failed; the sender will retry")
            return "451 4.3.0 cannot take the report now, try again later"
        self.count += 1
        return "250 2.0.0 report taken"


async def start_receiver(handler: BounceHandler, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(
            lambda: SMTP(
                handler,
                data_size_limit=handler.max_bytes,
                enable_SMTPUTF8=True,
                hostname="newsletter-bounces",
                ident="newsletter bounces",
            ),
            host,
            port,
        )
    except OSError as exc:
        raise NewsletterError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def in_thread(take: Take) -> AsyncTake:
    """`take` run in a worker thread, so the receiver's loop never does database work."""

    async def run(raw: bytes, rcpts: tuple[str, ...]) -> bool:
        return await asyncio.to_thread(take, raw, rcpts)

    return run


# --- IMAP --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mailbox:
    host: str
    port: int
    security: str  # tls, starttls, none
    user: str
    password: str = field(repr=False)
    folder: str = "INBOX"
    done_folder: str = "Processed"


@dataclass
class Fetched:
    read: int = 0
    moved: int = 0
    left: int = 0  # not understood: left where they were


def _quote(name: str) -> str:
    """An IMAP mailbox name as a quoted string (RFC 3501 §4.3)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _connect(box: Mailbox, timeout: float) -> imaplib.IMAP4:
    try:
        if box.security == "tls":
            client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                box.host, box.port, ssl_context=ssl.create_default_context(), timeout=timeout
            )
        else:
            client = imaplib.IMAP4(box.host, box.port, timeout=timeout)
            if box.security == "starttls":
                client.starttls(ssl.create_default_context())
        client.login(box.user, box.password)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise NewsletterError(f"IMAP {box.host}:{box.port} as {box.user!r}: {exc}") from None
    return client


def _ok(result: tuple[str, list[Any]], what: str) -> list[Any]:
    status, data = result
    if status != "OK":
        raise NewsletterError(f"IMAP {what} failed: {data!r}")
    return data


def fetch(box: Mailbox, take: Take, *, limit: int = 1000, timeout: float = 60.0) -> Fetched:
    """Read up to `limit` messages of the folder, oldest first; move each one `take`
    understood to the done folder (made if missing) and leave the others where they are.

    Blocking (imaplib): run it in a thread of its own, never on an event loop."""
    done = Fetched()
    client = _connect(box, timeout)
    try:
        client.create(_quote(box.done_folder))  # fails harmlessly when it exists
        _ok(client.select(_quote(box.folder)), f"opening {box.folder}")
        uids = _ok(client.uid("SEARCH", "ALL"), "SEARCH")[0].split()[:limit]
        can_move = "MOVE" in client.capabilities
        for uid in uids:
            raw = _message(_ok(client.uid("FETCH", uid, "(BODY.PEEK[])"), "FETCH"))
            if raw is None:
                continue
            done.read += 1
            if not take(raw, ()):
                done.left += 1
                continue
            if can_move:
                _ok(client.uid("MOVE", uid, _quote(box.done_folder)), "MOVE")
            else:  # RFC 3501 alone: copy, mark deleted, expunge at the end
                _ok(client.uid("COPY", uid, _quote(box.done_folder)), "COPY")
                _ok(client.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
            done.moved += 1
        if not can_move and done.moved:
            client.expunge()
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            client.logout()
    return done


_LITERAL = re.compile(rb"\{\d+\}$")


def _message(data: list[Any]) -> bytes | None:
    """The message bytes in a FETCH response (imaplib gives (envelope, literal) pairs)."""
    for item in data:
        if isinstance(item, tuple) and len(item) == 2 and _LITERAL.search(item[0]):
            body = item[1]
            return bytes(body) if isinstance(body, (bytes, bytearray)) else None
    return None
