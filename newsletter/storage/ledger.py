"""The delivery ledger: claim rows under a lease, record outcomes in batches, recover dead claims.

Every call here is synchronous and short; the engine runs them in a thread so the event
loop keeps sending meanwhile. A row is in one of: queued, sending (claimed by lease_owner
until lease_until), sent, bounced, deferred (retry at next_attempt_at), failed, skipped.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, case, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.storage.models import (
    UNFINISHED,
    UNFINISHED_SQL,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Member,
    MemberStatus,
    utcnow,
)

D = cast(Table, Delivery.__table__)
M = cast(Table, Member.__table__)
I = cast(Table, Issue.__table__)  # noqa: E741


def new_owner() -> str:
    """This process's name on its leases: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_dead(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's claim waits for its lease to expire
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True, slots=True)
class Recipient:
    """Whom one message goes to: what the personaliser needs of a member, and no more."""

    member_id: int
    email: str
    name: str
    # The issue variant whose copy the member gets (0: the issue's own copy).
    variant: int = 0


@dataclass(slots=True)
class Job:
    delivery_id: int
    recipient: Recipient
    attempts: int


@dataclass(slots=True)
class Outcome:
    delivery_id: int
    member_id: int
    status: str
    code: int | None
    message: str
    message_id: str = ""
    next_attempt_at: dt.datetime | None = None


