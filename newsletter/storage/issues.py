"""Queries on issues: the unfinished ones, one slot's issue, the archive, delivery counts, the audience."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import Integer, and_, case, exists, func, insert, literal, or_, select
from sqlalchemy.orm import Session

from newsletter.storage.models import (
    UNFINISHED,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Member,
    MemberStatus,
)

# Why a member's row of an issue was skipped at release.
PAUSED = "paused by the member"
NOTHING_NEW = "nothing new in the member's sections"


def get(session: Session, issue_id: int) -> Issue | None:
    return session.get(Issue, issue_id)


def newest(session: Session, limit: int) -> Sequence[Issue]:
    return session.scalars(select(Issue).order_by(Issue.id.desc()).limit(limit)).all()


def sending(session: Session) -> Sequence[Issue]:
    """Issues whose send is not over (rows queued, in flight or deferred), oldest first."""
    return session.scalars(
        select(Issue).where(Issue.status == IssueStatus.SENDING).order_by(Issue.id)
    ).all()


def slot_issue(session: Session, schedule: str, slot_at: dt.datetime) -> Issue | None:
    return session.scalar(select(Issue).where(Issue.schedule == schedule, Issue.slot_at == slot_at))


def last_survey_id(session: Session) -> int | None:
    """The survey the newest issue with a survey carried."""
    return session.scalar(
        select(Issue.survey_id)
        .where(Issue.survey_id.is_not(None))
        .order_by(Issue.id.desc())
        .limit(1)
    )


def _delivered(issue_id: Any) -> Any:
    return exists().where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENT)


def archived(session: Session, limit: int = 500) -> Sequence[Issue]:
    """Issues that have gone out (a message delivered), newest first: the public archive."""
    return session.scalars(
        select(Issue).where(_delivered(Issue.id)).order_by(Issue.id.desc()).limit(limit)
    ).all()


def is_archived(session: Session, issue_id: int) -> bool:
    return bool(session.scalar(select(_delivered(issue_id))))


def delivery_counts(session: Session, issue_id: int) -> dict[DeliveryStatus, int]:
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.issue_id == issue_id)
        .group_by(Delivery.status)
    ).all()
    return {DeliveryStatus(status): int(n) for status, n in rows}


def failures(session: Session, issue_id: int) -> list[tuple[str, int | None, str, int]]:
    """(status, SMTP code, reply text, how many) of the issue's rows that did not go out as
    they should (failed, bounced, deferred), the most common first."""
    rows = session.execute(
        select(Delivery.status, Delivery.last_code, Delivery.last_message, func.count())
        .where(
            Delivery.issue_id == issue_id,
            Delivery.status.in_(
                (DeliveryStatus.FAILED, DeliveryStatus.BOUNCED, DeliveryStatus.DEFERRED)
            ),
        )
        .group_by(Delivery.status, Delivery.last_code, Delivery.last_message)
        .order_by(func.count().desc())
    ).all()
    return [(str(st), code, str(text), int(n)) for st, code, text, n in rows]


def waiting(
    session: Session, issue_id: int
) -> list[tuple[str, int | None, str, int, dt.datetime | None, dt.datetime | None]]:
    """(status, SMTP code, reply text, how many, earliest and latest next attempt) of the
    issue's rows still to go out (queued, sending, deferred), the most common first."""
    rows = session.execute(
        select(
            Delivery.status,
            Delivery.last_code,
            Delivery.last_message,
            func.count(),
            func.min(Delivery.next_attempt_at),
            func.max(Delivery.next_attempt_at),
        )
        .where(Delivery.issue_id == issue_id, Delivery.status.in_(UNFINISHED))
        .group_by(Delivery.status, Delivery.last_code, Delivery.last_message)
        .order_by(func.count().desc())
    ).all()
    return [(str(st), code, str(text), int(n), lo, hi) for st, code, text, n, lo, hi in rows]


def snapshot_audience(
    session: Session,
    issue_id: int,
    now: dt.datetime,
    variants: Mapping[str, int] | None = None,
    nothing_new: Collection[str] = (),
) -> int:
    """One delivery row per active member, in one INSERT … SELECT: queued, with the variant
    its member's key maps to in `variants` (no entry: the issue's own copy); skipped for a
    member paused at `now`, or whose key is in `nothing_new` (their sections have nothing
    new). Returns how many rows were queued."""
    paused = and_(Member.paused_until.is_not(None), Member.paused_until > now)
    status: Any = literal(DeliveryStatus.QUEUED.value)
    reason: Any = literal("")
    if nothing_new:
        idle = Member.variant_key.in_(list(nothing_new))
        status = case((or_(paused, idle), DeliveryStatus.SKIPPED.value), else_=status)
        reason = case((paused, PAUSED), (idle, NOTHING_NEW), else_="")
    else:
        status = case((paused, DeliveryStatus.SKIPPED.value), else_=status)
        reason = case((paused, PAUSED), else_="")
    variant: Any = literal(None, type_=Integer)
    if variants:
        variant = case(
            (paused, None), else_=case(dict(variants), value=Member.variant_key, else_=None)
        )
    columns = [
        "issue_id",
        "member_id",
        "status",
        "attempts",
        "last_message",
        "message_id",
        "created_at",
        "variant_id",
    ]
    query = select(
        literal(issue_id),
        Member.id,
        status,
        literal(0),
        reason,
        literal(""),
        literal(now, type_=Delivery.created_at.type),
        variant,
    ).where(Member.status == MemberStatus.ACTIVE)
    session.execute(insert(Delivery).from_select(columns, query))
    # Counted, not the rowcount: that includes the skipped rows (and some drivers say -1).
    return delivery_counts(session, issue_id).get(DeliveryStatus.QUEUED, 0)


def add(session: Session, issue: Issue) -> Issue:
    """Store a new issue; a second one for the same (schedule, slot) fails here."""
    session.add(issue)
    session.flush()
    return issue
