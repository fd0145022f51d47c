"""Queries on the members' board: messages and threads, reports, members' standing, posting counts.

A thread is a message without a parent; its replies are one level below it. What the board
shows is one rule, written here once: a thread whose first message is shown, and its shown
replies (storage/search.py applies the same rule to board hits).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Select, Table, bindparam, case, delete, func, insert, select
from sqlalchemy.orm import Session, aliased

from newsletter.storage.models import (
    BoardMember,
    BoardMessage,
    BoardReport,
    BoardStatus,
    Member,
    MemberStatus,
)

# Waiting for an editor: the moderation queue.
WAITING = (BoardStatus.HELD, BoardStatus.REPORTED)


@dataclass(frozen=True, slots=True)
class Row:
    """A message with what a page shows beside it."""

    message: BoardMessage
    name: str  # its author's name ("" when they gave none)
    email: str  # for editors only: the board never shows an address


def _rows(found: Sequence[tuple[BoardMessage, str, str]]) -> list[Row]:
    return [Row(m, name, email) for m, name, email in found]


def _with_author() -> Select[BoardMessage, str, str]:
    return select(BoardMessage, Member.name, Member.email).join(
        Member, Member.id == BoardMessage.member_id
    )


B = cast(Table, BoardMessage.__table__)
_INSERT = insert(B)


def add(session: Session, **values: object) -> None:
    """Stage a new message (BoardMessage's columns). The transaction's unit writes the staged
    messages with its other rows, in one statement for a whole batch of posts, with no ORM
    object and no id read back (on the posting path, those cost more than the insert)."""
    session.info.setdefault("staged", {}).setdefault("board_messages", _insert_staged)
    session.info.setdefault("board_new", []).append(values)


def _insert_staged(session: Session) -> None:
    staged = session.info.pop("board_new", [])
    if staged:
        session.execute(_INSERT, staged)  # a list: executemany, so no RETURNING


def get(session: Session, message_id: int) -> BoardMessage | None:
    found = session.get(BoardMessage, message_id)
    session.info.setdefault("keep", []).append(found)
    return found


def load_messages(session: Session, message_ids: set[int]) -> None:
    """Bring these messages into the session in one query (a batch's replies' threads)."""
    if message_ids:
        found = session.scalars(select(BoardMessage).where(BoardMessage.id.in_(message_ids))).all()
        session.info.setdefault("keep", []).extend(found)


# --- what the board shows ----------------------------------------------------------------------

_THREADS = (
    select(BoardMessage, Member.name, Member.email)
    .join(Member, Member.id == BoardMessage.member_id)
    .where(BoardMessage.parent_id.is_(None), BoardMessage.status == BoardStatus.SHOWN)
    .order_by(BoardMessage.created_at.desc(), BoardMessage.id.desc())
    .limit(bindparam("n"))
    .offset(bindparam("skip"))
)
_THREAD_COUNT = (
    select(func.count())
    .select_from(BoardMessage)
    .where(BoardMessage.parent_id.is_(None), BoardMessage.status == BoardStatus.SHOWN)
)
_REPLIES = (
    select(BoardMessage, Member.name, Member.email)
    .join(Member, Member.id == BoardMessage.member_id)
    .where(
        BoardMessage.parent_id.in_(bindparam("ids", expanding=True)),
        BoardMessage.status == BoardStatus.SHOWN,
    )
    .order_by(BoardMessage.created_at, BoardMessage.id)
)


def threads(session: Session, limit: int, offset: int) -> list[Row]:
    """Shown threads, newest first."""
    return _rows(session.execute(_THREADS, {"n": limit, "skip": offset}).all())


def thread_count(session: Session) -> int:
    return session.scalar(_THREAD_COUNT) or 0


def replies(session: Session, thread_ids: Collection[int]) -> dict[int, list[Row]]:
    """Each thread's shown replies, oldest first."""
    out: dict[int, list[Row]] = {t: [] for t in thread_ids}
    if thread_ids:
        for row in _rows(session.execute(_REPLIES, {"ids": list(thread_ids)}).all()):
            assert row.message.parent_id is not None
            out[row.message.parent_id].append(row)
    return out


def shown_thread(session: Session, thread_id: int) -> Row | None:
    """A thread the board shows, by its first message's id."""
    found = session.execute(
        _with_author().where(
            BoardMessage.id == thread_id,
            BoardMessage.parent_id.is_(None),
            BoardMessage.status == BoardStatus.SHOWN,
        )
    ).first()
    return None if found is None else Row(found[0], found[1], found[2])


def is_visible(session: Session, message: BoardMessage) -> bool:
    """Whether the board shows this message (it, and its thread's first message, are shown)."""
    if message.status != BoardStatus.SHOWN:
        return False
    if message.parent_id is None:
        return True
    parent = get(session, message.parent_id)
    return parent is not None and parent.status == BoardStatus.SHOWN


def digest(session: Session, since: dt.datetime | None, limit: int) -> list[tuple[Row, int]]:
    """Threads approved since `since` (all, when None) with their shown replies, the most
    replied-to first, then the newest."""
    reply = aliased(BoardMessage)
    count = (
        select(func.count())
        .where(reply.parent_id == BoardMessage.id, reply.status == BoardStatus.SHOWN)
        .correlate(BoardMessage)
        .scalar_subquery()
    )
    query = (
        select(BoardMessage, Member.name, Member.email, count.label("replies"))
        .join(Member, Member.id == BoardMessage.member_id)
        .where(BoardMessage.parent_id.is_(None), BoardMessage.status == BoardStatus.SHOWN)
        .order_by(count.desc(), BoardMessage.approved_at.desc(), BoardMessage.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(BoardMessage.approved_at > since)
    return [(Row(m, n, e), int(c)) for m, n, e, c in session.execute(query)]


# --- moderation --------------------------------------------------------------------------------


def waiting(session: Session, limit: int = 200) -> list[Row]:
    """Held and reported messages, oldest first: the moderation queue."""
    query = (
        _with_author()
        .where(BoardMessage.status.in_(WAITING))
        .order_by(BoardMessage.created_at, BoardMessage.id)
        .limit(limit)
    )
    return _rows(session.execute(query).all())


def reports(session: Session, message_ids: Collection[int]) -> dict[int, list[tuple[str, str]]]:
    """Each message's reports: (reporter's address, reason), oldest first."""
    out: dict[int, list[tuple[str, str]]] = {m: [] for m in message_ids}
    if message_ids:
        rows = session.execute(
            select(BoardReport.message_id, Member.email, BoardReport.reason)
            .join(Member, Member.id == BoardReport.member_id)
            .where(BoardReport.message_id.in_(message_ids))
            .order_by(BoardReport.at)
        )
        for message_id, email, reason in rows:
            out[message_id].append((email, reason))
    return out


def has_reported(session: Session, message_id: int, member_id: int) -> bool:
    return session.get(BoardReport, (message_id, member_id)) is not None


def add_report(session: Session, report: BoardReport) -> int:
    """Store a report; how many members have reported the message now."""
    session.add(report)
    session.flush()
    return (
        session.scalar(
            select(func.count())
            .select_from(BoardReport)
            .where(BoardReport.message_id == report.message_id)
        )
        or 0
    )


def clear_reports(session: Session, message_id: int) -> int:
    """An editor looked at the message: its reports are settled. How many there were."""
    result = session.execute(delete(BoardReport).where(BoardReport.message_id == message_id))
    return int(getattr(result, "rowcount", 0) or 0)


def blocked(session: Session, now: dt.datetime) -> list[tuple[BoardMember, str, str]]:
    """Members blocked from posting now: (standing, name, address)."""
    rows = session.execute(
        select(BoardMember, Member.name, Member.email)
        .join(Member, Member.id == BoardMember.member_id)
        .where(
            BoardMember.blocked_at.is_not(None),
            (BoardMember.blocked_until.is_(None)) | (BoardMember.blocked_until > now),
        )
        .order_by(BoardMember.blocked_at.desc())
    )
    return list(rows)


# --- a member's standing and counts, loaded for a batch at once ---------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """A member as the board's checks read them: plain values, no ORM object (loading a batch
    of those costs more than everything else the check does)."""

    member_id: int
    name: str
    status: MemberStatus
    generation: int
    blocked_at: dt.datetime | None
    blocked_until: dt.datetime | None
    block_reason: str
    notices: bool
    language: str | None = None  # the member's own choice (None: the list's)


_PEOPLE = (
    select(
        Member.id,
        Member.name,
        Member.status,
        BoardMember.generation,
        BoardMember.blocked_at,
        BoardMember.blocked_until,
        BoardMember.block_reason,
        BoardMember.notices,
        Member.language,
    )
    .outerjoin(BoardMember, BoardMember.member_id == Member.id)
    .where(Member.id.in_(bindparam("ids", expanding=True)))
)


def load_people(session: Session, member_ids: set[int]) -> None:
    """Members and their standing, one query for a batch; for reads only (a use-case that
    changes a member's standing uses `ensure_standing`, in a transaction of its own)."""
    known: dict[int, Person | None] = session.info.setdefault("board_people", {})
    wanted = [m for m in member_ids if m not in known]
    if wanted:
        for row in session.execute(_PEOPLE, {"ids": wanted}):
            known[row[0]] = Person(
                row[0],
                row[1],
                row[2],
                row[3] or 0,
                row[4],
                row[5],
                row[6] or "",
                True if row[7] is None else bool(row[7]),
                row[8],
            )
        for member_id in wanted:
            known.setdefault(member_id, None)


def person(session: Session, member_id: int) -> Person | None:
    load_people(session, {member_id})
    found: Person | None = session.info["board_people"][member_id]
    return found


_STANDING = select(BoardMember).where(BoardMember.member_id.in_(bindparam("ids", expanding=True)))


def load_standing(session: Session, member_ids: set[int]) -> None:
    """Members' standing rows in one query; members without one are remembered as such."""
    known: dict[int, BoardMember | None] = session.info.setdefault("board_standing", {})
    wanted = [m for m in member_ids if m not in known]
    if wanted:
        found = {b.member_id: b for b in session.scalars(_STANDING, {"ids": wanted})}
        for member_id in wanted:
            known[member_id] = found.get(member_id)


def standing(session: Session, member_id: int) -> BoardMember | None:
    load_standing(session, {member_id})
    found: BoardMember | None = session.info["board_standing"][member_id]
    return found


def ensure_standing(session: Session, member_id: int) -> BoardMember:
    found = standing(session, member_id)
    if found is None:
        found = BoardMember(member_id=member_id, generation=0, block_reason="", notices=True)
        session.add(found)
        session.info["board_standing"][member_id] = found
    return found


def load_counts(session: Session, member_ids: set[int], ips: set[str], since: dt.datetime) -> None:
    """For a batch of posts: each member's posts since `since` and messages ever approved, and
    each address's posts since `since`, in two queries."""
    info = session.info
    if info.get("board_since") != since:
        info["board_since"], info["board_members"], info["board_ips"] = since, {}, {}
    members: dict[int, list[int]] = info["board_members"]
    ips_known: dict[str, int] = info["board_ips"]
    wanted = [m for m in member_ids if m not in members]
    if wanted:
        recent = func.sum(case((BoardMessage.created_at >= since, 1), else_=0))
        approved = func.sum(case((BoardMessage.approved_at.is_not(None), 1), else_=0))
        rows = session.execute(
            select(BoardMessage.member_id, recent, approved)
            .where(BoardMessage.member_id.in_(wanted))
            .group_by(BoardMessage.member_id)
        )
        counted = {int(m): [int(r or 0), int(a or 0)] for m, r, a in rows}
        for member_id in wanted:
            members[member_id] = counted.get(member_id, [0, 0])
    wanted_ips = [ip for ip in ips if ip not in ips_known]
    if wanted_ips:
        rows_ip = session.execute(
            select(BoardMessage.ip, func.count())
            .where(BoardMessage.ip.in_(wanted_ips), BoardMessage.created_at >= since)
            .group_by(BoardMessage.ip)
        )
        counted_ip = {str(ip): int(n) for ip, n in rows_ip}
        for ip in wanted_ips:
            ips_known[ip] = counted_ip.get(ip, 0)


def counts(session: Session, member_id: int, ip: str, since: dt.datetime) -> tuple[int, int, int]:
    """(the member's posts since, their messages ever approved, the address's posts since),
    including what this transaction has posted so far (see `counted`)."""
    load_counts(session, {member_id}, {ip}, since)
    recent, approved = session.info["board_members"][member_id]
    return recent, approved, session.info["board_ips"][ip]


def counted(session: Session, member_id: int, ip: str, *, approved: bool) -> None:
    """A post staged in this transaction counts towards the limits of the posts after it."""
    entry = session.info["board_members"][member_id]
    entry[0] += 1
    entry[1] += int(approved)
    session.info["board_ips"][ip] += 1