class Ledger:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        issue_id: int,
        owner: str,
        *,
        lease_seconds: float,
        bounce_threshold: int,
    ) -> None:
        self.sessions = sessions
        self.issue_id = issue_id
        self.owner = owner
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.bounce_threshold = bounce_threshold
        self._record = (
            update(D)
            .where(D.c.id == bindparam("b_id"), D.c.lease_owner == bindparam("b_owner"))
            .values(
                status=bindparam("b_status"),
                attempts=D.c.attempts + bindparam("b_inc"),
                last_code=bindparam("b_code"),
                last_message=bindparam("b_message"),
                message_id=bindparam("b_message_id"),
                next_attempt_at=bindparam("b_next", type_=D.c.next_attempt_at.type),
                sent_at=bindparam("b_sent", type_=D.c.sent_at.type),
                updated_at=bindparam("b_now", type_=D.c.updated_at.type),
                lease_owner=None,
                lease_until=None,
            )
        )
        self._bounce = (
            update(M)
            .where(M.c.id == bindparam("b_member"))
            .values(
                bounce_count=M.c.bounce_count + 1,
                updated_at=bindparam("b_now", type_=M.c.updated_at.type),
                status=case(
                    (
                        and_(
                            M.c.status == MemberStatus.ACTIVE,
                            M.c.bounce_count + 1 >= bounce_threshold,
                        ),
                        MemberStatus.BOUNCED,
                    ),
                    else_=M.c.status,
                ),
            )
        )

    def recover(self) -> int:
        """Put rows claimed by processes of this host that have died back in the queue."""
        with self.sessions.begin() as session:
            owners = session.scalars(
                select(D.c.lease_owner)
                .where(D.c.issue_id == self.issue_id, D.c.status == DeliveryStatus.SENDING)
                .distinct()
            ).all()
            dead = [o for o in owners if o and o != self.owner and _owner_is_dead(o)]
            if not dead:
                return 0
            result = session.execute(
                update(D)
                .where(
                    D.c.issue_id == self.issue_id,
                    D.c.status == DeliveryStatus.SENDING,
                    D.c.lease_owner.in_(dead),
                )
                .values(status=DeliveryStatus.QUEUED, lease_owner=None, lease_until=None)
            )
            return int(cast(Any, result).rowcount or 0)

    def claim(self, limit: int) -> tuple[list[Job], int]:
        """Claim up to `limit` rows that may be tried now; rows of members who left are skipped."""
        now = utcnow()
        claimable = and_(
            D.c.issue_id == self.issue_id,
            text(UNFINISHED_SQL),  # what lets the partial index ix_deliveries_unfinished serve
            or_(
                D.c.status == DeliveryStatus.QUEUED,
                and_(D.c.status == DeliveryStatus.DEFERRED, D.c.next_attempt_at <= now),
                and_(D.c.status == DeliveryStatus.SENDING, D.c.lease_until < now),
            ),
        )
        ids = (
            select(D.c.id)
            .where(claimable)
            .order_by(D.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.sessions.begin() as session:
            claimed = session.execute(
                update(D)
                .where(D.c.id.in_(ids.scalar_subquery()))
                .values(
                    status=DeliveryStatus.SENDING,
                    lease_owner=self.owner,
                    lease_until=now + self.lease,
                )
                .returning(D.c.id, D.c.member_id, D.c.attempts, D.c.variant_id)
            ).all()
            if not claimed:
                return [], 0
            members = {
                row.id: row
                for row in session.execute(
                    select(M.c.id, M.c.email, M.c.name, M.c.status).where(
                        M.c.id.in_([c.member_id for c in claimed])
                    )
                )
            }
            jobs: list[Job] = []
            gone: list[int] = []
            for delivery_id, member_id, attempts, variant in sorted(claimed):
                m = members[member_id]
                if m.status == MemberStatus.ACTIVE:
                    who = Recipient(member_id, m.email, m.name, variant or 0)
                    jobs.append(Job(delivery_id, who, attempts))
                else:
                    gone.append(delivery_id)
            if gone:
                session.execute(
                    update(D)
                    .where(D.c.id.in_(gone))
                    .values(
                        status=DeliveryStatus.SKIPPED,
                        last_message="member no longer active",
                        lease_owner=None,
                        lease_until=None,
                        updated_at=now,
                    )
                )
            return jobs, len(gone)

    def record(self, outcomes: Sequence[Outcome]) -> None:
        """Write a batch of outcomes in one transaction; bounces also count against the member."""
        if not outcomes:
            return
        now = utcnow()
        params = [
            {
                "b_id": o.delivery_id,
                "b_owner": self.owner,
                "b_status": o.status,
                "b_inc": 0 if o.status == DeliveryStatus.SKIPPED else 1,
                "b_code": o.code,
                "b_message": o.message[:1000],
                "b_message_id": o.message_id,
                "b_next": o.next_attempt_at,
                "b_sent": now if o.status == DeliveryStatus.SENT else None,
                "b_now": now,
            }
            for o in outcomes
        ]
        bounces = [
            {"b_member": o.member_id, "b_now": now}
            for o in outcomes
            if o.status == DeliveryStatus.BOUNCED
        ]
        with self.sessions.begin() as session:
            conn = session.connection()
            conn.execute(self._record, params)
            if bounces:
                conn.execute(self._bounce, bounces)

    def release(self, delivery_ids: Sequence[int]) -> None:
        """Return claimed rows that were never tried to the queue (a pause or a stop)."""
        if not delivery_ids:
            return
        with self.sessions.begin() as session:
            session.execute(
                update(D)
                .where(D.c.id.in_(list(delivery_ids)), D.c.lease_owner == self.owner)
                .values(status=DeliveryStatus.QUEUED, lease_owner=None, lease_until=None)
            )

    def renew(self) -> int:
        """Extend the lease on every row this sender holds; the number of rows still held.

        A sender held up (a slow relay, a low rate limit) keeps its rows for as long as it
        lives, so no other sender takes them over and mails them a second time. The rows
        are this issue's, claimed by this owner and not yet recorded.
        """
        with self.sessions.begin() as session:
            result = session.execute(
                update(D)
                .where(
                    D.c.issue_id == self.issue_id,
                    D.c.lease_owner == self.owner,
                    D.c.status == DeliveryStatus.SENDING,
                )
                .values(lease_until=utcnow() + self.lease)
            )
            return int(cast(Any, result).rowcount or 0)

    def left_since(self, since: dt.datetime) -> set[int]:
        """Members of this issue who stopped being active since `since` (for the mid-send re-check)."""
        with self.sessions() as session:
            return set(
                session.scalars(
                    select(M.c.id).where(M.c.updated_at >= since, M.c.status != MemberStatus.ACTIVE)
                )
            )

    def next_due(self) -> dt.datetime | None:
        with self.sessions() as session:
            due: dt.datetime | None = session.scalar(
                select(func.min(D.c.next_attempt_at)).where(
                    D.c.issue_id == self.issue_id, D.c.status == DeliveryStatus.DEFERRED
                )
            )
            return due

    def counts(self) -> dict[str, int]:
        """The issue's rows by status."""
        with self.sessions() as session:
            rows = session.execute(
                select(D.c.status, func.count())
                .where(D.c.issue_id == self.issue_id)
                .group_by(D.c.status)
            ).all()
            return {str(status): int(n) for status, n in rows}

    def issue_status(self) -> tuple[str, str]:
        with self.sessions() as session:
            row = session.execute(
                select(I.c.status, I.c.pause_reason).where(I.c.id == self.issue_id)
            ).one()
            return str(row.status), str(row.pause_reason)

    def pause(self, reason: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(I)
                .where(I.c.id == self.issue_id)
                .values(status=IssueStatus.PAUSED, pause_reason=reason[:1000])
            )

    def cancel(self) -> int:
        """Stop the issue for good (see `cancel`), in a transaction of its own."""
        with self.sessions.begin() as session:
            return cancel(session, self.issue_id, self.owner, utcnow())

    def finish(self) -> str:
        """Mark the issue sent once every row has a final outcome; return its status."""
        with self.sessions.begin() as session:
            left = session.scalar(
                select(func.count()).where(
                    D.c.issue_id == self.issue_id, D.c.status.in_(UNFINISHED)
                )
            )
            status = session.scalar(select(I.c.status).where(I.c.id == self.issue_id))
            if not left and status == IssueStatus.SENDING:
                session.execute(
                    update(I)
                    .where(I.c.id == self.issue_id)
                    .values(status=IssueStatus.SENT, sent_at=utcnow())
                )
                return IssueStatus.SENT
            return str(status)


def cancel(session: Session, issue_id: int, owner: str, now: dt.datetime) -> int:
    """Stop the issue for good: every row not sent yet becomes "cancelled".

    Rows in flight with another sender stay theirs; it sees the cancellation within moments
    and hands them back, and cancels them then (the engine runs this with its own owner).
    """
    session.execute(update(I).where(I.c.id == issue_id).values(status=IssueStatus.CANCELLED))
    result = session.execute(
        update(D)
        .where(
            D.c.issue_id == issue_id,
            or_(
                D.c.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED)),
                and_(D.c.status == DeliveryStatus.SENDING, D.c.lease_owner == owner),
                # A claim whose lease lapsed belongs to a sender that is gone: no one else
                # will ever finish it, since no sender works on a cancelled issue.
                and_(D.c.status == DeliveryStatus.SENDING, D.c.lease_until < now),
            ),
        )
        .values(status=DeliveryStatus.CANCELLED, lease_owner=None, lease_until=None, updated_at=now)
    )
    return int(cast(Any, result).rowcount or 0)


def requeue_failed(session: Session, issue_id: int) -> int:
    """Queue an issue's failed rows again and mark it sending; how many were queued."""
    result = session.execute(
        update(D)
        .where(D.c.issue_id == issue_id, D.c.status == DeliveryStatus.FAILED)
        .values(status=DeliveryStatus.QUEUED, next_attempt_at=None)
    )
    count = int(cast(Any, result).rowcount or 0)
    if count:
        session.execute(
            update(I).where(I.c.id == issue_id).values(status=IssueStatus.SENDING, sent_at=None)
        )
    return count
