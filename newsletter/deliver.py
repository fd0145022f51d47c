"""Deliver an issue: one message per member over reused SMTP connections, one ledger row per member.

This is the first, simple engine: N connections in parallel, each message to exactly one
recipient, every outcome recorded. 5xx is permanent (552 is treated as temporary, as
Mailman does: "mailbox full" often clears); 4xx, timeouts and dropped connections are
retried a few times on a fresh connection within the run and then recorded as failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

import aiosmtplib
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter import store
from newsletter.config import Settings, SmtpSettings
from newsletter.errors import NewsletterError
from newsletter.models import (
    ACTIVE,
    BOUNCED,
    FAILED,
    QUEUED,
    SENT,
    SKIPPED,
    Delivery,
    Issue,
    Member,
    utcnow,
)
from newsletter.personalize import Personalizer, Recipient

BATCH = 500
ATTEMPTS_PER_RUN = 3


class DeliveryError(NewsletterError, ConnectionError):
    """The SMTP server cannot be used at all (down, refusing, missing a needed extension)."""


class SmtpConnection(Protocol):
    """What the engine needs of a connection; aiosmtplib.SMTP is one, a test double could be another."""

    async def connect(self) -> object: ...
    async def ehlo(self) -> object: ...
    async def sendmail(
        self, sender: str, recipients: list[str], message: bytes, /, *, mail_options: list[str]
    ) -> object: ...
    def supports_extension(self, extension: str) -> bool: ...
    def close(self) -> None: ...


def smtp_factory(conf: SmtpSettings) -> Callable[[], aiosmtplib.SMTP]:
    def make() -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=conf.host,
            port=conf.port,
            username=conf.user or None,
            password=conf.password or None,
            use_tls=conf.security == "tls",
            start_tls=conf.security == "starttls",
            timeout=conf.timeout,
        )

    return make


@dataclass(slots=True)
class Outcome:
    delivery_id: int
    status: str
    code: int | None
    message: str
    message_id: str = ""


@dataclass
class Summary:
    issue_id: int
    subject: str
    counts: dict[str, int] = field(default_factory=dict)
    attempted: int = 0
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.attempted / self.elapsed if self.elapsed else 0.0


def classify(exc: BaseException) -> tuple[str, int | None, str]:
    """(status, code, text) for an SMTP failure. 5xx but 552 is permanent; the rest temporary."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code = int(exc.code)
        permanent = 500 <= code < 600 and code != 552
        return (BOUNCED if permanent else FAILED), code, str(exc.message)[:1000]
    return FAILED, None, f"{exc.__class__.__name__}: {exc}"[:1000]


