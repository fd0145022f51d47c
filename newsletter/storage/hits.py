"""Link hits: the raw evidence the vote rule weighs, and its folding into counts once no rule needs it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.storage.models import Delivery, Issue, LinkHit, LinkHitCount

H = cast(Table, LinkHit.__table__)


def add(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert hits in one executemany (the keys are LinkHit's columns)."""
    if rows:
        session.execute(insert(H), list(rows))


def around_many(
    session: Session, member_ids: set[int], start: dt.datetime, end: dt.datetime
) -> dict[int, list[tuple[dt.datetime, str, str, int | None, int | None]]]:
    """Per member: (at, kind, method, survey_id, option) of their hits between start and end."""
    found: dict[int, list[tuple[dt.datetime, str, str, int | None, int | None]]] = {}
    if not member_ids:
        return found
    rows = session.execute(
        select(
            LinkHit.member_id,
            LinkHit.at,
            LinkHit.kind,
            LinkHit.method,
            LinkHit.survey_id,
            LinkHit.option,
        ).where(LinkHit.member_id.in_(member_ids), LinkHit.at >= start, LinkHit.at <= end)
    ).all()
    for member_id, at, kind, method, survey_id, option in rows:
        found.setdefault(int(member_id), []).append((at, str(kind), str(method), survey_id, option))
    return found


def deliveries_for_survey(
    session: Session, member_ids: set[int], survey_id: int
) -> dict[int, list[dt.datetime]]:
    """Per member: when they were sent an issue carrying the survey."""
    found: dict[int, list[dt.datetime]] = {}
    if not member_ids:
        return found
    rows = session.execute(
        select(Delivery.member_id, Delivery.sent_at)
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(
            Delivery.member_id.in_(member_ids),
            Issue.survey_id == survey_id,
            Delivery.sent_at.is_not(None),
        )
    ).all()
    for member_id, sent_at in rows:
        if sent_at is not None:
            found.setdefault(int(member_id), []).append(sent_at)
    return found


def machine_signs_since(session: Session, member_id: int, since: dt.datetime) -> int:
    """HEAD requests or hidden-link fetches for the member's links since `since`."""
    return (
        session.scalar(
            select(func.count())
            .select_from(LinkHit)
            .where(
                LinkHit.member_id == member_id,
                LinkHit.at >= since,
                (LinkHit.method == "HEAD") | (LinkHit.kind == "trap"),
            )
        )
        or 0
    )


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(LinkHit)) or 0


def fold_before(session: Session, cutoff: dt.datetime, limit: int = 10_000) -> int:
    """Fold up to `limit` of the oldest hits before `cutoff` into per-day counts, deleting them.

    The counts keep what an editor may want to know later (how many views or votes an issue
    drew, and how many were HEAD requests or hidden-link fetches), with no member in them.
    """
    rows = session.execute(
        select(LinkHit.id, LinkHit.at, LinkHit.kind, LinkHit.method, LinkHit.issue_id)
        .where(LinkHit.at < cutoff)
        .order_by(LinkHit.at)
        .limit(limit)
    ).all()
    return _fold(session, [tuple(r) for r in rows])


def fold_member(session: Session, member_id: int) -> int:
    """Fold every hit of one member into the counts now, whatever its age (an erasure): the
    counts stay whole, and nothing names the member, their address or their agent."""
    rows = session.execute(
        select(LinkHit.id, LinkHit.at, LinkHit.kind, LinkHit.method, LinkHit.issue_id).where(
            LinkHit.member_id == member_id
        )
    ).all()
    return _fold(session, [tuple(r) for r in rows])


def member_ips(session: Session, member_id: int) -> set[str]:
    """The network addresses the member's links were fetched from."""
    found = session.scalars(
        select(LinkHit.ip).where(LinkHit.member_id == member_id, LinkHit.ip != "").distinct()
    )
    return {str(ip) for ip in found}


def _fold(session: Session, rows: Sequence[tuple[Any, ...]]) -> int:
    """Add these hits (id, at, kind, method, issue_id) to the daily counts and delete them."""
    if not rows:
        return 0
    totals: dict[tuple[dt.date, str, str, int], int] = {}
    for _, at, kind, method, issue_id in rows:
        key = (at.date(), str(kind), str(method), int(issue_id or 0))
        totals[key] = totals.get(key, 0) + 1
    values = [
        {"day": day, "kind": kind, "method": method, "issue_id": issue_id, "hits": n}
        for (day, kind, method, issue_id), n in totals.items()
    ]
    table = cast(Table, LinkHitCount.__table__)
    dialect = session.get_bind().dialect.name
    upsert: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=["day", "kind", "method", "issue_id"],
            set_={"hits": table.c.hits + upsert.excluded.hits},
        ),
        values,
    )
    session.execute(delete(LinkHit).where(LinkHit.id.in_([r[0] for r in rows])))
    return len(rows)


def folded(session: Session) -> dict[tuple[str, str], int]:
    """Folded hits by (kind, method), all days and issues together."""
    rows = session.execute(
        select(LinkHitCount.kind, LinkHitCount.method, func.sum(LinkHitCount.hits)).group_by(
            LinkHitCount.kind, LinkHitCount.method
        )
    ).all()
    return {(str(k), str(m)): int(n) for k, m, n in rows}
