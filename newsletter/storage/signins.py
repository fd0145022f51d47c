"""Sign-in links sent by email: their rows (single use, short-lived) and what the limits count."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.storage.models import BoardSignin


def add(session: Session, member_id: int, ip: str, at: dt.datetime) -> BoardSignin:
    row = BoardSignin(member_id=member_id, ip=ip[:64], created_at=at)
    session.add(row)
    session.flush()  # its id goes into the link
    return row


def get(session: Session, signin_id: int) -> BoardSignin | None:
    return session.get(BoardSignin, signin_id)


def for_member_since(session: Session, member_id: int, since: dt.datetime) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(BoardSignin)
            .where(BoardSignin.member_id == member_id, BoardSignin.created_at >= since)
        )
        or 0
    )


def from_ip_since(session: Session, ip: str, since: dt.datetime) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(BoardSignin)
            .where(BoardSignin.ip == ip[:64], BoardSignin.created_at >= since)
        )
        or 0
    )
