"""Queries on issue variants and on the choices members made: what a release compiles, and for whom."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from newsletter.storage.models import Delivery, IssueVariant, Member, MemberStatus


def add(session: Session, variant: IssueVariant) -> IssueVariant:
    session.add(variant)
    session.flush()
    return variant


def get(session: Session, variant_id: int) -> IssueVariant | None:
    return session.get(IssueVariant, variant_id)


def of_issue(session: Session, issue_id: int) -> Sequence[IssueVariant]:
    return session.scalars(
        select(IssueVariant).where(IssueVariant.issue_id == issue_id).order_by(IssueVariant.id)
    ).all()


def receiving(now: dt.datetime) -> ColumnElement[bool]:
    """The condition on members an issue goes to: active, and not paused at `now`."""
    return and_(
        Member.status == MemberStatus.ACTIVE,
        or_(Member.paused_until.is_(None), Member.paused_until <= now),
    )


def audience_choices(
    session: Session, now: dt.datetime
) -> list[tuple[str, str | None, str | None, bool]]:
    """(variant key, language, sections, survey) of each distinct choice among the members the
    next issue goes to: one row a key (the key is a function of the other three).

    The keys are walked in the (status, variant_key) index, one seek a key (a loose index
    scan), so the cost grows with the number of distinct choices, not with the members; a key
    whose members are all paused is left out."""
    found: list[tuple[str, str | None, str | None, bool]] = []
    last: str | None = None
    active = Member.status == MemberStatus.ACTIVE
    while True:
        after = active if last is None else and_(active, Member.variant_key > last)
        key = session.scalar(select(func.min(Member.variant_key)).where(after))
        if key is None:
            return found
        last = key
        row = session.execute(
            select(Member.language, Member.sections, Member.survey)
            .where(receiving(now), Member.variant_key == key)
            .limit(1)
        ).first()
        if row is not None:
            found.append((key, row.language, row.sections, bool(row.survey)))


def of_delivery(session: Session, issue_id: int, member_id: int) -> int | None:
    """The variant a member was given of an issue (None: the issue's own copy, or no row)."""
    variant: int | None = session.scalar(
        select(Delivery.variant_id).where(
            Delivery.issue_id == issue_id, Delivery.member_id == member_id
        )
    )
    return variant
