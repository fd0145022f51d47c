"""Member use-cases: import a list, subscribe (double opt-in), confirm, unsubscribe, resubscribe.

An import never re-subscribes a member who unsubscribed, bounced or complained, and an
unsubscribe stops the member's rows in sends already released, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from newsletter.content.addresses import clean_name, normalize_address
from newsletter.content.mapping import Layout, choose
from newsletter.content.roster import (
    ImportReport,
    Row,
    decode,
    layout_of,
    merge_duplicates,
    read_rows,
)
from newsletter.content.roster import preview as roster_preview
from newsletter.content.variants import member_key, sections_text
from newsletter.errors import NewsletterError
from newsletter.services import mail
from newsletter.services.erasure import suppressed
from newsletter.services.unit import Permission, Services, Unit, prefetch, requires, use_case
from newsletter.storage import members as rows
from newsletter.storage import signups
from newsletter.storage.models import Member, MemberStatus

__all__ = [
    "ImportReport",
    "MemberInfo",
    "clean_name",
    "confirm",
    "import_file",
    "import_members",
    "normalize_address",
    "resubscribe",
    "subscribe",
    "unsubscribe",
]

# Sign-ups: at most this many from one network address an hour, and this many confirmation
# messages to one address a day, at least an hour apart.
SIGNUPS_PER_IP_HOUR = 10
MAILS_PER_ADDRESS_DAY = 3
MAIL_SPACING = dt.timedelta(hours=1)
# Members who may never be mailed again by anything but their own action.
OPTED_OUT = (MemberStatus.UNSUBSCRIBED, MemberStatus.BOUNCED)


@dataclass(frozen=True, slots=True)
class MemberInfo:
    id: int
    email: str
    name: str
    status: MemberStatus
    created_at: dt.datetime
    bounce_score: float = 0.0  # as stored (services/bounces.py shows it lapsed when it has)
    left_reason: str = ""

    @classmethod
    def of(cls, m: Member) -> MemberInfo:
        return cls(
            m.id, m.email, m.name, m.status, m.created_at, m.bounce_score or 0.0, m.left_reason
        )


# --- import ----------------------------------------------------------------------------------


def read_list(path: Path) -> bytes:
    """A member list's bytes (decoded line by line by the import); NewsletterError naming the
    file when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NewsletterError(f"{path}: no such file") from None
    except OSError as exc:
        raise NewsletterError(f"{path}: {exc.strerror}") from None


def _text(data: str | bytes) -> tuple[str, dict[int, str]]:
    return decode(data) if isinstance(data, bytes) else (data.removeprefix("\ufeff"), {})


@dataclass(frozen=True, slots=True)
class Preview:
    """What the mapping step shows: the layout proposed (or chosen) and the first rows."""

    layout: Layout
    rows: list[list[str]]
    lines: int  # rows after the header (lines not blank)


def preview(data: str | bytes, overrides: Mapping[str, str] | None = None) -> Preview:
    """The proposed layout of a member list and its first rows; nothing is stored (plain
    work, no database: a door runs it with Gateway.offload)."""
    text, bad = _text(data)
    layout = layout_of(text, bad)
    if overrides:
        layout = choose(layout, overrides)
    lines = sum(1 for line in text.splitlines()[layout.header_line :] if line.strip())
    return Preview(layout, roster_preview(text, layout), lines + len(bad))


@use_case
@requires(Permission.MEMBERS)
def import_members(
    unit: Unit,
    data: str | bytes,
    *,
    source: str,
    overrides: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    chunk: int = 500,
) -> ImportReport:
    """Import a member list (CSV text or bytes, its layout detected, changed by `overrides`:
    column name → field). Good rows are stored even when others are bad; an address erased
    before is refused by its row."""
    report = ImportReport()
    text, bad = _text(data)
    layout = layout_of(text, bad)
    if overrides:
        layout = choose(layout, overrides)
    parsed = list(merge_duplicates(read_rows(text, report, layout, bad), report).values())
    for start in range(0, len(parsed), chunk):
        part = parsed[start : start + chunk]
        existing = rows.by_emails(unit.session, [r.email for r in part])
        erased = suppressed(unit, [r.email for r in part if r.email not in existing])
        for row in part:
            if row.email in erased:
                report.suppressed += 1
                report.refuse(row.line, f"{row.email} {ERASED_ADDRESS}")
                continue
            _apply(unit, existing.get(row.email), row, report)
        unit.session.flush()
        if progress:
            progress(len(part))
    report.errors.sort(key=lambda e: e.line)
    unit.audit(
        "import-members",
        detail=f"{source[:200]} ({layout.source}, {layout.delimiter_name}-separated): "
        f"{report.rows} rows, {report.added} added, {report.updated} updated, "
        f"{len(report.errors)} errors ({report.suppressed} erased addresses refused)",
    )
    if report.added or report.updated:
        unit.after_commit(lambda: unit.services.changed("members"))
    return report


