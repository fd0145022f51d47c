"""The audit log: one row an action, written in the action's own transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from newsletter.storage.models import AuditEntry

A = cast(Table, AuditEntry.__table__)


def add(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert entries (keys: at, actor, action, issue_id, member_id, detail) in one statement."""
    if rows:
        session.execute(insert(A), list(rows))


def newest(
    session: Session,
    limit: int,
    *,
    member_id: int | None = None,
    issue_id: int | None = None,
    action: str | None = None,
) -> Sequence[AuditEntry]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if member_id is not None:
        query = query.where(AuditEntry.member_id == member_id)
    if issue_id is not None:
        query = query.where(AuditEntry.issue_id == issue_id)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    return session.scalars(query).all()


def since(session: Session, at: dt.datetime) -> Sequence[AuditEntry]:
    return session.scalars(
        select(AuditEntry).where(AuditEntry.at >= at).order_by(AuditEntry.id)
    ).all()


def count(session: Session, *, issue_id: int, action: str) -> int:
    """Entries of `action` about the issue (e.g. the unsubscribes its links brought)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.issue_id == issue_id, AuditEntry.action == action)
        )
        or 0
    )
