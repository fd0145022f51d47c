"""Queries of an erasure: a member's personal data found and removed across the tables, and the suppression list."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.storage.models import (
    AuditEntry,
    BoardMember,
    BoardMessage,
    BoardReport,
    BoardSignin,
    BoardStatus,
    Delivery,
    SignupRequest,
    Suppression,
    SystemMail,
    Vote,
)

ERASED = "[erased]"


def _count(result: Any) -> int:
    """Rows an UPDATE or DELETE touched."""
    return int(getattr(result, "rowcount", 0) or 0)


def unlink_votes(session: Session, member_id: int) -> tuple[int, int]:
    """The member's counted votes stay counted with no member; a click still pending (not
    counted, so in no result) goes. Returns (votes unlinked, pending clicks dropped)."""
    dropped = _count(
        session.execute(delete(Vote).where(Vote.member_id == member_id, Vote.option.is_(None)))
    )
    kept = _count(
        session.execute(
            update(Vote)
            .where(Vote.member_id == member_id)
            .values(member_id=None, pending_option=None, pending_at=None, evidence="")
        )
    )
    # The batch caches of votes by (survey, member) must not hand the old rows back.
    session.info.pop("votes", None)
    return kept, dropped


def delete_mail(session: Session, member_id: int, address: str) -> int:
    """System mail to the member or their address (confirmations, a copy sent to it), sent or
    not: the stored message holds the address and the name."""
    result = session.execute(
        delete(SystemMail).where(
            or_(SystemMail.member_id == member_id, SystemMail.to_address == address)
        )
    )
    return _count(result)


def forget_signups(session: Session, address: str) -> tuple[int, set[str]]:
    """The subscribe form's requests for the address, deleted; with the network addresses
    they came from (to be redacted from the audit log too)."""
    ips = {
        str(ip)
        for ip in session.scalars(
            select(SignupRequest.ip).where(SignupRequest.email == address, SignupRequest.ip != "")
        )
    }
    result = session.execute(delete(SignupRequest).where(SignupRequest.email == address))
    return _count(result), ips


def forget_board(session: Session, member_id: int) -> tuple[int, set[str]]:
    """The member's board messages keep their place (replies, others' reports and the audit
    log name them) without their text or network address, as a deletion leaves them; their
    reports, sign-in links and board standing are deleted. Returns (messages erased, the
    network addresses found, to be redacted from the audit log too)."""
    ips = {
        str(ip)
        for table in (BoardMessage, BoardSignin)
        for ip in session.scalars(
            select(table.ip).where(table.member_id == member_id, table.ip != "")
        )
    }
    erased = _count(
        session.execute(
            update(BoardMessage)
            .where(BoardMessage.member_id == member_id)
            .values(status=BoardStatus.DELETED, body_md="", body_html="", body_text="", ip="")
        )
    )
    for table in (BoardReport, BoardSignin, BoardMember):
        session.execute(delete(table).where(table.member_id == member_id))
    # The batch caches of the board's people and standing must not hand the old rows back.
    session.info.pop("board_people", None)
    session.info.pop("board_standing", None)
    return erased, ips


# The member's own words in the audit log: a post's or an edit's excerpt, a report's reason.
_WORDS_IN_DETAIL = ("board-post", "board-edit", "board-report")


def erase_board_words(session: Session, member_id: int) -> int:
    """The member's board entries keep what they did (a new thread, message #N, its reports)
    and lose what they wrote, which follows the first colon of the detail."""
    found = session.scalars(
        select(AuditEntry).where(
            AuditEntry.member_id == member_id, AuditEntry.action.in_(_WORDS_IN_DETAIL)
        )
    ).all()
    for entry in found:
        head, colon, _ = entry.detail.partition(":")
        entry.detail = f"{head}: {ERASED}" if colon else entry.detail
    return len(found)


def _redactor(secrets: Collection[str]) -> re.Pattern[str] | None:
    # Longest first, so that an address is replaced whole before a shorter string inside it;
    # whole words only, so that a short name ("Li") leaves "link" alone.
    words = sorted({s for s in secrets if s.strip()}, key=len, reverse=True)
    if not words:
        return None
    either = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w)(?:{either})(?!\w)", re.IGNORECASE)


def redact(text: str, secrets: Collection[str]) -> str:
    """The text with each of `secrets` (whole words, any case) replaced by "[erased]"."""
    pattern = _redactor(secrets)
    return text if pattern is None else pattern.sub(ERASED, text)


def redact_audit(session: Session, member_id: int, address: str, secrets: Collection[str]) -> int:
    """Entries about the member (or naming the address) keep who did what and when; the
    personal data in their detail (the address, the name, network addresses) is replaced."""
    pattern = _redactor(secrets)
    if pattern is None:
        return 0
    found = session.scalars(
        select(AuditEntry).where(
            or_(
                AuditEntry.member_id == member_id,
                AuditEntry.detail.icontains(address, autoescape=True),
            )
        )
    ).all()
    changed = 0
    for entry in found:
        redacted = pattern.sub(ERASED, entry.detail)
        if redacted != entry.detail:
            entry.detail, changed = redacted, changed + 1
    return changed


def redact_deliveries(session: Session, member_id: int, secrets: Collection[str]) -> int:
    """A relay's reply stored with a delivery may quote the address ("550 <a@b.c>: no such
    user"); the row itself stays, so the issue's counts by state and code stay whole."""
    pattern = _redactor(secrets)
    if pattern is None:
        return 0
    found = session.scalars(
        select(Delivery).where(Delivery.member_id == member_id, Delivery.last_message != "")
    ).all()
    changed = 0
    for row in found:
        redacted = pattern.sub(ERASED, row.last_message)
        if redacted != row.last_message:
            row.last_message, changed = redacted, changed + 1
    return changed


# --- the suppression list ------------------------------------------------------------------------


def suppress(session: Session, digest: str, key_id: str, now: dt.datetime) -> bool:
    """Add a digest to the list; False when it is there already."""
    if session.get(Suppression, digest) is not None:
        return False
    session.add(Suppression(digest=digest, key_id=key_id, created_at=now))
    session.flush()
    return True


def suppressed(session: Session, digests: Collection[str]) -> set[str]:
    """Which of these digests are on the list."""
    if not digests:
        return set()
    found = session.scalars(select(Suppression.digest).where(Suppression.digest.in_(digests)))
    return set(found)


def suppression_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Suppression)) or 0


def suppression_keys(session: Session) -> dict[str, int]:
    """How many entries each key (by fingerprint) made."""
    rows = session.execute(
        select(Suppression.key_id, func.count()).group_by(Suppression.key_id)
    ).all()
    return {str(k): int(n) for k, n in rows}