_CONNECTION_ERRORS = (
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPConnectError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class Sender:
    """Sends one issue's queued rows; `run()` returns when none is left to try in this run."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        issue: Issue,
        personalizer: Personalizer,
        *,
        connect: Callable[[], SmtpConnection] | None = None,
        progress: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.issue = issue
        self.personalizer = personalizer
        self.connect = connect or smtp_factory(settings.smtp)
        self.progress = progress
        self.envelope_from = settings.list.return_path or settings.list.from_address
        self.mail_options = ["BODY=8BITMIME"]

    async def _open(self) -> SmtpConnection:
        conn = self.connect()
        await conn.connect()
        return conn

    async def preflight(self) -> None:
        """Fail early and clearly when the server is unreachable or cannot take 8bit bodies."""
        conf = self.settings.smtp
        try:
            conn = await self._open()
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException) as exc:
            raise DeliveryError(
                f"cannot connect to the SMTP server {conf.host}:{conf.port}: {exc}"
            ) from None
        try:
            await conn.ehlo()
            if not conn.supports_extension("8bitmime"):
                raise DeliveryError(
                    f"the SMTP server {conf.host}:{conf.port} does not offer 8BITMIME (RFC 6152), "
                    "which UTF-8 bodies need"
                )
        finally:
            conn.close()

    async def run(self) -> Summary:
        await self.preflight()
        started = time.monotonic()
        summary = Summary(self.issue.id, self.issue.subject)
        queue: asyncio.Queue[tuple[int, Recipient] | None] = asyncio.Queue(
            maxsize=self.settings.smtp.connections * 4
        )
        results: list[Outcome] = []
        workers = [
            asyncio.create_task(self._worker(queue, results))
            for _ in range(self.settings.smtp.connections)
        ]
        try:
            last_id = 0
            while True:
                batch, skipped = self._load_batch(last_id)
                if not batch and not skipped:
                    break
                last_id = max([d for d, _ in batch] + skipped)
                results.extend(
                    Outcome(d, SKIPPED, None, "member no longer active") for d in skipped
                )
                for job in batch:
                    await queue.put(job)
                await queue.join()
                summary.attempted += len(batch)
                self._record(results)
                results.clear()
        finally:
            for _ in workers:
                queue.put_nowait(None)
            await asyncio.gather(*workers, return_exceptions=True)
            self._record(results)
        summary.elapsed = time.monotonic() - started
        self._finish()
        with self.sessions() as session:
            summary.counts = store.delivery_counts(session, self.issue.id)
        return summary

    def _load_batch(self, after: int) -> tuple[list[tuple[int, Recipient]], list[int]]:
        """The next queued rows; members who left since the snapshot come back as skipped."""
        with self.sessions() as session:
            rows = session.execute(
                select(Delivery.id, Member.id, Member.email, Member.name, Member.status)
                .join(Member, Member.id == Delivery.member_id)
                .where(
                    Delivery.issue_id == self.issue.id,
                    Delivery.status == QUEUED,
                    Delivery.id > after,
                )
                .order_by(Delivery.id)
                .limit(BATCH)
            ).all()
        batch = [(d, Recipient(m, e, n)) for d, m, e, n, st in rows if st == ACTIVE]
        skipped = [d for d, _, _, _, st in rows if st != ACTIVE]
        return batch, skipped

    async def _worker(
        self, queue: asyncio.Queue[tuple[int, Recipient] | None], results: list[Outcome]
    ) -> None:
        conn: SmtpConnection | None = None
        try:
            while (job := await queue.get()) is not None:
                try:
                    delivery_id, recipient = job
                    outcome, conn = await self._send_one(conn, delivery_id, recipient)
                    results.append(outcome)
                    if self.progress:
                        self.progress(outcome)
                finally:
                    queue.task_done()
            queue.task_done()
        finally:
            if conn is not None:
                conn.close()

    async def _send_one(
        self, conn: SmtpConnection | None, delivery_id: int, recipient: Recipient
    ) -> tuple[Outcome, SmtpConnection | None]:
        message_id, data = self.personalizer.message(recipient)
        outcome = Outcome(delivery_id, FAILED, None, "not attempted", message_id)
        for _ in range(ATTEMPTS_PER_RUN):
            try:
                if conn is None:
                    conn = await self._open()
                await conn.sendmail(
                    self.envelope_from, [recipient.email], data, mail_options=self.mail_options
                )
                return Outcome(delivery_id, SENT, 250, "accepted", message_id), conn
            except aiosmtplib.SMTPResponseException as exc:
                status, code, text = classify(exc)
                outcome = Outcome(delivery_id, status, code, text, message_id)
                if code == 421 and conn is not None:  # the server is closing (RFC 5321 §3.8)
                    conn.close()
                    conn = None
                if status == BOUNCED:
                    return outcome, conn
            except aiosmtplib.SMTPRecipientsRefused as exc:
                status, code, text = classify(exc)
                outcome = Outcome(delivery_id, status, code, text, message_id)
                if status == BOUNCED:
                    return outcome, conn
            except _CONNECTION_ERRORS as exc:
                _, code, text = classify(exc)
                outcome = Outcome(delivery_id, FAILED, code, text, message_id)
                if conn is not None:
                    conn.close()
                    conn = None
        return outcome, conn

    def _record(self, results: list[Outcome]) -> None:
        if not results:
            return
        now = utcnow()
        table = cast(Table, Delivery.__table__)
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values(
                status=bindparam("b_status"),
                attempts=table.c.attempts + bindparam("b_inc"),
                last_code=bindparam("b_code"),
                last_message=bindparam("b_message"),
                message_id=bindparam("b_message_id"),
                updated_at=bindparam("b_now", type_=table.c.updated_at.type),
            )
        )
        params = [
            {
                "b_id": o.delivery_id,
                "b_status": o.status,
                "b_inc": 0 if o.status == SKIPPED else 1,
                "b_code": o.code,
                "b_message": o.message,
                "b_message_id": o.message_id,
                "b_now": now,
            }
            for o in results
        ]
        with self.sessions.begin() as session:
            session.connection().execute(statement, params)

    def _finish(self) -> None:
        with self.sessions.begin() as session:
            counts = store.delivery_counts(session, self.issue.id)
            if not counts.get(QUEUED):
                session.execute(
                    update(Issue)
                    .where(Issue.id == self.issue.id)
                    .values(status=SENT, sent_at=utcnow())
                )
