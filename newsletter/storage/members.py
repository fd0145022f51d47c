"""Queries on members: by address, search, counts, and stopping their rows when they leave."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.storage.models import Delivery, DeliveryStatus, Member, MemberStatus


def get(session: Session, member_id: int) -> Member | None:
    return session.get(Member, member_id)


# Statements of the member pages' hot path, built once: building one costs more than
# running it (SQLAlchemy compiles it once and caches the compiled form by its shape).
_BY_IDS = select(Member).where(Member.id.in_(bindparam("ids", expanding=True)))
_SKIP_UNSENT = (
    update(Delivery)
    .where(
        Delivery.member_id == bindparam("member"),
        Delivery.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED)),
    )
    .values(
        status=DeliveryStatus.SKIPPED, last_message=bindparam("why"), updated_at=bindparam("now")
    )
)


def load(session: Session, member_ids: set[int]) -> None:
    """Bring these members into the session in one query (a batch's), so that each `get`
    after it is answered from the session without a query of its own."""
    if member_ids:
        found = session.scalars(_BY_IDS, {"ids": list(member_ids)}).all()
        # The session's identity map holds its objects weakly: keep them for the batch.
        session.info.setdefault("keep", []).extend(found)


def by_email(session: Session, email: str) -> Member | None:
    return session.scalar(select(Member).where(Member.email == email))


def by_emails(session: Session, emails: Sequence[str]) -> dict[str, Member]:
    return {m.email: m for m in session.scalars(select(Member).where(Member.email.in_(emails)))}


def add(session: Session, member: Member) -> Member:
    session.add(member)
    session.flush()
    return member


def counts(session: Session) -> dict[MemberStatus, int]:
    rows = session.execute(select(Member.status, func.count()).group_by(Member.status)).all()
    return {MemberStatus(status): int(n) for status, n in rows}


def search(session: Session, q: str, limit: int) -> Sequence[Member]:
    """Members whose address or name contains `q` (any case), by address; all when q is empty."""
    query = select(Member).order_by(Member.email).limit(limit)
    if q:
        query = query.where(
            or_(
                Member.email.icontains(q, autoescape=True),
                Member.name.icontains(q, autoescape=True),
            )
        )
    return session.scalars(query).all()


def listing(session: Session, status: MemberStatus | None, limit: int) -> Sequence[Member]:
    query = select(Member).order_by(Member.id).limit(limit)
    if status is not None:
        query = query.where(Member.status == status)
    return session.scalars(query).all()


def skip_unsent(session: Session, member_id: int, now: dt.datetime, why: str) -> int:
    """The member's rows of sends already released that have not gone out: skipped now."""
    result = session.connection().execute(
        _SKIP_UNSENT, {"member": member_id, "why": why, "now": now}
    )
    return int(getattr(result, "rowcount", 0) or 0)
