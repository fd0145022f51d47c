"""The delivery engine: send one issue's rows over pooled SMTP connections, recording every outcome.

Rows are claimed from the ledger a window at a time (delivery.in_flight) and their outcomes
committed in small batches, so a process killed at any moment re-sends at most the claimed
window. 5xx replies are permanent (552 is treated as temporary, as Mailman does); 4xx,
timeouts and dropped connections defer the row with exponential backoff and jitter until
the issue's retry deadline, then fail it. A run of connection failures pauses the issue.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import aiosmtplib
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content.layout import Wire
from newsletter.errors import NewsletterError
from newsletter.storage.ledger import Job, Ledger, Outcome, Recipient, new_owner
from newsletter.storage.models import (
    DeliveryStatus,
    Issue,
    IssueStatus,
    utcnow,
)
from newsletter.storage.ratelimit import SharedRateLimits

if TYPE_CHECKING:  # signing imports dkimpy and cryptography: only a DKIM run needs them
    from newsletter.delivery.signing import DkimSigner, SigningPool
from newsletter.delivery.smtp import (
    CONNECTION_ERRORS,
    ClientFactory,
    Connection,
    Relays,
    aiosmtplib_client,
    transmit,
)


class Messages(Protocol):
    """What the engine needs to make a member's message: content.personalize.Personalizer for
    one copy, content.variants.Variants for an issue with several."""

    @property
    def skeleton(self) -> tuple[bytes, ...]: ...

    def slots(self, r: Recipient) -> tuple[str, list[bytes]]: ...

    def wire(self, r: Recipient) -> tuple[str, Wire]: ...

    def wire_from(self, values: list[bytes]) -> Wire: ...

    def envelope_from(self, member_id: int) -> str: ...


class IssuePaused(NewsletterError):
    """The issue is paused (by an editor, or by the engine after repeated connection failures)."""

    def __init__(self, issue_id: int, reason: str) -> None:
        self.issue_id = issue_id
        self.reason = reason
        super().__init__(
            f"issue #{issue_id} is paused: {reason or 'by an editor'}; "
            f"`newsletter issue resume {issue_id}` continues it"
        )


@dataclass
class Summary:
    issue_id: int
    subject: str
    counts: dict[str, int] = field(default_factory=dict)
    attempted: int = 0
    elapsed: float = 0.0
    status: str = ""
    pause_reason: str = ""

    @property
    def rate(self) -> float:
        return self.attempted / self.elapsed if self.elapsed else 0.0


def classify(exc: BaseException) -> tuple[bool, int | None, str]:
    """(permanent, code, text) for a failed attempt. 5xx but 552 is permanent; the rest is not."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code = int(exc.code)
        return 500 <= code < 600 and code != 552, code, str(exc.message)
    return False, None, f"{exc.__class__.__name__}: {exc}"


