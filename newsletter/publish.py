"""One send: resume the interrupted issue, or compile and release the next one, then deliver it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from newsletter import issue as issues
from newsletter import store
from newsletter.config import Settings
from newsletter.deliver import Outcome, Sender, SmtpConnection, Summary
from newsletter.errors import NothingToSend
from newsletter.models import Issue
from newsletter.personalize import Personalizer
from newsletter.site import environment
from newsletter.tokens import Signer


@dataclass
class Prepared:
    issue: Issue
    compiled: issues.Compiled
    resumed: bool
    queued: int


def prepare(settings: Settings, sessions: sessionmaker[Session]) -> Prepared:
    """The issue to send now: an interrupted one first, else a newly compiled one."""
    settings.require_secret()  # fail before anything is stored, not halfway through
    with sessions.begin() as session:
        row = store.unfinished_issue(session)
        if row is not None:
            queued = store.delivery_counts(session, row.id).get("queued", 0)
            return Prepared(row, issues.from_row(row), True, queued)
        compiled = issues.compile_next(session, settings, environment(settings.site_dir))
        row = issues.release(session, compiled)
        queued = store.delivery_counts(session, row.id).get("queued", 0)
        return Prepared(row, compiled, False, queued)


async def deliver(
    settings: Settings,
    sessions: sessionmaker[Session],
    prepared: Prepared,
    *,
    connect: Callable[[], SmtpConnection] | None = None,
    progress: Callable[[Outcome], None] | None = None,
) -> Summary:
    signer = Signer(settings.require_secret())
    personalizer = Personalizer(prepared.compiled, settings, signer, prepared.issue.id)
    sender = Sender(
        settings, sessions, prepared.issue, personalizer, connect=connect, progress=progress
    )
    return await sender.run()


async def send(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    connect: Callable[[], SmtpConnection] | None = None,
    progress: Callable[[Outcome], None] | None = None,
) -> Summary:
    """prepare() then deliver(); NothingToSend when there is neither an interrupted issue nor new items."""
    prepared = prepare(settings, sessions)
    return await deliver(settings, sessions, prepared, connect=connect, progress=progress)


__all__ = ["NothingToSend", "Prepared", "deliver", "prepare", "send"]
