"""The editor's desk: actions on issues and members, shared by the /desk pages, the API and the CLI.

Every function takes a sessionmaker (or a session) and returns plain dataclasses, so callers
never hold ORM rows. Actions that change something take a keyword `actor`; when it is given
the action is written to the audit log (AuditEntry) in the same call.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import compiler as issues
from newsletter.content.personalize import Personalizer, Recipient
from newsletter.delivery.smtp import Relays, transmit
from newsletter.errors import NewsletterError
from newsletter.services import members, votes
from newsletter.site import environment
from newsletter.storage import queries as store
from newsletter.storage.ledger import Ledger, new_owner
from newsletter.storage.models import (
    CANCELLED,
    DEFERRED,
    PAUSED,
    QUEUED,
    SENDING,
    SENDING_ROW,
    SENT,
    AuditEntry,
    Issue,
    Member,
    Survey,
    utcnow,
)
from newsletter.tokens import Signer

# scrypt parameters for new hashes: 16 MiB of memory, about 50 ms.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
TEST_PREFIX = "[TEST] "
UNFINISHED_ROWS = (QUEUED, SENDING_ROW, DEFERRED)


class NotFound(NewsletterError, LookupError):
    """The issue, survey or member asked for does not exist."""


class Conflict(NewsletterError):
    """The action does not fit the issue's state (e.g. cancelling a sent issue)."""


# --- passwords -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    """An editor's password hash for config.toml: `scrypt$N$r$p$salt$hash` (base64url)."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, password_hash: str) -> bool:
    """Whether `password` matches a hash from hash_password; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, digest = password_hash.split("$")
        if scheme != "scrypt":
            return False
        n_i, r_i, p_i = int(n), int(r), int(p)
        if not (2 <= n_i <= 2**20 and 1 <= r_i <= 32 and 1 <= p_i <= 16):
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=n_i,
            r=r_i,
            p=p_i,
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# --- issues --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssueInfo:
    """An issue and where its send stands."""

    id: int
    subject: str
    status: str
    created_at: dt.datetime
    sent_at: dt.datetime | None
    pause_reason: str
    counts: dict[str, int]  # delivery rows by status
    total: int
    done: int  # rows with a final outcome (sent, bounced, failed, skipped, cancelled)
    percent: float  # done / total, 0–100

    @property
    def sent(self) -> int:
        return self.counts.get(SENT, 0)

    @property
    def summary(self) -> str:
        """One line for people: status and how many messages went out."""
        text = f"issue #{self.id} is {self.status}: {self.sent} of {self.total} sent"
        if self.status == CANCELLED:
            text += f", {self.counts.get(CANCELLED, 0)} not sent (cancelled)"
        return text


def _info(session: Session, row: Issue) -> IssueInfo:
    counts = store.delivery_counts(session, row.id)
    total = sum(counts.values())
    left = sum(counts.get(s, 0) for s in UNFINISHED_ROWS)
    done = total - left
    if total:
        percent = round(100.0 * done / total, 1)
    else:
        percent = 100.0 if row.status in (SENT, CANCELLED) else 0.0
    return IssueInfo(
        id=row.id,
        subject=row.subject,
        status=row.status,
        created_at=row.created_at,
        sent_at=row.sent_at,
        pause_reason=row.pause_reason,
        counts=counts,
        total=total,
        done=done,
        percent=percent,
    )


def list_issues(sessions: sessionmaker[Session], limit: int = 100) -> list[IssueInfo]:
    """The newest issues first, each with its delivery counts and progress."""
    with sessions() as session:
        rows = session.scalars(select(Issue).order_by(Issue.id.desc()).limit(limit)).all()
        return [_info(session, row) for row in rows]


def issue_info(sessions: sessionmaker[Session], issue_id: int) -> IssueInfo:
    """One issue's progress; NotFound when there is no such issue."""
    with sessions() as session:
        row = session.get(Issue, issue_id)
        if row is None:
            raise NotFound(f"there is no issue #{issue_id}")
        return _info(session, row)


def pause(sessions: sessionmaker[Session], issue_id: int, *, actor: str = "") -> IssueInfo:
    """Pause a sending issue: every worker stops within moments and keeps its place."""
    current = issue_info(sessions, issue_id)
    if current.status != SENDING:
        raise Conflict(f"issue #{issue_id} is {current.status}, not sending: nothing to pause")
    _set_paused(sessions, issue_id, True, actor)
    return _audited(sessions, actor, "pause", issue_id)


