"""Sign-up requests from the subscribe form: what the per-network and per-address limits count."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from newsletter.storage.models import SignupRequest, SystemMail

CONFIRM = "confirm"


def from_ip_since(session: Session, ip: str, since: dt.datetime) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(SignupRequest)
            .where(SignupRequest.ip == ip, SignupRequest.at >= since)
        )
        or 0
    )


def confirmations_since(
    session: Session, email: str, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """How many confirmations were queued for the address since `since`, and the newest's time
    (queued ones count: a relay outage must not let a form fill someone's inbox later)."""
    n, newest = session.execute(
        select(func.count(), func.max(SystemMail.created_at)).where(
            SystemMail.to_address == email,
            SystemMail.kind == CONFIRM,
            SystemMail.created_at >= since,
        )
    ).one()
    return int(n), newest


def add(session: Session, email: str, ip: str, at: dt.datetime) -> SignupRequest:
    request = SignupRequest(email=email, ip=ip, at=at, mailed=0)
    session.add(request)
    session.flush()
    return request


def mark_mailed(session: Session, signup_ids: list[int]) -> None:
    if signup_ids:
        session.execute(
            update(SignupRequest).where(SignupRequest.id.in_(signup_ids)).values(mailed=1)
        )
