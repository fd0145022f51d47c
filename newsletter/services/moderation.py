"""Moderating the members' board: the queue, approve, hide, delete, block and unblock members.

Each is an editor's action (Permission.MODERATE), audited under the editor's name. The queue
holds new members' held posts and messages reported past board.report_threshold.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from markupsafe import Markup

from newsletter.content import board as text
from newsletter.errors import NewsletterError
from newsletter.services import notices
from newsletter.services.board import erase
from newsletter.services.unit import Permission, Unit, requires, use_case
from newsletter.storage import board as rows
from newsletter.storage import members as member_rows
from newsletter.storage.models import BoardMessage, BoardStatus

BLOCK_REASON_CHARS = 500


class NotFound(NewsletterError, LookupError):
    """The board message or member asked for does not exist."""


class Conflict(NewsletterError):
    """The action does not fit the message's state (e.g. approving a deleted message)."""


@dataclass(frozen=True, slots=True)
class Waiting:
    """A message in the moderation queue."""

    id: int
    thread_id: int
    is_reply: bool
    status: BoardStatus
    member_id: int
    name: str
    email: str
    html: Markup  # sanitised when it was posted
    text: str
    created_at: dt.datetime
    reports: tuple[tuple[str, str], ...]  # (reporter's address, reason)


@dataclass(frozen=True, slots=True)
class Blocked:
    member_id: int
    name: str
    email: str
    since: dt.datetime
    until: dt.datetime | None
    reason: str


@dataclass(frozen=True, slots=True)
class Queue:
    waiting: tuple[Waiting, ...]
    blocked: tuple[Blocked, ...]


def queue(unit: Unit) -> Queue:
    """Held and reported messages, oldest first, and the members blocked now."""
    found = rows.waiting(unit.session)
    reports = rows.reports(unit.session, [r.message.id for r in found])
    waiting = tuple(
        Waiting(
            r.message.id,
            r.message.parent_id or r.message.id,
            r.message.parent_id is not None,
            r.message.status,
            r.message.member_id,
            text.display_name(r.name),
            r.email,
            Markup(r.message.body_html),
            r.message.body_text,
            r.message.created_at,
            tuple(reports[r.message.id]),
        )
        for r in found
    )
    blocks = tuple(
        Blocked(
            s.member_id,
            text.display_name(name),
            email,
            s.blocked_at,
            s.blocked_until,
            s.block_reason,
        )
        for s, name, email in rows.blocked(unit.session, unit.now)
        if s.blocked_at is not None
    )
    return Queue(waiting, blocks)


def member_by_address(unit: Unit, email: str) -> int:
    """The member with this address (as stored: normalised); NotFound when there is none."""
    found = member_rows.by_email(unit.session, email)
    if found is None:
        raise NotFound(f"there is no member {email}")
    return found.id


def _message(unit: Unit, message_id: int) -> BoardMessage:
    found = rows.get(unit.session, message_id)
    if found is None:
        raise NotFound(f"there is no board message #{message_id}")
    return found


def _changed(unit: Unit) -> None:
    unit.after_commit(lambda: unit.services.changed("board"))


@use_case
@requires(Permission.MODERATE)
def approve(unit: Unit, message_id: int) -> BoardStatus:
    """Put a held, reported or hidden message on the board; its reports are settled. A reply
    that goes on the board may mail its thread's author (services/notices.py)."""
    message = _message(unit, message_id)
    if message.status in (BoardStatus.SHOWN, BoardStatus.DELETED):
        raise Conflict(f"message #{message_id} is {message.status}: nothing to approve")
    was = message.status
    message.status = BoardStatus.SHOWN
    if message.approved_at is None:
        message.approved_at = unit.now
    settled = rows.clear_reports(unit.session, message_id)
    unit.audit(
        "board-approve",
        member_id=message.member_id,
        detail=f"message #{message_id}, {was}"
        + (f", {settled} reports set aside" if settled else "")
        + f": {text.excerpt(message.body_text, 200)}",
    )
    if message.parent_id is not None:
        parent = rows.get(unit.session, message.parent_id)
        author = member_rows.get(unit.session, message.member_id)
        if parent is not None and parent.status == BoardStatus.SHOWN and author is not None:
            notices.reply(
                unit, parent, message.member_id, author.name, message.body_html, message.body_text
            )
    _changed(unit)
    return message.status


@use_case
@requires(Permission.MODERATE)
def hide(unit: Unit, message_id: int) -> BoardStatus:
    """Take a message off the board (it can be approved again); its reports are settled."""
    message = _message(unit, message_id)
    if message.status in (BoardStatus.HIDDEN, BoardStatus.DELETED):
        raise Conflict(f"message #{message_id} is {message.status}: nothing to hide")
    was = message.status
    message.status = BoardStatus.HIDDEN
    rows.clear_reports(unit.session, message_id)
    unit.audit("board-hide", member_id=message.member_id, detail=f"message #{message_id}, {was}")
    _changed(unit)
    return message.status


@use_case
@requires(Permission.MODERATE)
def remove(unit: Unit, message_id: int) -> BoardStatus:
    """Delete a message for good: its text is gone (a thread's replies leave the board too)."""
    message = _message(unit, message_id)
    if message.status == BoardStatus.DELETED:
        raise Conflict(f"message #{message_id} is deleted already")
    was = message.status
    erase(message)
    rows.clear_reports(unit.session, message_id)
    unit.audit("board-remove", member_id=message.member_id, detail=f"message #{message_id}, {was}")
    _changed(unit)
    return message.status


@use_case
@requires(Permission.MODERATE)
def block(unit: Unit, member_id: int, reason: str, until: dt.datetime | None = None) -> None:
    """Block a member from posting (and from signing in) until `until`, or until unblocked."""
    if member_rows.get(unit.session, member_id) is None:
        raise NotFound(f"there is no member #{member_id}")
    reason = " ".join(text.tidy(reason).split())[:BLOCK_REASON_CHARS]
    if not reason:
        raise Conflict("say why the member is blocked (the reason is shown to them)")
    if until is not None and until <= unit.now:
        raise Conflict(f"the block would end at {until:%Y-%m-%d %H:%M} UTC, which has passed")
    standing = rows.ensure_standing(unit.session, member_id)
    standing.blocked_at, standing.blocked_until, standing.block_reason = unit.now, until, reason
    ends = f"until {until:%Y-%m-%d %H:%M} UTC" if until else "until unblocked"
    unit.audit("board-block", member_id=member_id, detail=f"{ends}: {reason}")


@use_case
@requires(Permission.MODERATE)
def unblock(unit: Unit, member_id: int) -> bool:
    """End a member's block; False when they were not blocked."""
    standing = rows.standing(unit.session, member_id)
    if standing is None or standing.blocked_at is None:
        return False
    standing.blocked_at = standing.blocked_until = None
    standing.block_reason = ""
    unit.audit("board-unblock", member_id=member_id, detail="may post again")
    return True
