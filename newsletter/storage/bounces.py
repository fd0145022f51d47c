"""Bounce events: what came back for each member (the history), reports already applied, counts."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.storage.models import BounceEvent, BounceKind, Member


def seen(session: Session, digests: Sequence[str]) -> set[str]:
    """Which of these digests were applied already (the same report delivered twice)."""
    if not digests:
        return set()
    found = session.scalars(select(BounceEvent.digest).where(BounceEvent.digest.in_(digests)))
    return set(found)


def add(session: Session, event: BounceEvent) -> BounceEvent:
    session.add(event)
    session.flush()
    return event


def history(session: Session, member_id: int, limit: int = 100) -> Sequence[BounceEvent]:
    """The member's events, newest first."""
    return session.scalars(
        select(BounceEvent)
        .where(BounceEvent.member_id == member_id)
        .order_by(BounceEvent.at.desc(), BounceEvent.id.desc())
        .limit(limit)
    ).all()


def by_issue(session: Session, issue_id: int) -> dict[BounceKind, int]:
    """Members with each kind of event for the issue (a member counted once a kind)."""
    rows = session.execute(
        select(BounceEvent.kind, func.count(func.distinct(BounceEvent.member_id)))
        .where(BounceEvent.issue_id == issue_id)
        .group_by(BounceEvent.kind)
    ).all()
    return {BounceKind(kind): int(n) for kind, n in rows}


def recent(session: Session, limit: int = 50) -> Sequence[tuple[BounceEvent, str]]:
    """The newest events with their member's address."""
    rows = session.execute(
        select(BounceEvent, Member.email)
        .join(Member, Member.id == BounceEvent.member_id)
        .order_by(BounceEvent.at.desc(), BounceEvent.id.desc())
        .limit(limit)
    ).all()
    return [(event, str(address)) for event, address in rows]
