"""Clicks on an issue's links: held as evidence until decided, then counted per issue and link."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.storage.models import ClickCount, ClickHit, Delivery, Issue, MemberClick

ClickSign = tuple[dt.datetime, int, int, str]  # at, issue, link, method


def add(session: Session, hit: ClickHit) -> None:
    session.add(hit)


def due(session: Session, before: dt.datetime, limit: int) -> Sequence[ClickHit]:
    """Undecided clicks older than `before`, the oldest first."""
    return session.scalars(
        select(ClickHit)
        .where(ClickHit.decided.is_(False), ClickHit.at < before)
        .order_by(ClickHit.at, ClickHit.id)
        .limit(limit)
    ).all()


def around_many(
    session: Session, member_ids: set[int], start: dt.datetime, end: dt.datetime
) -> dict[int, list[ClickSign]]:
    """Per member: every fetch of an issue's link between start and end."""
    found: dict[int, list[ClickSign]] = {}
    if not member_ids:
        return found
    rows = session.execute(
        select(
            ClickHit.member_id, ClickHit.at, ClickHit.issue_id, ClickHit.link, ClickHit.method
        ).where(ClickHit.member_id.in_(member_ids), ClickHit.at >= start, ClickHit.at <= end)
    ).all()
    for member_id, at, issue_id, link, method in rows:
        found.setdefault(int(member_id), []).append((at, int(issue_id), int(link), str(method)))
    return found


def sent_at(session: Session, pairs: set[tuple[int, int]]) -> dict[tuple[int, int], dt.datetime]:
    """When each (issue, member)'s message was delivered."""
    if not pairs:
        return {}
    issues = {i for i, _ in pairs}
    members = {m for _, m in pairs}
    rows = session.execute(
        select(Delivery.issue_id, Delivery.member_id, Delivery.sent_at).where(
            Delivery.issue_id.in_(issues),
            Delivery.member_id.in_(members),
            Delivery.sent_at.is_not(None),
        )
    ).all()
    return {
        (int(i), int(m)): at for i, m, at in rows if at is not None and (int(i), int(m)) in pairs
    }


def add_counts(session: Session, counts: Mapping[tuple[int, int], tuple[int, int]]) -> None:
    """Add (people, scanners) to each (issue, link)'s counts."""
    if not counts:
        return
    table = cast(Table, ClickCount.__table__)
    dialect = session.get_bind().dialect.name
    upsert: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=["issue_id", "link"],
            set_={
                "people": table.c.people + upsert.excluded.people,
                "scanners": table.c.scanners + upsert.excluded.scanners,
            },
        ),
        [
            {"issue_id": issue, "link": link, "people": people, "scanners": scanners}
            for (issue, link), (people, scanners) in counts.items()
        ],
    )


def add_member_clicks(session: Session, rows: Sequence[MemberClick]) -> None:
    session.add_all(rows)


def purge_decided(session: Session, before: dt.datetime) -> int:
    """Delete decided clicks older than `before`: no rule needs them any more."""
    result = session.execute(
        delete(ClickHit).where(ClickHit.decided.is_(True), ClickHit.at < before)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def counts(session: Session, issue_id: int) -> dict[int, tuple[int, int]]:
    """Per link of the issue: (people, scanners)."""
    rows = session.execute(
        select(ClickCount.link, ClickCount.people, ClickCount.scanners).where(
            ClickCount.issue_id == issue_id
        )
    ).all()
    return {int(link): (int(p), int(s)) for link, p, s in rows}


def pending(session: Session, issue_id: int) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(ClickHit)
            .where(ClickHit.issue_id == issue_id, ClickHit.decided.is_(False))
        )
        or 0
    )


def links(session: Session, issue_id: int) -> list[str] | None:
    """The issue's link list (None: no such issue, or one made before links were kept)."""
    found = session.scalar(select(Issue.links).where(Issue.id == issue_id))
    return None if found is None else [str(u) for u in found]


def hit_rows(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ClickHit)) or 0