ERASED_ADDRESS = (
    "was erased at the member's request: it is on the suppression list and cannot be added again"
)


def import_file(
    services: Services,
    path: Path,
    *,
    actor: str = "system",
    overrides: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Read a CSV file and import it (the CLI's and the demo's way in)."""
    return services.run(
        actor,
        import_members,
        read_list(path),
        source=str(path),
        overrides=overrides,
        progress=progress,
    )


def _apply(unit: Unit, member: Member | None, row: Row, report: ImportReport) -> None:
    now = unit.now
    if member is None:
        # A new member's first choices come from the list; later imports never overwrite
        # what a member chose on their preference page.
        unit.session.add(
            Member(
                email=row.email,
                name=row.name,
                status=row.status,
                attributes=row.attributes,
                unsubscribed_at=now if row.status in OPTED_OUT else None,
                created_at=now,
                updated_at=now,
                language=row.language,
                sections=sections_text(row.sections),
                variant_key=member_key(row.language, row.sections, True),
            )
        )
        report.added += 1
        if row.status in OPTED_OUT:
            report.unsubscribed += 1
        return
    changed = False
    if row.name and row.name != member.name:
        member.name = row.name
        changed = True
    if row.attributes and {**member.attributes, **row.attributes} != member.attributes:
        member.attributes = {**member.attributes, **row.attributes}
        changed = True
    if member.status in OPTED_OUT:
        # An import never re-subscribes: only the member can undo an opt-out.
        if row.status in (MemberStatus.ACTIVE, MemberStatus.PENDING):
            report.kept_unsubscribed += 1
    elif row.status in OPTED_OUT:
        member.status = row.status
        member.unsubscribed_at = now
        rows.skip_unsent(unit.session, member.id, now, f"member {row.status} (import)")
        report.unsubscribed += 1
        changed = True
    if changed:
        report.updated += 1
    else:
        report.unchanged += 1


# --- the member's own actions ------------------------------------------------------------------


@use_case
def unsubscribe(unit: Unit, member_id: int, *, issue_id: int | None = None, via: str) -> bool:
    """Stop all mail to the member at once, including rows of sends already released.
    False when the member had already left (nothing changes then)."""
    member = rows.get(unit.session, member_id)
    # A bounced address stays bounced (resubscribing must not revive it); it gets no mail.
    if member is None or member.status in OPTED_OUT:
        return False
    now = unit.now
    member.status, member.unsubscribed_at, member.updated_at = MemberStatus.UNSUBSCRIBED, now, now
    skipped = rows.skip_unsent(unit.session, member.id, now, "member unsubscribed")
    unit.audit(
        "unsubscribe",
        member_id=member.id,
        issue_id=issue_id,
        detail=f"{via}; {skipped} unsent messages stopped",
    )
    unit.after_commit(lambda: unit.services.changed("members"))
    return True


@use_case
def resubscribe(unit: Unit, member_id: int, *, via: str) -> bool:
    """Undo the member's own unsubscribe (a bounced address stays bounced)."""
    member = rows.get(unit.session, member_id)
    if member is None or member.status != MemberStatus.UNSUBSCRIBED:
        return False
    member.status, member.unsubscribed_at, member.updated_at = MemberStatus.ACTIVE, None, unit.now
    unit.audit("resubscribe", member_id=member.id, detail=via)
    return True


@use_case
def confirm(unit: Unit, member_id: int) -> bool:
    """Double opt-in: the person confirmed the address, so it may be mailed. False when the
    member is active already; NewsletterError when the address may not be subscribed."""
    member = rows.get(unit.session, member_id)
    if member is None or member.status == MemberStatus.BOUNCED:
        raise NewsletterError("this address cannot be subscribed")
    if member.status not in (MemberStatus.PENDING, MemberStatus.UNSUBSCRIBED):
        return False
    member.status, member.unsubscribed_at, member.updated_at = MemberStatus.ACTIVE, None, unit.now
    unit.audit("confirm", member_id=member.id, detail="double opt-in confirmed")
    return True


@dataclass(frozen=True, slots=True)
class Signup:
    """What a subscribe did; the page says the same whatever it was (it reveals no membership)."""

    limited: bool  # too many sign-ups from this network: nothing was stored
    mail_id: int | None  # the confirmation queued, if one was


@use_case
def subscribe(unit: Unit, email: str, name: str, *, ip: str) -> Signup:
    """A sign-up from the form: store the request and, when the address wants it and the
    limits allow, queue a confirmation (sent by the mailer, retried through relay outages)."""
    now, session = unit.now, unit.session
    if signups.from_ip_since(session, ip, now - dt.timedelta(hours=1)) >= SIGNUPS_PER_IP_HOUR:
        return Signup(True, None)
    member = rows.by_email(session, email)
    if member is None and suppressed(unit, [email]):
        # An erased address: nothing of it is stored again, not even this request (the page
        # says what it always says, so it reveals nothing).
        unit.audit("subscribe", detail="refused: an erased address (suppression list)")
        return Signup(False, None)
    if member is None:
        member = rows.add(
            session,
            Member(
                email=email, name=name, status=MemberStatus.PENDING, attributes={"source": "web"}
            ),
        )
    request = signups.add(session, email, ip, now)
    queued, newest = signups.confirmations_since(session, email, now - dt.timedelta(days=1))
    wants_mail = member.status in (MemberStatus.PENDING, MemberStatus.UNSUBSCRIBED)
    too_soon = newest is not None and now - newest < MAIL_SPACING
    mail_id = None
    if wants_mail and not too_soon and queued < MAILS_PER_ADDRESS_DAY:
        mail_id = mail.queue_confirmation(unit, member, signup_id=request.id)
    unit.audit(
        "subscribe",
        member_id=member.id,
        detail=f"from {ip or '?'}; " + ("confirmation queued" if mail_id else "no mail sent"),
    )
    return Signup(False, mail_id)


@dataclass(frozen=True, slots=True)
class UnsubscribePage:
    """What the unsubscribe page shows after a visit or a form."""

    email: str
    status: MemberStatus
    done: str  # "unsubscribe", "resubscribe" or "" (nothing changed)
    ask_again: bool  # scanner signs around: the person must press once more


def _load_links(session: Session, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
    rows.load(session, {args[0] for args, _ in calls})


@use_case
@prefetch(_load_links)
def unsubscribe_link(
    unit: Unit,
    member_id: int,
    issue_id: int,
    *,
    method: str,
    action: str = "",
    confirmed: bool = False,
    one_click: bool = False,
    ip: str = "",
    user_agent: str = "",
) -> UnsubscribePage | None:
    """A visit to a member's unsubscribe link: GET or HEAD shows the page and records the hit;
    the page's form (POST) unsubscribes or resubscribes; RFC 8058's one-click POST
    unsubscribes at once. A form posted with scanner signs around it (a HEAD, the hidden
    link) asks once more. None when the link names no member (nothing recorded)."""
    from newsletter.services import evidence

    visitor = evidence.visit(
        unit,
        member_id,
        kind="unsubscribe",
        method=method,
        issue_id=issue_id,
        ip=ip,
        user_agent=user_agent,
    )
    if visitor is None:
        return None
    done = ""
    if one_click:
        unsubscribe(unit, member_id, issue_id=issue_id, via="one-click POST (RFC 8058)")
        done = "unsubscribe"
    elif action == "resubscribe":
        resubscribe(unit, member_id, via="the unsubscribe page")
        done = "resubscribe"
    elif action == "unsubscribe":
        if not confirmed and evidence.machine_nearby(unit, member_id):
            return UnsubscribePage(visitor.email, visitor.status, "", True)
        unsubscribe(unit, member_id, issue_id=issue_id, via="the unsubscribe page")
        done = "unsubscribe"
    member = rows.get(unit.session, member_id)
    assert member is not None
    return UnsubscribePage(member.email, member.status, done, False)


# --- reading ---------------------------------------------------------------------------------


def listing(unit: Unit, status: MemberStatus | None = None, limit: int = 50) -> list[MemberInfo]:
    return [MemberInfo.of(m) for m in rows.listing(unit.session, status, limit)]


def active_count(unit: Unit) -> int:
    """How many members the next issue would reach."""
    return rows.counts(unit.session).get(MemberStatus.ACTIVE, 0)


def counts(unit: Unit) -> dict[MemberStatus, int]:
    return rows.counts(unit.session)