def resume(sessions: sessionmaker[Session], issue_id: int, *, actor: str = "") -> IssueInfo:
    """Mark a paused issue sending again. The caller starts delivering it (publish.deliver)."""
    current = issue_info(sessions, issue_id)
    if current.status != PAUSED:
        raise Conflict(f"issue #{issue_id} is {current.status}, not paused: nothing to resume")
    _set_paused(sessions, issue_id, False, actor)
    return _audited(sessions, actor, "resume", issue_id)


def _set_paused(sessions: sessionmaker[Session], issue_id: int, paused: bool, actor: str) -> None:
    from newsletter.services import (
        sending as publish,  # publish imports much; only these actions need it
    )

    try:
        publish.set_paused(sessions, issue_id, paused, f"paused by {actor or 'an editor'}")
    except NewsletterError as exc:  # a race with another editor or the engine
        raise Conflict(str(exc)) from None


def cancel(sessions: sessionmaker[Session], issue_id: int, *, actor: str = "") -> IssueInfo:
    """Stop an issue for good: no more messages go out; the result says how many were sent."""
    current = issue_info(sessions, issue_id)
    if current.status in (SENT, CANCELLED):
        raise Conflict(f"issue #{issue_id} is already {current.status}: nothing to cancel")
    ledger = Ledger(sessions, issue_id, new_owner(), lease_seconds=1, bounce_threshold=1)
    ledger.cancel()
    info = issue_info(sessions, issue_id)
    if actor:
        with sessions.begin() as session:
            audit(session, actor, "cancel", issue_id, info.summary)
    return info


def _audited(sessions: sessionmaker[Session], actor: str, action: str, issue_id: int) -> IssueInfo:
    info = issue_info(sessions, issue_id)
    if actor:
        with sessions.begin() as session:
            audit(session, actor, action, issue_id, info.summary)
    return info


def has_work(sessions: sessionmaker[Session]) -> bool:
    """Whether `publish.send` would do anything: an unfinished issue or new items."""
    with sessions() as session:
        if store.unfinished_issue(session) is not None:
            return True
        return store.count_new_items(session) > 0


# --- test messages and previews ------------------------------------------------------------


def _compiled(
    session: Session, settings: Settings, issue_id: int | None
) -> tuple[issues.Compiled, int]:
    """The next issue compiled (nothing stored: the caller rolls back), or stored issue N."""
    if issue_id is None:
        return issues.compile_next(session, settings, environment(settings.site_dir)), 0
    row = session.get(Issue, issue_id)
    if row is None:
        raise NotFound(f"there is no issue #{issue_id}")
    return issues.from_row(row), row.id


def preview_html(
    settings: Settings, sessions: sessionmaker[Session], issue_id: int | None = None
) -> str:
    """The next issue's (or issue N's) HTML as a sample reader sees it; links are inert."""
    with sessions() as session:
        compiled, number = _compiled(session, settings, issue_id)
        session.rollback()  # compiling may create the survey row: store nothing
    sample = Recipient(member_id=0, email="reader@example.org", name="")
    return Personalizer(compiled, settings, None, number).fill_text(
        compiled.html, sample, html_part=True
    )


