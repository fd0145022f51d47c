"""One send run: finish what earlier runs left, then compile, release and deliver the next issue."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import compiler as issues
from newsletter.content.personalize import Personalizer
from newsletter.delivery.engine import Engine, IssuePaused, Summary
from newsletter.delivery.smtp import ClientFactory, aiosmtplib_client
from newsletter.errors import NewsletterError, NothingToSend
from newsletter.site import environment
from newsletter.storage import queries as store
from newsletter.storage.ledger import Ledger, Outcome, new_owner
from newsletter.storage.models import PAUSED, SENDING, Issue, utcnow
from newsletter.tokens import Signer

if TYPE_CHECKING:
    from newsletter.delivery.signing import DkimSigner


@dataclass
class Prepared:
    issue: Issue
    compiled: issues.Compiled
    queued: int


def dkim_signer(settings: Settings) -> DkimSigner | None:
    if settings.dkim is None:
        return None
    from newsletter.delivery.signing import DkimSigner

    key = settings.path(settings.dkim.key_file).read_bytes()
    return DkimSigner(settings.dkim.domain, settings.dkim.selector, key)


def release_next(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    schedule: str | None = None,
    slot_at: dt.datetime | None = None,
    with_survey: bool = True,
) -> Prepared:
    """Compile the next issue from the new items and release it; NothingToSend if there are none.

    A scheduled issue records its schedule and slot; the database keeps that pair unique,
    so a second process releasing the same slot fails (IntegrityError) and stores nothing.
    """
    settings.require_secret()  # fail before anything is stored, not halfway through
    with sessions.begin() as session:
        compiled = issues.compile_next(
            session, settings, environment(settings.site_dir), with_survey=with_survey
        )
        row = issues.release(session, compiled, schedule=schedule, slot_at=slot_at)
        row.retry_until = compiled.created + dt.timedelta(
            hours=settings.delivery.retry_deadline_hours
        )
        session.flush()
        queued = store.delivery_counts(session, row.id).get("queued", 0)
        return Prepared(row, compiled, queued)


def unfinished(sessions: sessionmaker[Session]) -> list[Issue]:
    """Issues whose send is not over (some rows queued, in flight or deferred), oldest first."""
    with sessions() as session:
        return list(
            session.scalars(select(Issue).where(Issue.status == SENDING).order_by(Issue.id))
        )


@dataclass
class Run:
    """What one `send` needs besides settings: the SMTP client, progress and engine hooks."""

    client_factory: ClientFactory = aiosmtplib_client
    progress: Callable[[Outcome], None] | None = None
    on_start: Callable[[Engine, int], None] | None = None
    owner: str = ""


async def deliver(
    settings: Settings, sessions: sessionmaker[Session], issue: Issue, run: Run | None = None
) -> Summary:
    """Run the delivery engine on one issue until nothing is left to try now."""
    run = run or Run()
    compiled = issues.from_row(issue)
    personalizer = Personalizer(compiled, settings, Signer(settings.require_secret()), issue.id)
    engine = Engine(
        settings,
        sessions,
        issue,
        personalizer,
        client_factory=run.client_factory,
        progress=run.progress,
        dkim=dkim_signer(settings),
        owner=run.owner or new_owner(),
    )
    if run.on_start:
        with sessions() as session:
            counts = store.delivery_counts(session, issue.id)
        run.on_start(
            engine, counts.get("queued", 0) + counts.get("sending", 0) + counts.get("deferred", 0)
        )
    return await engine.run()


async def send(
    settings: Settings, sessions: sessionmaker[Session], run: Run | None = None
) -> list[Summary]:
    """Finish unfinished issues, then send the next one. NothingToSend when there was nothing."""
    settings.require_secret()
    summaries: list[Summary] = []
    for issue in unfinished(sessions):
        summaries.append(await deliver(settings, sessions, issue, run))
    try:
        prepared = release_next(settings, sessions)
    except NothingToSend:
        if summaries:
            return summaries
        raise
    summaries.append(await deliver(settings, sessions, prepared.issue, run))
    return summaries


def get_issue(sessions: sessionmaker[Session], issue_id: int) -> Issue:
    with sessions() as session:
        issue = session.get(Issue, issue_id)
    if issue is None:
        raise NewsletterError(f"there is no issue #{issue_id}")
    return issue


async def retry(
    settings: Settings, sessions: sessionmaker[Session], issue_id: int, run: Run | None = None
) -> Summary:
    """Re-queue an issue's failed rows with a fresh retry deadline, and deliver them."""
    issue = get_issue(sessions, issue_id)
    ledger = Ledger(sessions, issue_id, new_owner(), lease_seconds=1, bounce_threshold=1)
    count = ledger.requeue_failed()
    if not count:
        raise NewsletterError(f"issue #{issue_id} has no failed deliveries to retry")
    with sessions.begin() as session:
        row = session.get(Issue, issue_id)
        assert row is not None
        row.retry_until = utcnow() + dt.timedelta(hours=settings.delivery.retry_deadline_hours)
        issue = row
    return await deliver(settings, sessions, issue, run)


def set_paused(
    sessions: sessionmaker[Session], issue_id: int, paused: bool, reason: str = ""
) -> Issue:
    """Pause a sending issue (every worker stops within moments) or resume a paused one."""
    with sessions.begin() as session:
        row = session.get(Issue, issue_id)
        if row is None:
            raise NewsletterError(f"there is no issue #{issue_id}")
        if paused:
            if row.status != SENDING:
                raise NewsletterError(
                    f"issue #{issue_id} is {row.status}, not sending: nothing to pause"
                )
            row.status, row.pause_reason = PAUSED, reason or "paused by an editor"
        else:
            if row.status != PAUSED:
                raise NewsletterError(f"issue #{issue_id} is {row.status}, not paused")
            row.status, row.pause_reason = SENDING, ""
        return row


__all__ = [
    "IssuePaused",
    "NothingToSend",
    "Prepared",
    "Run",
    "deliver",
    "release_next",
    "retry",
    "send",
]
