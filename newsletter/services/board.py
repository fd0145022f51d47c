"""The members' board: who is signed in, posting, editing, deleting and reporting messages, the pages.

Only a signed-in member posts. A session names the member and their session generation; a
use-case that acts for a member first checks both (an unsubscribed or bounced member, or one
who signed out everywhere since, is nobody). A new member's first `board.held_posts` posts
wait for an editor (services/moderation.py); later ones go on the board at once. Limits are
counted in the transaction, so the posts of one batch (the batcher runs many at once) count
against each other as well. Refusals that are the member's to fix (a rate limit, a block, a
message too long) come back as a reason, not an exception, so one refused post does not cost
a batch of others its commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup
from sqlalchemy.orm import Session

from newsletter import i18n
from newsletter.content import board as text
from newsletter.content.compiler import BoardPost
from newsletter.content.links import LinkBuilder
from newsletter.i18n import N_, Said
from newsletter.services import notices
from newsletter.services.unit import Unit, prefetch, use_case
from newsletter.storage import board as rows
from newsletter.storage import issues as issue_rows
from newsletter.storage import members as member_rows
from newsletter.storage import search
from newsletter.storage.models import (
    BoardMember,
    BoardMessage,
    BoardReport,
    BoardStatus,
    MemberStatus,
)

HOUR = dt.timedelta(hours=1)
REASON_CHARS = 300  # a report's reason
REPLIES_SHOWN = 3  # a thread's last replies on the board's pages (its own page has them all)
NOT_SIGNED_IN = Said(N_("you are not signed in"))
CANNOT_REPORT_OWN = Said(N_("you cannot report your own message"))


def blocked(standing: BoardMember | rows.Person | None, now: dt.datetime) -> bool:
    """Whether a block from posting holds at `now`."""
    if standing is None or standing.blocked_at is None:
        return False
    return standing.blocked_until is None or standing.blocked_until > now


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in member as the board's pages need them."""

    member_id: int
    name: str
    generation: int
    blocked: bool
    block_reason: str
    blocked_until: dt.datetime | None
    notices: bool
    language: str = ""  # the language the member's pages are in


def language_of(unit: Unit, chosen: str | None) -> str:
    """The language a member's pages and mail are in: their choice, else the list's."""
    return chosen if chosen in i18n.languages() else unit.settings.list.language


