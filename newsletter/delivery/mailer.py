"""The mailer: delivers the system mail queue (confirmations, test copies) with retries.

Messages are claimed under a lease, like an issue's rows, so several processes (each `serve`,
a `worker`) may run a mailer on one database and each message still goes out once. A relay
that is down or answers 4xx defers the message with backoff until its retry deadline; 5xx
(but 552) fails it at once. `serve` runs one in the background, woken whenever a transaction
queues a message; `send`, `worker` and `issue test` drain the queue as part of their work.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiosmtplib
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.delivery.engine import classify
from newsletter.delivery.smtp import (
    CONNECTION_ERRORS,
    ClientFactory,
    Connection,
    Relays,
    aiosmtplib_client,
    transmit,
)
from newsletter.storage import mail as rows
from newsletter.storage import signups
from newsletter.storage.ledger import new_owner
from newsletter.storage.models import MailStatus, SystemMail, utcnow

if TYPE_CHECKING:  # dkimpy and cryptography are imported only when DKIM is configured
    from newsletter.delivery.signing import DkimSigner

log = logging.getLogger(__name__)

LEASE = dt.timedelta(minutes=5)
CLAIM = 20  # messages claimed at a time


@dataclass
class Drained:
    """What one pass over the queue did."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)


class Mailer:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        client_factory: ClientFactory = aiosmtplib_client,
        poll_seconds: float = 30.0,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        self.relays = Relays(self.settings.smtp, client_factory)
        self.owner = new_owner()
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._signer: DkimSigner | None = None

    def wake(self, what: str = "mail") -> None:
        """Called (from any thread) after a transaction queued a message (Services.listen)."""
        if what != "mail":
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    _loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """Let `run` end after the pass under way, even if a cancel is lost on the way."""
        self._stop.set()
        self._wake.set()

    def _claim(self) -> list[SystemMail]:
        with self.sessions.begin() as session:
            claimed = list(rows.claim(session, self.owner, self.clock(), LEASE, CLAIM))
            for row in claimed:
                session.expunge(row)
            return claimed

    def _record(self, row: SystemMail, status: MailStatus, code: int | None, text: str) -> None:
        now = self.clock()
        due = None
        if status == MailStatus.DEFERRED:
            conf = self.settings.delivery
            delay = min(conf.retry_max_seconds, conf.retry_base_seconds * 2**row.attempts)
            due = now + dt.timedelta(seconds=delay * random.uniform(0.8, 1.2))
            if due > row.retry_until:
                status, text = MailStatus.FAILED, f"gave up at the retry deadline: {text}"
                due = None
        with self.sessions.begin() as session:
            recorded = rows.record(session, row.id, self.owner, status, code, text, now, due)
            if recorded and status == MailStatus.SENT and row.signup_id is not None:
                signups.mark_mailed(session, [row.signup_id])

    def _sign(self, data: bytes) -> bytes:
        if self.settings.dkim is None:
            return data
        if self._signer is None:
            from newsletter.delivery.signing import signer_for

            self._signer = signer_for(self.settings)
        assert self._signer is not None
        return self._signer.sign(data)

    async def drain(self) -> Drained:
        """Send every message due now; returns what happened. Never raises for one message."""
        result = Drained()
        conn = Connection(self.relays, self.settings.smtp.idle_timeout, 0)
        untried: list[int] = []
        try:
            while batch := await asyncio.to_thread(self._claim):
                untried = [row.id for row in batch]
                for row in batch:
                    status, code, text = await self._send(conn, row)
                    await asyncio.to_thread(self._record, row, status, code, text)
                    untried.remove(row.id)
                    if status == MailStatus.SENT:
                        result.sent += 1
                    else:
                        result.reasons.append(f"{row.kind} to {row.to_address}: {text}")
                        if status == MailStatus.DEFERRED:
                            result.deferred += 1
                        else:
                            result.failed += 1
                if result.deferred and not result.sent:
                    break  # the relay is out of reach: the rest waits for the next pass
        finally:
            if untried:  # stopped mid-batch: hand back what was claimed and not tried
                await asyncio.shield(asyncio.to_thread(self._release, untried))
            await conn.release(polite=True)
        return result

    def _release(self, mail_ids: list[int]) -> None:
        with self.sessions.begin() as session:
            rows.release(session, mail_ids, self.owner)

    async def _send(self, conn: Connection, row: SystemMail) -> tuple[MailStatus, int | None, str]:
        try:
            data = await asyncio.to_thread(self._sign, row.message)
            client = await conn.get()
            await transmit(client, row.envelope_from, row.to_address, data)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
            permanent, code, text = classify(exc)
            conn.mark_used()
            return (MailStatus.FAILED if permanent else MailStatus.DEFERRED), code, text
        except CONNECTION_ERRORS as exc:
            await conn.release()
            _, code, text = classify(exc)
            return MailStatus.DEFERRED, code, text
        conn.mark_used()
        return MailStatus.SENT, 250, "accepted"

    def _next_due(self) -> dt.datetime | None:
        with self.sessions() as session:
            return rows.next_due(session)

    async def _next_wait(self) -> float:
        due = await asyncio.to_thread(self._next_due)
        if due is None:
            return self.poll_seconds
        return max(0.05, min(self.poll_seconds, (due - self.clock()).total_seconds()))

    async def run(self) -> None:
        """Drain the queue whenever woken, when a retry falls due, or every poll_seconds."""
        self._loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            # Cleared before the pass, not after it: a message queued while the pass runs
            # wakes the next one at once instead of waiting out poll_seconds.
            self._wake.clear()
            try:
                drained = await self.drain()
                for reason in drained.reasons:
                    log.warning("system mail not sent yet: %s", reason)
                wait = await self._next_wait()
            except Exception:  # the database is out of reach, say: try again later
                log.exception("mailer: pass failed")
                wait = self.poll_seconds
            if self._stop.is_set():  # set while the pass ran: do not wait for the next one
                return
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that comes
            # as its wait ends, and `serve` would then never stop the mailer.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
