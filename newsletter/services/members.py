"""Member lists: address normalisation and CSV import that never re-subscribes anyone."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.content.addresses import clean_name, normalize_address
from newsletter.content.roster import ImportReport, Row, merge_duplicates, read_rows
from newsletter.errors import NewsletterError
from newsletter.storage.models import ACTIVE, BOUNCED, PENDING, UNSUBSCRIBED, Member, utcnow

__all__ = ["ImportReport", "clean_name", "import_csv", "normalize_address"]


def import_csv(
    sessions: sessionmaker[Session],
    path: Path,
    *,
    progress: Callable[[int], None] | None = None,
    chunk: int = 500,
) -> ImportReport:
    """Import a member list. Good rows are stored even when others are bad."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise NewsletterError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise NewsletterError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        ) from None
    report = ImportReport()
    rows = list(merge_duplicates(read_rows(text, report), report).values())
    now = utcnow()
    with sessions.begin() as session:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            existing = {
                m.email: m
                for m in session.scalars(
                    select(Member).where(Member.email.in_([r.email for r in part]))
                )
            }
            for row in part:
                _apply(session, existing.get(row.email), row, report, now)
            session.flush()
            if progress:
                progress(len(part))
    return report


def _apply(
    session: Session, member: Member | None, row: Row, report: ImportReport, now: dt.datetime
) -> None:
    if member is None:
        session.add(
            Member(
                email=row.email,
                name=row.name,
                status=row.status,
                attributes=row.attributes,
                unsubscribed_at=now if row.status == UNSUBSCRIBED else None,
            )
        )
        report.added += 1
        if row.status == UNSUBSCRIBED:
            report.unsubscribed += 1
        return
    changed = False
    if row.name and row.name != member.name:
        member.name = row.name
        changed = True
    if row.attributes and {**member.attributes, **row.attributes} != member.attributes:
        member.attributes = {**member.attributes, **row.attributes}
        changed = True
    if member.status in (UNSUBSCRIBED, BOUNCED):
        # An import never re-subscribes: only the member can undo an opt-out.
        if row.status == ACTIVE:
            report.kept_unsubscribed += 1
    elif row.status == UNSUBSCRIBED:
        member.status = UNSUBSCRIBED
        member.unsubscribed_at = now
        report.unsubscribed += 1
        changed = True
    if changed:
        report.updated += 1
    else:
        report.unchanged += 1


def unsubscribe(session: Session, member: Member, now: dt.datetime) -> bool:
    """Stop all mail to the member at once, including rows of sends already released."""
    from newsletter.storage.models import DEFERRED, QUEUED, SKIPPED, Delivery

    if member.status == UNSUBSCRIBED:
        return False
    member.status, member.unsubscribed_at, member.updated_at = UNSUBSCRIBED, now, now
    session.execute(
        update(Delivery)
        .where(Delivery.member_id == member.id, Delivery.status.in_((QUEUED, DEFERRED)))
        .values(status=SKIPPED, last_message="member unsubscribed", updated_at=now)
    )
    return True


def resubscribe(session: Session, member: Member, now: dt.datetime) -> bool:
    """Undo the member's own unsubscribe (a bounced address stays bounced)."""
    if member.status != UNSUBSCRIBED:
        return False
    member.status, member.unsubscribed_at, member.updated_at = ACTIVE, None, now
    return True


def confirm(session: Session, member: Member, now: dt.datetime) -> bool:
    """Double opt-in: the person confirmed the address, so it may be mailed."""
    if member.status not in (PENDING, UNSUBSCRIBED):
        return False
    member.status, member.unsubscribed_at, member.updated_at = ACTIVE, None, now
    return True
