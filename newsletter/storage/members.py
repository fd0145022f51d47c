"""Queries on members: by address, search and pages, counts, and stopping their rows when they leave."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

from sqlalchemy import Select, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.storage.models import Delivery, DeliveryStatus, Member, MemberStatus


def get(session: Session, member_id: int) -> Member | None:
    """The member, or None: an erased member is no member to the pages, votes and links."""
    member = session.get(Member, member_id)
    return None if member is None or member.status == MemberStatus.ERASED else member


def get_any(session: Session, member_id: int) -> Member | None:
    """The row, erased or not (the desk says "already erased" rather than "no such member")."""
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


def _matching(q: str, status: MemberStatus | None) -> Select[Member]:
    query = select(Member)
    if status is not None:
        query = query.where(Member.status == status)
    else:  # an erased row has no address or name to show: listed only when asked for
        query = query.where(Member.status != MemberStatus.ERASED)
    if q:
        query = query.where(
            or_(
                Member.email.icontains(q, autoescape=True),
                Member.name.icontains(q, autoescape=True),
            )
        )
    return query


def page(
    session: Session, q: str, status: MemberStatus | None, limit: int, offset: int
) -> tuple[Sequence[Member], int]:
    """One page of the members matching `q` (address or name, any case) and `status`, by
    address, and how many match in all."""
    query = _matching(q, status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    found = session.scalars(query.order_by(Member.email).limit(limit).offset(offset)).all()
    return found, int(total)


def every(session: Session, status: MemberStatus | None) -> Iterator[Member]:
    """Every member (of one status), by id, read in chunks (the CSV export): erased rows never."""
    query = _matching("", status).where(Member.status != MemberStatus.ERASED)
    yield from session.scalars(query.order_by(Member.id).execution_options(yield_per=1000))


def listing(session: Session, status: MemberStatus | None, limit: int) -> Sequence[Member]:
    return session.scalars(_matching("", status).order_by(Member.id).limit(limit)).all()


def skip_unsent(session: Session, member_id: int, now: dt.datetime, why: str) -> int:
    """The member's rows of sends already released that have not gone out: skipped now."""
    result = session.connection().execute(
        _SKIP_UNSENT, {"member": member_id, "why": why, "now": now}
    )
    return int(getattr(result, "rowcount", 0) or 0)
