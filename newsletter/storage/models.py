"""SQLAlchemy tables and the status enums: members, items, issues, surveys, deliveries, mail, bounces, clicks."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
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


E = TypeVar("E", bound=StrEnum)

# The variant key of a member who has chosen nothing: every section, the list's language.
DEFAULT_VARIANT = "default"


class StatusType(TypeDecorator[E], Generic[E]):
    """A status enum kept as its plain string value (VARCHAR, no database enum type), so a new
    status needs no migration and the stored values read as before."""

    impl = String(16)
    cache_ok = True

    def __init__(self, enum: type[E]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Any) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> E | None:
        return None if value is None else self.enum(value)


class MemberStatus(StrEnum):
    """Only active members are mailed; pending ones signed up on the web and have not confirmed
    yet (double opt-in); unsubscribed and bounced ones are never mailed again by an import. An
    erased member is a row with no personal data left (services/erasure.py): it keeps the
    issues' delivery counts whole, and its address lives on only as a suppression hash."""

    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    PENDING = "pending"
    ERASED = "erased"


class IssueStatus(StrEnum):
    """ "sending" lasts while any row may still be tried (queued, in flight or deferred);
    "paused" stops every worker; "sent" means every row has a final outcome; "cancelled" stops
    it for good: rows not yet sent become "cancelled"."""

    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"


