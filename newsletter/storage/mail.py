"""The system mail queue: confirmations and test copies, claimed under a lease and retried until sent."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, and_, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.storage.models import MailStatus, SystemMail

S = cast(Table, SystemMail.__table__)
WAITING = (MailStatus.QUEUED, MailStatus.DEFERRED, MailStatus.SENDING)


def add(session: Session, mail: SystemMail) -> SystemMail:
    session.add(mail)
    session.flush()
    return mail


def get(session: Session, mail_id: int) -> SystemMail | None:
    return session.get(SystemMail, mail_id)


def claim(
    session: Session, owner: str, now: dt.datetime, lease: dt.timedelta, limit: int
) -> Sequence[SystemMail]:
    """Take up to `limit` messages due now (queued, deferred and due, or a lapsed lease)."""
    due = or_(
        S.c.status == MailStatus.QUEUED,
        and_(S.c.status == MailStatus.DEFERRED, S.c.next_attempt_at <= now),
        and_(S.c.status == MailStatus.SENDING, S.c.lease_until < now),
    )
    ids = select(S.c.id).where(due).order_by(S.c.id).limit(limit).with_for_update(skip_locked=True)
    claimed = session.scalars(
        update(S)
        .where(S.c.id.in_(ids.scalar_subquery()))
        .values(status=MailStatus.SENDING, lease_owner=owner, lease_until=now + lease)
        .returning(S.c.id)
    ).all()
    if not claimed:
        return []
    return session.scalars(
        select(SystemMail).where(SystemMail.id.in_(claimed)).order_by(SystemMail.id)
    ).all()


def record(
    session: Session,
    mail_id: int,
    owner: str,
    status: MailStatus,
    code: int | None,
    message: str,
    now: dt.datetime,
    next_attempt_at: dt.datetime | None = None,
) -> bool:
    """Write one attempt's outcome, if the lease is still this owner's."""
    result = session.execute(
        update(S)
        .where(S.c.id == mail_id, S.c.lease_owner == owner)
        .values(
            status=status,
            attempts=S.c.attempts + 1,
            last_code=code,
            last_message=message[:1000],
            next_attempt_at=next_attempt_at,
            sent_at=now if status == MailStatus.SENT else None,
            lease_owner=None,
            lease_until=None,
        )
    )
    return bool(cast(Any, result).rowcount)


def release(session: Session, mail_ids: Sequence[int], owner: str) -> None:
    """Hand claimed messages back untried (the mailer is stopping)."""
    if mail_ids:
        session.execute(
            update(S)
            .where(S.c.id.in_(list(mail_ids)), S.c.lease_owner == owner)
            .values(status=MailStatus.QUEUED, lease_owner=None, lease_until=None)
        )


def next_due(session: Session) -> dt.datetime | None:
    """When the next deferred message is due (None when nothing waits on a retry)."""
    due: dt.datetime | None = session.scalar(
        select(func.min(S.c.next_attempt_at)).where(S.c.status == MailStatus.DEFERRED)
    )
    return due


def waiting(session: Session) -> int:
    """Messages not yet sent or failed."""
    return session.scalar(select(func.count()).where(S.c.status.in_(WAITING))) or 0


def newest(session: Session, limit: int, kind: str | None = None) -> Sequence[SystemMail]:
    query = select(SystemMail).order_by(SystemMail.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(SystemMail.kind == kind)
    return session.scalars(query).all()


def count_for_member(session: Session, member_id: int, kind: str, since: dt.datetime) -> int:
    """System messages of one kind queued for a member since a moment (a rate limit's count)."""
    return (
        session.scalar(
            select(func.count()).where(
                S.c.member_id == member_id, S.c.kind == kind, S.c.created_at >= since
            )
        )
        or 0
    )