class Engine:
    """Delivers one issue. `run()` returns when nothing is left to try within the linger window."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        issue: Issue,
        personalizer: Messages,
        *,
        client_factory: ClientFactory = aiosmtplib_client,
        progress: Callable[[Outcome], None] | None = None,
        dkim: DkimSigner | None = None,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.conf = settings.delivery
        self.issue = issue
        self.personalizer = personalizer
        self.progress = progress
        self.dkim = dkim
        self.ledger = Ledger(
            sessions,
            issue.id,
            owner or new_owner(),
            lease_seconds=self.conf.lease_seconds,
            bounce_threshold=self.conf.bounce_threshold,
        )
        self.sessions = sessions
        self.relays = Relays(settings.smtp, client_factory)
        # Kept in the database, per relay, so every sender on the issue shares one quota.
        self.limits = SharedRateLimits(
            sessions, settings.smtp.rate_per_second, settings.smtp.rate_per_hour
        )
        self.retry_until = issue.retry_until or (
            issue.created_at + dt.timedelta(hours=self.conf.retry_deadline_hours)
        )
        self.outcomes: list[Outcome] = []
        self.in_flight = 0
        self.left: set[int] = set()
        self.stopping = False
        self.stop_reason = ""
        self.consecutive_failures = 0
        self.attempted = 0
        self._recorded = asyncio.Event()
        self._batch_ready = asyncio.Event()  # commit_every outcomes are waiting to be recorded
        self._signing: SigningPool | None = None
        # delivery id -> Message-ID, DATA form, and its DKIM header on its way from a signer
        self._signed: dict[int, tuple[str, bytes, asyncio.Future[bytes]]] = {}

    def stop(self, reason: str = "") -> None:
        """Stop claiming; messages already in an SMTP transaction finish, the rest go back."""
        self.stopping = True
        self.stop_reason = self.stop_reason or reason

    async def run(self) -> Summary:
        status, reason = await asyncio.to_thread(self.ledger.issue_status)
        if status == IssueStatus.PAUSED:
            raise IssuePaused(self.issue.id, reason)
        if status == IssueStatus.CANCELLED:
            raise NewsletterError(f"issue #{self.issue.id} was cancelled")
        started = time.monotonic()
        await asyncio.to_thread(self.ledger.recover)
        if self.dkim is not None:
            from newsletter.delivery.signing import SigningPool

            processes = self.settings.dkim.processes if self.settings.dkim else 0
            self._signing = await SigningPool.start(
                self.dkim, self.personalizer.skeleton, processes
            )
        queue: asyncio.Queue[Job | None] = asyncio.Queue()
        unsent: list[int] = []
        workers = [
            asyncio.create_task(self._worker(queue, unsent))
            for _ in range(self.settings.smtp.connections)
        ]
        recorder = asyncio.create_task(self._recorder())
        try:
            await self._produce(queue)
        finally:
            self.stopping = self.stopping or not queue.empty()
            for _ in workers:
                queue.put_nowait(None)
            await asyncio.gather(*workers)
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder
            await asyncio.to_thread(self.ledger.record, self.outcomes)
            self.outcomes = []
            await asyncio.to_thread(self.ledger.release, unsent)
            await self._close_signing()
        if self.stop_reason.startswith("paused"):
            await asyncio.to_thread(self.ledger.pause, self.stop_reason)
        elif self.stop_reason == "cancelled":
            await asyncio.to_thread(self.ledger.cancel)
        status = await asyncio.to_thread(self.ledger.finish)
        counts = await asyncio.to_thread(self.ledger.counts)
        return Summary(
            self.issue.id,
            self.issue.subject,
            counts,
            self.attempted,
            time.monotonic() - started,
            status,
            self.stop_reason,
        )

    async def _produce(self, queue: asyncio.Queue[Job | None]) -> None:
        window = self.conf.in_flight
        refill_at = max(1, window // 2)
        while not self.stopping:
            room = window - self.in_flight
            if room >= refill_at:
                jobs, skipped = await asyncio.to_thread(self.ledger.claim, room)
                if jobs or skipped:
                    self.in_flight += len(jobs)
                    if self._signing is not None:
                        self._sign_ahead(jobs)
                    for job in jobs:
                        queue.put_nowait(job)
                    continue
                if self.in_flight == 0:
                    if not await self._linger():
                        return
                    continue
            self._recorded.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recorded.wait(), timeout=0.25)

    def _sign_ahead(self, jobs: list[Job]) -> None:
        """Start the claimed messages' DKIM signatures now, so they are ready when sent."""
        assert self._signing is not None
        slots = [self.personalizer.slots(job.recipient) for job in jobs]
        signed = self._signing.sign_all([values for _, values in slots])
        wire_from = self.personalizer.wire_from
        for job, (message_id, values), future in zip(jobs, slots, signed, strict=True):
            self._signed[job.delivery_id] = (message_id, wire_from(values), future)

    async def _close_signing(self) -> None:
        for _, _, future in self._signed.values():  # never sent: their signatures unused
            if not future.cancel() and not future.cancelled():
                future.exception()  # retrieved, so an error here is not reported as lost
        self._signed.clear()
        if self._signing is not None:
            await self._signing.close()
            self._signing = None

    async def _linger(self) -> bool:
        """Nothing to claim now: wait for the next deferred row if it is due soon enough."""
        due = await asyncio.to_thread(self.ledger.next_due)
        if due is None:
            return False
        wait = (due - utcnow()).total_seconds()
        if wait > self.conf.linger_seconds:
            return False
        await asyncio.sleep(max(wait, 0.0) + 0.01)
        return True

    async def _recorder(self) -> None:
        """Commit outcomes every commit_every results or 100 ms; re-read who left meanwhile."""
        since = utcnow()
        last_check = last_renewal = time.monotonic()
        while True:
            if len(self.outcomes) < self.conf.commit_every:
                self._batch_ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._batch_ready.wait(), timeout=0.1)
            if self.outcomes:
                batch, self.outcomes = self.outcomes, []
                await asyncio.to_thread(self.ledger.record, batch)
                self.in_flight -= len(batch)
                self._recorded.set()
            if time.monotonic() - last_renewal >= self.conf.lease_seconds / 3:
                await asyncio.to_thread(self.ledger.renew)
                last_renewal = time.monotonic()
            if time.monotonic() - last_check >= self.conf.recheck_ms / 1000:
                checked = utcnow()
                self.left |= await asyncio.to_thread(self.ledger.left_since, since)
                status, reason = await asyncio.to_thread(self.ledger.issue_status)
                if status == IssueStatus.PAUSED:
                    self.stop(f"paused: {reason or 'by an editor'}")
                elif status == IssueStatus.CANCELLED:
                    self.stop("cancelled")
                since, last_check = checked - dt.timedelta(seconds=1), time.monotonic()

    async def _worker(self, queue: asyncio.Queue[Job | None], unsent: list[int]) -> None:
        conn = Connection(
            self.relays, self.settings.smtp.idle_timeout, self.settings.smtp.messages_per_connection
        )
        try:
            while (job := await queue.get()) is not None:
                if self.stopping:
                    unsent.append(job.delivery_id)
                    self.in_flight -= 1
                    continue
                if job.recipient.member_id in self.left:
                    self._signed.pop(job.delivery_id, None)  # its signature goes unused
                    outcome = Outcome(
                        job.delivery_id,
                        job.recipient.member_id,
                        DeliveryStatus.SKIPPED,
                        None,
                        "member left during the send",
                    )
                else:
                    outcome = await self._attempt(conn, job)
                    self.attempted += 1
                self.outcomes.append(outcome)
                if len(self.outcomes) >= self.conf.commit_every:
                    self._batch_ready.set()
                if self.progress:
                    self.progress(outcome)
        finally:
            await conn.release(polite=True)

    async def _attempt(self, conn: Connection, job: Job) -> Outcome:
        r = job.recipient
        data: bytes
        if job.delivery_id in self._signed:
            message_id, wire, signing = self._signed.pop(job.delivery_id)
            # The header goes in front of the DATA form as it is: it never starts with a dot.
            data = Wire(await signing + wire)
        else:
            message_id, data = self.personalizer.wire(r)
        try:
            client = await conn.get()
            if self.limits.active:
                assert conn.relay is not None
                await self.limits.for_relay(conn.relay.name).acquire()
                client = await conn.get()  # reopened if the wait outlasted the idle timeout
            await transmit(client, self.personalizer.envelope_from(r.member_id), r.email, data)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
            permanent, code, text = classify(exc)
            if code == 421:  # the server is closing the connection (RFC 5321 §3.8)
                await conn.release()
                self._connection_failed(text)
            else:
                conn.mark_used()
            if permanent:
                return Outcome(
                    job.delivery_id, r.member_id, DeliveryStatus.BOUNCED, code, text, message_id
                )
            return self._defer(job, code, text, message_id)
        except CONNECTION_ERRORS as exc:
            await conn.release()
            _, code, text = classify(exc)
            self._connection_failed(text)
            return self._defer(job, code, text, message_id)
        conn.mark_used()
        self.consecutive_failures = 0
        return Outcome(
            job.delivery_id, r.member_id, DeliveryStatus.SENT, 250, "accepted", message_id
        )

    def _defer(self, job: Job, code: int | None, text: str, message_id: str) -> Outcome:
        attempt = job.attempts + 1
        delay = min(self.conf.retry_max_seconds, self.conf.retry_base_seconds * 2 ** (attempt - 1))
        when = utcnow() + dt.timedelta(seconds=delay * random.uniform(0.8, 1.2))
        if when > self.retry_until:
            return Outcome(
                job.delivery_id,
                job.recipient.member_id,
                DeliveryStatus.FAILED,
                code,
                f"gave up at the retry deadline: {text}",
                message_id,
            )
        return Outcome(
            job.delivery_id,
            job.recipient.member_id,
            DeliveryStatus.DEFERRED,
            code,
            text,
            message_id,
            when,
        )

    def _connection_failed(self, text: str) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.conf.pause_after and not self.stopping:
            self.stop(
                f"paused after {self.consecutive_failures} consecutive connection failures; last: {text}"
            )