async def test_send(
    settings: Settings,
    sessions: sessionmaker[Session],
    to: str,
    issue_id: int | None = None,
    *,
    actor: str = "",
) -> str:
    """Send ONE copy of the next issue (or of stored issue N) to `to`, subject "[TEST] …".

    Nothing is stored: no issue, no delivery row, no item claimed. The copy goes through the
    configured relays, DKIM-signed when [dkim] is set. Returns the message's Message-ID.
    Raises ValueError for a bad address, NothingToSend when there is no next issue, and
    NewsletterError when no relay takes the message.
    """
    import aiosmtplib

    from newsletter.delivery.smtp import CONNECT_ERRORS
    from newsletter.services import sending as publish

    address = members.normalize_address(to)
    with sessions() as session:
        compiled, number = _compiled(session, settings, issue_id)
        session.rollback()
    compiled = dataclasses.replace(compiled, subject=TEST_PREFIX + compiled.subject)
    personalizer = Personalizer(compiled, settings, Signer(settings.require_secret()), number)
    recipient = Recipient(member_id=0, email=address, name="")
    signer = publish.dkim_signer(settings)
    data: bytes
    if signer is not None:
        message_id, plain = personalizer.message(recipient)
        data = signer.sign(plain)
    else:
        message_id, data = personalizer.wire(recipient)
    try:
        client, _, eight_bit = await Relays(settings.smtp).connect()
    except CONNECT_ERRORS as exc:
        raise NewsletterError(f"the test message was not sent: {exc}") from None
    try:
        if not eight_bit:
            raise NewsletterError("the relay does not offer 8BITMIME, which UTF-8 bodies need")
        await transmit(
            client, settings.list.return_path or settings.list.from_address, address, data
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise NewsletterError(f"the relay refused the test message: {exc}") from None
    finally:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
    if actor:
        with sessions.begin() as session:
            audit(session, actor, "test-send", issue_id, f"to {address}: {compiled.subject}")
    return message_id


# --- audit ---------------------------------------------------------------------------------


def audit(
    session: Session, actor: str, action: str, issue_id: int | None = None, detail: str = ""
) -> AuditEntry:
    """Record one editor action (the caller's transaction commits it)."""
    entry = AuditEntry(
        at=utcnow(), actor=actor[:200], action=action[:64], issue_id=issue_id, detail=detail[:2000]
    )
    session.add(entry)
    return entry


@dataclass(frozen=True, slots=True)
class AuditInfo:
    at: dt.datetime
    actor: str
    action: str
    issue_id: int | None
    detail: str


def recent_audit(sessions: sessionmaker[Session], limit: int = 100) -> list[AuditInfo]:
    """The newest audit entries first."""
    with sessions() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)).all()
        return [AuditInfo(r.at, r.actor, r.action, r.issue_id, r.detail) for r in rows]


# --- members and surveys -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberInfo:
    id: int
    email: str
    name: str
    status: str
    created_at: dt.datetime


def search_members(
    sessions: sessionmaker[Session], q: str = "", limit: int = 100
) -> list[MemberInfo]:
    """Members whose address or name contains `q` (any case), by address; all when q is empty."""
    query = select(Member).order_by(Member.email).limit(max(1, min(limit, 1000)))
    q = q.strip()[:200]
    if q:
        query = query.where(
            or_(
                Member.email.icontains(q, autoescape=True),
                Member.name.icontains(q, autoescape=True),
            )
        )
    with sessions() as session:
        return [
            MemberInfo(m.id, m.email, m.name, m.status, m.created_at)
            for m in session.scalars(query)
        ]


def import_members(
    sessions: sessionmaker[Session], data: bytes, *, actor: str = "", filename: str = "upload.csv"
) -> members.ImportReport:
    """Import an uploaded member list (CSV bytes) through members.import_csv."""
    fd, name = tempfile.mkstemp(suffix=".csv")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        report = members.import_csv(sessions, Path(name))
    finally:
        os.unlink(name)
    if actor:
        with sessions.begin() as session:
            audit(
                session,
                actor,
                "import-members",
                None,
                f"{filename[:200]}: {report.rows} rows, {report.added} added, "
                f"{report.updated} updated, {len(report.errors)} errors",
            )
    return report


def survey_results(sessions: sessionmaker[Session], survey_id: int | None = None) -> votes.Results:
    """A survey's counted results; the newest survey when survey_id is None."""
    with sessions() as session:
        if survey_id is None:
            survey_id = session.scalar(select(Survey.id).order_by(Survey.id.desc()).limit(1))
            if survey_id is None:
                raise NotFound("there is no survey yet (it is made with the first issue)")
        try:
            return votes.results(session, survey_id)
        except LookupError:
            raise NotFound(f"there is no survey #{survey_id}") from None


__all__ = [
    "AuditInfo",
    "Conflict",
    "IssueInfo",
    "MemberInfo",
    "NotFound",
    "audit",
    "cancel",
    "has_work",
    "hash_password",
    "import_members",
    "issue_info",
    "list_issues",
    "pause",
    "preview_html",
    "recent_audit",
    "resume",
    "search_members",
    "survey_results",
    "test_send",
    "verify_password",
]
