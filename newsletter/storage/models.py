"""SQLAlchemy tables: members, items, issues and their items, surveys and options, deliveries."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Store naive UTC, hand back aware UTC; SQLite keeps no zone, PostgreSQL would shift one."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# Member status values. Only "active" members are mailed; "pending" ones signed up on the
# web and have not confirmed yet (double opt-in).
ACTIVE, UNSUBSCRIBED, BOUNCED, PENDING = "active", "unsubscribed", "bounced", "pending"


class Member(Base):
    __tablename__ = "members"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE, index=True)
    attributes: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Indexed: a running send polls it to drop members who leave mid-send.
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, index=True
    )
    unsubscribed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Permanent failures (5xx) so far; at delivery.bounce_threshold the member becomes "bounced".
    bounce_count: Mapped[int] = mapped_column(Integer, default=0)


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guid: Mapped[str] = mapped_column(String(1024), unique=True)
    source: Mapped[str] = mapped_column(String(1024), default="")
    section: Mapped[str] = mapped_column(String(200), default="")
    title: Mapped[str] = mapped_column(String(1000))
    url: Mapped[str] = mapped_column(String(2048), default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    # Plain text of the body, for the text part and for search.
    body_text: Mapped[str] = mapped_column(Text, default="")
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Survey(Base):
    __tablename__ = "surveys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    question: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SurveyOption(Base):
    __tablename__ = "survey_options"
    __table_args__ = (UniqueConstraint("survey_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    survey_id: Mapped[int] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(1000))


# Issue status values. "sending" lasts while any row may still be tried (queued, in flight
# or deferred); "paused" stops every worker; "sent" means every row has a final outcome.
# "cancelled" stops it for good: rows not yet sent become "cancelled".
SENDING, PAUSED, SENT, CANCELLED = "sending", "paused", "sent", "cancelled"


class Issue(Base):
    __tablename__ = "issues"
    __table_args__ = (UniqueConstraint("schedule", "slot_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(16), default=SENDING, index=True)
    survey_id: Mapped[int | None] = mapped_column(ForeignKey("surveys.id"), nullable=True)
    # The compiled issue, member slots unfilled: the archive's copy and the resume point.
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str] = mapped_column(String(32))
    schedule: Mapped[str | None] = mapped_column(String(200), nullable=True)
    slot_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Temporary failures are retried until this moment, then recorded as failed.
    retry_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pause_reason: Mapped[str] = mapped_column(String(1000), default="")


class IssueItem(Base):
    __tablename__ = "issue_items"

    issue_id: Mapped[int] = mapped_column(
        ForeignKey("issues.id", ondelete="CASCADE"), primary_key=True
    )
    # An item goes out in one issue only: this is what "new" means.
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), primary_key=True, unique=True)
    position: Mapped[int] = mapped_column(Integer)


# Delivery status values (SENT and BOUNCED are shared with the issue and member values):
#   queued → sending → sent | bounced (5xx) | deferred (4xx, timeout, drop: retried at
#   next_attempt_at) → … → failed (the retry deadline passed) | skipped (member left).
QUEUED, SENDING_ROW, DEFERRED, FAILED, SKIPPED = (
    "queued",
    "sending",
    "deferred",
    "failed",
    "skipped",
)


# Literal SQL, not bound parameters: a partial index serves a query only when the planner
# can see that the query's condition implies the index's.
UNFINISHED_SQL = "status IN ('queued', 'sending', 'deferred')"


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("issue_id", "member_id"),
        Index("ix_deliveries_issue_status", "issue_id", "status"),
        # The rows still to try, in claim order: a claim reads its batch from here instead of
        # walking the primary key past every row already sent (ledger.UNFINISHED).
        Index(
            "ix_deliveries_unfinished",
            "issue_id",
            "id",
            postgresql_where=text(UNFINISHED_SQL),
            sqlite_where=text(UNFINISHED_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_message: Mapped[str] = mapped_column(String(1000), default="")
    message_id: Mapped[str] = mapped_column(String(300), default="")
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A worker's claim: rows in "sending" belong to lease_owner until lease_until.
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class LinkHit(Base):
    """Every request to a member's link: the evidence the vote rule weighs (docs/votes.md)."""

    __tablename__ = "link_hits"
    __table_args__ = (Index("ix_link_hits_member_at", "member_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # vote, unsubscribe, view, trap, human
    method: Mapped[str] = mapped_column(String(8))  # GET, HEAD, POST
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    issue_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    survey_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    option: Mapped[int | None] = mapped_column(Integer, nullable=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(300), default="")


class Vote(Base):
    """One member's vote in one survey: the counted option, and a click waiting for evidence."""

    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("survey_id", "member_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    survey_id: Mapped[int] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    option: Mapped[int | None] = mapped_column(Integer, nullable=True)  # counted
    counted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pending_option: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pending_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    evidence: Mapped[str] = mapped_column(String(300), default="")


class SignupRequest(Base):
    """A subscribe-form submission, kept for the per-address and per-IP rate limits."""

    __tablename__ = "signup_requests"
    __table_args__ = (
        Index("ix_signup_requests_email_at", "email", "at"),
        Index("ix_signup_requests_ip_at", "ip", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    mailed: Mapped[int] = mapped_column(Integer, default=0)


class AuditEntry(Base):
    """One editor action (desk page, API or CLI): who did what, to which issue, and when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    issue_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str] = mapped_column(String(2000), default="")


class RateBucket(Base):
    """A token bucket shared by every sender: one relay's messages per second or per hour.

    newsletter/ratelimit.py takes tokens under a row lock; docs/delivery.md explains it.
    """

    __tablename__ = "rate_buckets"

    relay: Mapped[str] = mapped_column(String(300), primary_key=True)  # RelaySettings.name
    period: Mapped[str] = mapped_column(String(16), primary_key=True)  # "second" or "hour"
    tokens: Mapped[float] = mapped_column()
    # When tokens were last refilled, in seconds since the epoch: the database server's
    # clock on PostgreSQL, the senders' host clock on SQLite.
    refilled_at: Mapped[float] = mapped_column()


class SchedulerLease(Base):
    """Which `newsletter serve` fires the schedules, where no advisory lock exists (SQLite):
    the owner renews `expires_at`; once it lapses, another process may take the row over."""

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