def _load_viewers(session: Session, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
    rows.load_people(session, {args[0] for args, _ in calls})


def _viewer(unit: Unit, member_id: int, generation: int) -> Viewer | None:
    found = rows.person(unit.session, member_id)
    if found is None or found.status != MemberStatus.ACTIVE:
        return None
    if found.generation != generation:
        return None  # signed out everywhere since this session began
    held = blocked(found, unit.now)
    return Viewer(
        found.member_id,
        text.display_name(found.name),
        generation,
        held,
        found.block_reason if held else "",
        found.blocked_until if held else None,
        found.notices,
        language_of(unit, found.language),
    )


@prefetch(_load_viewers)
def viewer(unit: Unit, member_id: int, generation: int) -> Viewer | None:
    """The member a session names, if it is still good: the member is active and has not
    signed out everywhere since. None otherwise."""
    return _viewer(unit, member_id, generation)


# --- posting ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Posted:
    """What a post came to: its status, or why it was refused (nothing stored then)."""

    status: BoardStatus | None
    refused: str = ""
    # Which rule refused it: "session" (not signed in), "blocked", "limit" (too many posts),
    # "message" (empty, too long, too many links) or "thread" (the thread is not on the board).
    rule: str = ""

    @property
    def held(self) -> bool:
        return self.status == BoardStatus.HELD


def _load_posts(session: Session, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
    """A batch of posts: members, standing, counts and the threads replied to, a few queries."""
    _load_viewers(session, calls)
    parents = {kw["parent_id"] for _, kw in calls if kw.get("parent_id")}
    rows.load_messages(session, parents)
    now = session.info.get("now")
    if now is not None:
        ips = {str(kw.get("ip", ""))[:64] for _, kw in calls}
        rows.load_counts(session, {args[0] for args, _ in calls}, ips, now - HOUR)


def _limits(unit: Unit, member_id: int, ip: str) -> tuple[str, int]:
    """Why the member may not post now ("" when they may), and their approved messages."""
    limits = unit.settings.board
    recent, approved, from_ip = rows.counts(unit.session, member_id, ip, unit.now - HOUR)
    if recent >= limits.posts_per_hour:
        return (
            Said(
                N_(
                    "you have posted %(recent)s messages in the last hour; the most is "
                    "%(most)s (board.posts_per_hour): try again later"
                ),
                recent=recent,
                most=limits.posts_per_hour,
            ),
            approved,
        )
    if from_ip >= limits.posts_per_ip_hour:
        return (
            Said(
                N_(
                    "%(count)s messages came from your network address in the last hour; the "
                    "most is %(most)s (board.posts_per_ip_hour): try again later"
                ),
                count=from_ip,
                most=limits.posts_per_ip_hour,
            ),
            approved,
        )
    return "", approved


def block_text(who: Viewer) -> Said:
    """Why the member cannot post: the block's end and the editor's reason, when there are."""
    if who.blocked_until and who.block_reason:
        return Said(
            N_("an editor has blocked you from posting until %(until)s UTC: %(reason)s"),
            until=f"{who.blocked_until:%Y-%m-%d %H:%M}",
            reason=who.block_reason,
        )
    if who.blocked_until:
        return Said(
            N_("an editor has blocked you from posting until %(until)s UTC"),
            until=f"{who.blocked_until:%Y-%m-%d %H:%M}",
        )
    if who.block_reason:
        return Said(
            N_("an editor has blocked you from posting: %(reason)s"), reason=who.block_reason
        )
    return Said(N_("an editor has blocked you from posting"))


@use_case
@prefetch(_load_posts)
def post(
    unit: Unit,
    member_id: int,
    generation: int,
    body: str,
    *,
    parent_id: int | None = None,
    ip: str = "",
) -> Posted:
    """A signed-in member's new thread, or reply to the thread `parent_id`. A new member's
    first posts are held for an editor; a reply that goes on the board at once may mail the
    thread's author (services/notices.py)."""
    who = _viewer(unit, member_id, generation)
    if who is None:
        return Posted(None, NOT_SIGNED_IN, "session")
    if who.blocked:
        return Posted(None, block_text(who), "blocked")
    parent = None
    if parent_id is not None:
        parent = rows.get(unit.session, parent_id)
        if (
            parent is None
            or parent.parent_id is not None
            or not rows.is_visible(unit.session, parent)
        ):
            return Posted(None, Said(N_("the message you reply to is not on the board")), "thread")
    ip = ip[:64]
    problem, approved = _limits(unit, member_id, ip)
    if problem:
        return Posted(None, problem, "limit")
    try:
        rendered = text.render(body, unit.settings.board)
    except text.MessageRefused as exc:
        return Posted(None, exc.said, "message")
    held = approved < unit.settings.board.held_posts
    status = BoardStatus.HELD if held else BoardStatus.SHOWN
    rows.add(
        unit.session,
        parent_id=parent_id,
        member_id=member_id,
        status=status,
        body_md=rendered.markdown,
        body_html=rendered.html,
        body_text=rendered.text,
        ip=ip,
        created_at=unit.now,
        approved_at=None if held else unit.now,
    )
    rows.counted(unit.session, member_id, ip, approved=not held)
    where = f"a reply to #{parent_id}" if parent_id else "a new thread"
    unit.audit(
        "board-post",
        member_id=member_id,
        detail=f"{where}, {'held for approval' if held else 'shown'}: "
        f"{text.excerpt(rendered.text, 200)}",
    )
    if not held:
        if parent is not None:
            notices.reply(unit, parent, member_id, who.name, rendered.html, rendered.text)
        unit.after_commit(lambda: unit.services.changed("board"))
    return Posted(status)


# --- a member's own messages and reports -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Own:
    """A member's message they may still edit or delete."""

    id: int
    thread_id: int
    markdown: str


def _own(unit: Unit, member_id: int, message_id: int) -> BoardMessage | str:
    """The member's message if they may still change it, else why not."""
    message = rows.get(unit.session, message_id)
    if message is None or message.member_id != member_id:
        return Said(N_("that is not one of your messages"))
    if message.status not in (BoardStatus.HELD, BoardStatus.SHOWN):
        return Said(N_("that message is no longer on the board"))
    minutes = unit.settings.board.edit_minutes
    if unit.now - message.created_at > dt.timedelta(minutes=minutes):
        return Said(
            N_(
                "a message can be changed for %(minutes)s minutes after it is posted "
                "(board.edit_minutes)"
            ),
            minutes=minutes,
        )
    return message


def own(unit: Unit, member_id: int, message_id: int) -> Own | str:
    """A member's message for the edit form, or why it cannot be edited."""
    found = _own(unit, member_id, message_id)
    if isinstance(found, str):
        return found
    return Own(found.id, found.parent_id or found.id, found.body_md)


@dataclass(frozen=True, slots=True)
class Changed:
    thread_id: int | None  # where the member goes next
    refused: str = ""
    signed_out: bool = False


@use_case
def edit(unit: Unit, member_id: int, generation: int, message_id: int, body: str) -> Changed:
    """A member rewrites their own message within board.edit_minutes of posting it."""
    if _viewer(unit, member_id, generation) is None:
        return Changed(None, NOT_SIGNED_IN, signed_out=True)
    found = _own(unit, member_id, message_id)
    if isinstance(found, str):
        return Changed(None, found)
    try:
        rendered = text.render(body, unit.settings.board)
    except text.MessageRefused as exc:
        return Changed(found.parent_id or found.id, exc.said)
    found.body_md, found.body_html, found.body_text = (
        rendered.markdown,
        rendered.html,
        rendered.text,
    )
    found.edited_at = unit.now
    unit.audit(
        "board-edit",
        member_id=member_id,
        detail=f"message #{found.id}: {text.excerpt(rendered.text, 200)}",
    )
    unit.after_commit(lambda: unit.services.changed("board"))
    return Changed(found.parent_id or found.id)


def erase(message: BoardMessage) -> None:
    """A deleted message keeps its place (replies, reports, the audit log name it), not its text."""
    message.status = BoardStatus.DELETED
    message.body_md = message.body_html = message.body_text = ""


@use_case
def delete(unit: Unit, member_id: int, generation: int, message_id: int) -> Changed:
    """A member deletes their own message within board.edit_minutes of posting it (a thread's
    first message takes its replies off the board with it)."""
    if _viewer(unit, member_id, generation) is None:
        return Changed(None, NOT_SIGNED_IN, signed_out=True)
    found = _own(unit, member_id, message_id)
    if isinstance(found, str):
        return Changed(None, found)
    thread = found.parent_id
    erase(found)
    unit.audit("board-delete", member_id=member_id, detail=f"message #{message_id}, by its author")
    unit.after_commit(lambda: unit.services.changed("board"))
    return Changed(thread)


@use_case
def report(
    unit: Unit, member_id: int, generation: int, message_id: int, reason: str = ""
) -> Changed:
    """A member reports someone else's message. Reported by board.report_threshold members,
    it leaves the board until an editor looks (services/moderation.py)."""
    if _viewer(unit, member_id, generation) is None:
        return Changed(None, NOT_SIGNED_IN, signed_out=True)
    message = rows.get(unit.session, message_id)
    if message is None or not rows.is_visible(unit.session, message):
        return Changed(None, Said(N_("that message is not on the board")))
    thread = message.parent_id or message.id
    if message.member_id == member_id:
        return Changed(thread, CANNOT_REPORT_OWN)
    if rows.has_reported(unit.session, message_id, member_id):
        return Changed(thread)  # once is enough; nothing changes
    reason = " ".join(text.tidy(reason).split())[:REASON_CHARS]
    count = rows.add_report(
        unit.session,
        BoardReport(message_id=message_id, member_id=member_id, reason=reason, at=unit.now),
    )
    taken_off = count >= unit.settings.board.report_threshold
    if taken_off:
        message.status = BoardStatus.REPORTED
        unit.after_commit(lambda: unit.services.changed("board"))
    unit.audit(
        "board-report",
        member_id=member_id,
        detail=f"message #{message_id} ({count} reports"
        + ("; off the board until an editor looks" if taken_off else "")
        + f"): {reason or 'no reason given'}",
    )
    return Changed(thread)


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageView:
    id: int
    thread_id: int
    member_id: int
    name: str
    html: Markup  # sanitised when it was posted
    created_at: dt.datetime
    edited: bool


@dataclass(frozen=True, slots=True)
class ThreadView:
    message: MessageView
    replies: tuple[MessageView, ...]  # on the board's pages, the last few only
    count: int  # all its replies


@dataclass(frozen=True, slots=True)
class Page:
    threads: tuple[ThreadView, ...]
    number: int  # from 1
    pages: int


def _view(row: rows.Row) -> MessageView:
    m = row.message
    return MessageView(
        m.id,
        m.parent_id or m.id,
        m.member_id,
        text.display_name(row.name),
        Markup(m.body_html),
        m.created_at,
        m.edited_at is not None,
    )


def page(unit: Unit, number: int = 1) -> Page:
    """One page of the board: threads newest first, each with its replies oldest first."""
    size = unit.settings.board.page_size
    pages = max(1, math.ceil(rows.thread_count(unit.session) / size))
    number = min(max(1, number), pages)
    found = rows.threads(unit.session, size, (number - 1) * size)
    replies = rows.replies(unit.session, [r.message.id for r in found])
    threads = tuple(
        ThreadView(
            _view(r),
            tuple(_view(x) for x in replies[r.message.id][-REPLIES_SHOWN:]),
            len(replies[r.message.id]),
        )
        for r in found
    )
    return Page(threads, number, pages)


def message(unit: Unit, message_id: int) -> MessageView | None:
    """One message the board shows, or None."""
    found = rows.get(unit.session, message_id)
    if found is None or not rows.is_visible(unit.session, found):
        return None
    author = member_rows.get(unit.session, found.member_id)
    return _view(rows.Row(found, author.name if author else "", ""))


def thread(unit: Unit, thread_id: int) -> ThreadView | None:
    """One thread the board shows, or None."""
    found = rows.shown_thread(unit.session, thread_id)
    if found is None:
        return None
    replies = rows.replies(unit.session, [thread_id])[thread_id]
    return ThreadView(_view(found), tuple(_view(x) for x in replies), len(replies))


def search_board(unit: Unit, q: str, limit: int = 20) -> list[search.BoardHit]:
    """Board messages the board shows matching every word of `q`, best first (the door
    decides whether the reader may see the board at all)."""
    return [
        dataclasses.replace(hit, name=text.display_name(hit.name))
        for hit in search.search_board(unit.session, q[:200], limit=limit)
    ]


def for_issue(unit: Unit) -> list[BoardPost]:
    """What the next issue's "From the members' board" carries: threads approved since the
    last issue, the most replied-to first. None when the section is off, and when only
    members may read the board (issues are public in the archive)."""
    limits = unit.settings.board
    if not limits.digest_messages or limits.read != "public":
        return []
    last = issue_rows.newest(unit.session, 1)
    since = last[0].created_at if last else None
    # A thread's address is public and unsigned: a preview needs no signing key for it.
    links = LinkBuilder(unit.settings.list.base_url, None)
    return [
        BoardPost(
            row.message.id,
            text.display_name(row.name),
            text.excerpt(row.message.body_text),
            replies,
            links.thread(row.message.id),
        )
        for row, replies in rows.digest(unit.session, since, limits.digest_messages)
    ]