class DeliveryStatus(StrEnum):
    """queued → sending → sent | bounced (5xx) | deferred (4xx, timeout, drop: retried at
    next_attempt_at) → … → failed (the retry deadline passed) | skipped (member left) |
    cancelled (the issue was)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    BOUNCED = "bounced"
    DEFERRED = "deferred"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


# The rows a send may still try: the one definition of "unfinished".
UNFINISHED = frozenset({DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED})
# A delivery row with one of these has its final outcome.
FINISHED = frozenset(DeliveryStatus) - UNFINISHED


class SurveyStatus(StrEnum):
    """A draft is made in the desk and not asked yet; only an open survey records votes."""

    DRAFT = "draft"
    OPEN = "open"
    CLOSED = "closed"


class SurveySource(StrEnum):
    """Where a survey was made: the [survey] table of config.toml, or by an editor (the desk,
    the API or the CLI)."""

    CONFIG = "config"
    DESK = "desk"


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Member(Base):
    __tablename__ = "members"
    # A release reads the distinct variant keys of the active members from this index alone.
    __table_args__ = (Index("ix_members_status_variant", "status", "variant_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[MemberStatus] = mapped_column(
        StatusType(MemberStatus), default=MemberStatus.ACTIVE, index=True
    )
    attributes: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Indexed: a running send polls it to drop members who leave mid-send.
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, index=True
    )
    unsubscribed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Permanent failures (5xx) so far; at delivery.bounce_threshold the member becomes "bounced".
    bounce_count: Mapped[int] = mapped_column(Integer, default=0)
    # The bounces that came back (services/bounces.py): 1 a hard one, 0.5 a soft one, at most
    # one a day; at bounces.threshold the member is suppressed. It lapses to 0 after
    # bounces.quiet_days without a bounce.
    bounce_score: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # The last day a bounce counted (one a day counts) and when the last one came.
    bounce_day: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    bounced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Why the member was suppressed or unsubscribed by what came back ("complaint", a DSN's
    # status and diagnostic); "" for a member's own unsubscribe.
    left_reason: Mapped[str] = mapped_column(String(300), default="", server_default="")
    # The member's own choices (docs/preferences.md). None: the list's language, every section.
    language: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The sections chosen, as a JSON list in text (comparable in SQL, unlike JSON on PostgreSQL).
    sections: Mapped[str | None] = mapped_column(Text, nullable=True)
    survey: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # No issue goes to the member before this moment (a pause of 2, 4 or 8 weeks).
    paused_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The choices above as one short key, so an issue's snapshot assigns each member their
    # variant in SQL: "default" for no choice made (content/variants.py makes the others).
    variant_key: Mapped[str] = mapped_column(
        String(64), default=DEFAULT_VARIANT, server_default=DEFAULT_VARIANT
    )
    # A change of address waiting for the new address to confirm it (the nonce is in the
    # link mailed there, so an older link stops working once a newer change is asked).
    new_email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    new_email_nonce: Mapped[int | None] = mapped_column(Integer, nullable=True)
    new_email_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


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
    # A held item never goes out until an editor releases it.
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # The Markdown an editor wrote it in on the desk (None for imported items).
    body_md: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Its place in the next issue, as an editor ordered it (None: by date, after the ordered).
    position: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Survey(Base):
    __tablename__ = "surveys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    question: Mapped[str] = mapped_column(String(1000))
    status: Mapped[SurveyStatus] = mapped_column(
        StatusType(SurveyStatus), default=SurveyStatus.OPEN
    )
    # Surveys stored before editors could make them all came from config.toml.
    source: Mapped[SurveySource] = mapped_column(
        StatusType(SurveySource), default=SurveySource.DESK, server_default="config"
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When it was last opened (None: never asked, a draft): the default survey of an issue is
    # the one opened last when config.toml's is not open.
    opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SurveyOption(Base):
    __tablename__ = "survey_options"
    __table_args__ = (UniqueConstraint("survey_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    survey_id: Mapped[int] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(1000))


class Issue(Base):
    __tablename__ = "issues"
    __table_args__ = (UniqueConstraint("schedule", "slot_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(1000))
    status: Mapped[IssueStatus] = mapped_column(
        StatusType(IssueStatus), default=IssueStatus.SENDING, index=True
    )
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
    # The issue's own links (items', the footer's), in order: a click link names one by its
    # place here, so only these are redirected to (None: an issue made before clicks were).
    links: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class IssueItem(Base):
    __tablename__ = "issue_items"

    issue_id: Mapped[int] = mapped_column(
        ForeignKey("issues.id", ondelete="CASCADE"), primary_key=True
    )
    # An item goes out in one issue only: this is what "new" means.
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), primary_key=True, unique=True)
    position: Mapped[int] = mapped_column(Integer)


class IssueVariant(Base):
    """One compiled variant of an issue (some sections, a language, with or without the
    survey), slots open like the issue's own copy. The issue row keeps the full copy in the
    list's language (the public archive's); members with other choices get one of these."""

    __tablename__ = "issue_variants"
    __table_args__ = (UniqueConstraint("issue_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(16))
    sections: Mapped[str] = mapped_column(Text)  # the sections it shows, a JSON list
    survey: Mapped[bool] = mapped_column(Boolean)
    subject: Mapped[str] = mapped_column(String(1000))
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)


# Literal SQL, not bound parameters: a partial index serves a query only when the planner
# can see that the query's condition implies the index's.
UNFINISHED_SQL = "status IN ('queued', 'sending', 'deferred')"


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("issue_id", "member_id"),
        Index("ix_deliveries_issue_status", "issue_id", "status"),
        # A member who leaves has their unsent rows skipped at once: found by member.
        Index("ix_deliveries_member_status", "member_id", "status"),
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
    status: Mapped[DeliveryStatus] = mapped_column(
        StatusType(DeliveryStatus), default=DeliveryStatus.QUEUED
    )
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
    # The issue_variants row this member gets; None: the issue's own (full) copy. No foreign
    # key, so adding it did not rebuild the table; variants go with their issue (CASCADE).
    variant_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class LinkHit(Base):
    """Every request to a member's link: the evidence the vote rule weighs (docs/votes.md)."""

    __tablename__ = "link_hits"
    __table_args__ = (Index("ix_link_hits_member_at", "member_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # vote, unsubscribe, view, trap, person
    method: Mapped[str] = mapped_column(String(8))  # GET, HEAD, POST
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    issue_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    survey_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    option: Mapped[int | None] = mapped_column(Integer, nullable=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(300), default="")


class LinkHitCount(Base):
    """Link hits older than the vote rule needs, folded into counts: per day, kind, method and
    issue, with no member, address or agent (the raw rows are deleted as they are folded)."""

    __tablename__ = "link_hit_counts"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    method: Mapped[str] = mapped_column(String(8), primary_key=True)
    # 0 stands for "no issue" (votes carry a survey instead), so the key has no NULL in it.
    issue_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hits: Mapped[int] = mapped_column(Integer, default=0)


class Vote(Base):
    """One member's vote in one survey: the counted option, and a click waiting for evidence."""

    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("survey_id", "member_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    survey_id: Mapped[int] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"))
    # None once the member was erased: the counted vote stays in the results, unlinked.
    member_id: Mapped[int | None] = mapped_column(
        ForeignKey("members.id", ondelete="CASCADE"), nullable=True
    )
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
    # 1 once a relay accepted this request's confirmation (the mailer sets it), not before.
    mailed: Mapped[int] = mapped_column(Integer, default=0)


class AuditEntry(Base):
    """One action (an editor's on the desk, API or CLI; a member's on their pages; the
    scheduler's): who did what, to which issue or member, and when. Written in the same
    transaction as the action itself (newsletter/services/unit.py)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    issue_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    member_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    detail: Mapped[str] = mapped_column(String(2000), default="")


class Suppression(Base):
    """An erased member's address, kept only as HMAC-SHA256 under a key derived from the site's
    secret (services/erasure.py), so that no import, sign-up or editor adds it again; nothing
    in the row says who it was."""

    __tablename__ = "suppressions"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex
    # Which secret key made the digest (a fingerprint of it, not the key): lookups hash with
    # every configured key, and an entry whose key is no longer configured can be reported.
    key_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Draft(Base):
    """The next issue as editors shape it before it is released: one row (id 1). Released with
    the issue, then cleared."""

    __tablename__ = "drafts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note_md: Mapped[str] = mapped_column(Text, default="")  # the editor's note, Markdown
    subject: Mapped[str] = mapped_column(String(1000), default="")  # "" = list.subject's
    preheader: Mapped[str] = mapped_column(String(300), default="")
    # "default" (the site's default survey), "none", or a survey's number
    survey: Mapped[str] = mapped_column(String(32), default="default")
    # When set, the issue is released and sent at this moment (by `serve`).
    send_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_by: Mapped[str] = mapped_column(String(200), default="")


class MailStatus(StrEnum):
    """A system message: queued → sending → sent | deferred (retried) → … | failed."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"


class SystemMail(Base):
    """One system message (a signup confirmation, a test copy of an issue, later sign-in links
    and notices), queued in the transaction that asked for it and delivered by the mailer with
    retries, like an issue's rows: a relay outage delays it, never loses it."""

    __tablename__ = "system_mail"
    __table_args__ = (Index("ix_system_mail_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # confirm, test, ...
    member_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    # A confirmation's sign-up request, marked mailed once a relay has taken the message.
    signup_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_address: Mapped[str] = mapped_column(String(320), index=True)
    envelope_from: Mapped[str] = mapped_column(String(320))
    message_id: Mapped[str] = mapped_column(String(300))
    # The whole message as it goes out (CRLF lines), unsigned: DKIM signs it at sending time.
    message: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[MailStatus] = mapped_column(StatusType(MailStatus), default=MailStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_message: Mapped[str] = mapped_column(String(1000), default="")
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    retry_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RateBucket(Base):
    """A token bucket shared by every sender: one relay's messages per second or per hour.

    newsletter/storage/ratelimit.py takes tokens under a row lock; docs/delivery.md explains it.
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


class BoardStatus(StrEnum):
    """A board message: held (a new member's, waiting for an editor) → shown; shown →
    reported (enough members reported it: off the board until an editor looks) → shown or
    hidden; any → deleted (by its author or an editor; its text is gone)."""

    HELD = "held"
    SHOWN = "shown"
    REPORTED = "reported"
    HIDDEN = "hidden"
    DELETED = "deleted"


class BoardMessage(Base):
    """A message on the members' board: a thread's first message, or a reply to one (one level)."""

    __tablename__ = "board_messages"
    __table_args__ = (
        # The board's pages: threads (no parent) by status, newest first; replies by thread.
        Index("ix_board_messages_parent_status", "parent_id", "status", "created_at"),
        # The rate limits count a member's and an address's recent posts.
        Index("ix_board_messages_member_created", "member_id", "created_at"),
        Index("ix_board_messages_ip_created", "ip", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("board_messages.id", ondelete="CASCADE"), nullable=True
    )
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    status: Mapped[BoardStatus] = mapped_column(StatusType(BoardStatus), index=True)
    body_md: Mapped[str] = mapped_column(Text, default="")  # as the member wrote it
    body_html: Mapped[str] = mapped_column(Text, default="")  # rendered and sanitised (nh3)
    body_text: Mapped[str] = mapped_column(Text, default="")  # for mail, the digest and search
    ip: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    edited_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When it first went on the board (at once, or when an editor approved it): the digest
    # takes the messages approved since the last issue.
    approved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A thread's last reply notice to its author: at most one a day.
    notified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BoardReport(Base):
    """One member's report of one message (a member reports a message once)."""

    __tablename__ = "board_reports"

    message_id: Mapped[int] = mapped_column(
        ForeignKey("board_messages.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[int] = mapped_column(
        ForeignKey("members.id", ondelete="CASCADE"), primary_key=True
    )
    reason: Mapped[str] = mapped_column(String(300), default="")
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class BoardMember(Base):
    """A member's standing on the board, made when first needed: the session generation
    (raised by "sign out everywhere"), a block from posting, and reply notices on or off."""

    __tablename__ = "board_members"

    member_id: Mapped[int] = mapped_column(
        ForeignKey("members.id", ondelete="CASCADE"), primary_key=True
    )
    generation: Mapped[int] = mapped_column(Integer, default=0)
    blocked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    blocked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    block_reason: Mapped[str] = mapped_column(String(500), default="")
    notices: Mapped[bool] = mapped_column(Boolean, default=True)


class BoardSignin(Base):
    """A sign-in link sent by email: valid for minutes, and once (`used_at`)."""

    __tablename__ = "board_signins"
    __table_args__ = (
        Index("ix_board_signins_member_created", "member_id", "created_at"),
        Index("ix_board_signins_ip_created", "ip", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    ip: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BounceKind(StrEnum):
    """What came back for one member: a hard bounce (failed, 5.x.x), a soft one (failed with a
    4.x.x status), a warning (delayed: counts nothing), a complaint (ARF: unsubscribes)."""

    HARD = "hard"
    SOFT = "soft"
    WARNING = "warning"
    COMPLAINT = "complaint"


class BounceEvent(Base):
    """One bounce, warning or complaint applied to a member: the history the desk shows."""

    __tablename__ = "bounce_events"
    __table_args__ = (Index("ix_bounce_events_member_at", "member_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    issue_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    kind: Mapped[BounceKind] = mapped_column(StatusType(BounceKind))
    status: Mapped[str] = mapped_column(String(16), default="")  # RFC 3463, e.g. 5.1.1
    diagnostic: Mapped[str] = mapped_column(String(1000), default="")
    source: Mapped[str] = mapped_column(String(32), default="")  # smtp, read, imap, ses, ...
    score: Mapped[float] = mapped_column(Float, default=0.0)  # what it added to the score
    # The same report delivered twice counts once: its digest (report and recipient) is unique.
    digest: Mapped[str] = mapped_column(String(64), unique=True)


class ClickHit(Base):
    """A fetch of an issue's link by a member's message, held as evidence until the click
    rule has decided it (docs/bounces.md); then only ClickCount keeps anything of it."""

    __tablename__ = "click_hits"
    __table_args__ = (
        Index("ix_click_hits_member_at", "member_id", "at"),
        Index("ix_click_hits_decided_at", "decided", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_id: Mapped[int] = mapped_column(Integer)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    link: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(8))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    decided: Mapped[bool] = mapped_column(Boolean, default=False)


class ClickCount(Base):
    """Decided clicks per issue and link: people's and scanners', with no member in them."""

    __tablename__ = "click_counts"

    issue_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    link: Mapped[int] = mapped_column(Integer, primary_key=True)
    people: Mapped[int] = mapped_column(Integer, default=0)
    scanners: Mapped[int] = mapped_column(Integer, default=0)


class MemberClick(Base):
    """A person's click, by member: kept only with tracking.per_member = true."""

    __tablename__ = "member_clicks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    issue_id: Mapped[int] = mapped_column(Integer)
    link: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
