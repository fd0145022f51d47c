"""The member list as publishers keep it: pages of members with counts, one member added,
edited or unsubscribed on request, and the list exported as CSV (erasure: erasure.py)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from newsletter.content.addresses import clean_name, normalize_address
from newsletter.content.roster import EXPORT_COLUMNS, OPT_OUTS, check_attributes, write_csv
from newsletter.errors import NewsletterError
from newsletter.services import erasure
from newsletter.services.erasure import Conflict, NoSuchMember, check_reason
from newsletter.services.unit import Permission, Unit, requires, use_case
from newsletter.storage import members as rows
from newsletter.storage.models import Member, MemberStatus

__all__ = ["Conflict", "NoSuchMember"]

PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class MemberDetail:
    id: int
    email: str
    name: str
    status: MemberStatus
    attributes: dict[str, str]
    created_at: dt.datetime
    updated_at: dt.datetime
    unsubscribed_at: dt.datetime | None
    bounce_count: int
    bounce_score: float = 0.0  # as stored (services/bounces.py shows it lapsed when it has)
    left_reason: str = ""  # why what came back made them leave ("complaint", a DSN's status)

    @classmethod
    def of(cls, m: Member) -> MemberDetail:
        return cls(
            m.id,
            m.email,
            m.name,
            m.status,
            dict(m.attributes or {}),
            m.created_at,
            m.updated_at,
            m.unsubscribed_at,
            m.bounce_count,
            m.bounce_score or 0.0,
            m.left_reason,
        )


@dataclass(frozen=True, slots=True)
class MemberPage:
    """One page of the members matching a search, with the counts by status of all."""

    members: list[MemberDetail]
    total: int  # matching the search and status
    page: int
    pages: int
    counts: dict[MemberStatus, int] = field(default_factory=dict)
    q: str = ""
    status: MemberStatus | None = None


def overview(
    unit: Unit,
    q: str = "",
    status: MemberStatus | None = None,
    page: int = 1,
    size: int = PAGE_SIZE,
) -> MemberPage:
    """Members whose address or name contains `q` (of one status), by address, a page at a
    time; erased members only when their status is asked for (they have nothing to show)."""
    q, size = q.strip()[:200], max(1, min(size, 1000))
    page = max(1, min(page, 10**6))
    found, total = rows.page(unit.session, q, status, size, (page - 1) * size)
    return MemberPage(
        [MemberDetail.of(m) for m in found],
        total,
        page,
        max(1, math.ceil(total / size)),
        rows.counts(unit.session),
        q,
        status,
    )


def _member(unit: Unit, member_id: int) -> Member:
    member = rows.get_any(unit.session, member_id)
    if member is None:
        raise NoSuchMember(f"there is no member #{member_id}")
    return member


def _live(unit: Unit, member_id: int) -> Member:
    member = _member(unit, member_id)
    if member.status == MemberStatus.ERASED:
        raise Conflict(f"member #{member_id} was erased: nothing of them is left to change")
    return member


def detail(unit: Unit, member_id: int) -> MemberDetail:
    return MemberDetail.of(_member(unit, member_id))


def find(unit: Unit, ref: str) -> int:
    """A member's number from their number or address (as typed on a command line)."""
    ref = ref.strip()
    if ref.isdigit() and len(ref) < 12:
        return _member(unit, int(ref)).id
    try:
        address = normalize_address(ref)
    except ValueError as exc:
        raise NoSuchMember(f"{ref!r} is neither a member's number nor an address: {exc}") from None
    member = rows.by_email(unit.session, address)
    if member is None:
        raise NoSuchMember(f"no member has the address {address}")
    return member.id


def _check_name(name: str) -> str:
    try:
        return clean_name(name)
    except ValueError as exc:
        raise NewsletterError(f"name: {exc}") from None


@use_case
@requires(Permission.MEMBERS)
def add_member(
    unit: Unit, email: str, name: str = "", attributes: Mapping[str, str] | None = None
) -> MemberDetail:
    """Add one member by hand, active: the publisher vouches that they asked. Refused for an
    address already a member's, and for one erased (the suppression list)."""
    try:
        address = normalize_address(email)
    except ValueError as exc:
        raise NewsletterError(f"email: {exc}") from None
    clean = _check_name(name)
    values = check_attributes(dict(attributes or {}))
    existing = rows.by_email(unit.session, address)
    if existing is not None:
        raise Conflict(f"{address} is already a member (#{existing.id}, {existing.status})")
    if erasure.suppressed(unit, [address]):
        raise Conflict(
            f"{address} was erased at the member's request: it is on the suppression list "
            "and cannot be added again"
        )
    member = rows.add(
        unit.session,
        Member(
            email=address,
            name=clean,
            status=MemberStatus.ACTIVE,
            attributes=values,
            created_at=unit.now,
            updated_at=unit.now,
        ),
    )
    unit.audit("add-member", member_id=member.id, detail=f"{address} added by hand")
    unit.after_commit(lambda: unit.services.changed("members"))
    return MemberDetail.of(member)


@use_case
@requires(Permission.MEMBERS)
def edit_member(
    unit: Unit,
    member_id: int,
    *,
    name: str | None = None,
    attributes: Mapping[str, str] | None = None,
) -> MemberDetail:
    """Change a member's name and attributes (`attributes` replaces them all); what is None
    stays. Nothing changed: nothing written."""
    member = _live(unit, member_id)
    changes = []
    if name is not None and (clean := _check_name(name)) != member.name:
        member.name = clean
        changes.append("name changed")
    if attributes is not None:
        values = check_attributes(dict(attributes))
        old = member.attributes or {}
        if values != old:
            member.attributes = values
            changed = sorted(k for k in values if old.get(k) != values[k])
            removed = sorted(set(old) - set(values))
            if changed:
                changes.append("attributes set: " + ", ".join(changed))
            if removed:
                changes.append("attributes removed: " + ", ".join(removed))
    if changes:
        member.updated_at = unit.now
        # Attribute names, never their values: the log is read by every editor.
        unit.audit(
            "edit-member",
            member_id=member.id,
            detail=f"{member.email}: " + "; ".join(changes)[:1800],
        )
    return MemberDetail.of(member)


@use_case
@requires(Permission.MEMBERS)
def unsubscribe_member(unit: Unit, member_id: int, *, reason: str) -> MemberDetail:
    """Unsubscribe a member who asked an editor to (by mail, by phone): no mail goes to them
    from now on, not even from a send already under way; the reason is audited."""
    why = check_reason(reason)
    member = _live(unit, member_id)
    if member.status in OPT_OUTS:
        raise Conflict(f"{member.email} is {member.status} already: no mail goes to them")
    now = unit.now
    member.status, member.unsubscribed_at, member.updated_at = MemberStatus.UNSUBSCRIBED, now, now
    stopped = rows.skip_unsent(unit.session, member.id, now, "unsubscribed by an editor")
    unit.audit(
        "unsubscribe-member",
        member_id=member.id,
        detail=f"{member.email} unsubscribed on request ({why}); {stopped} unsent messages stopped",
    )
    unit.after_commit(lambda: unit.services.changed("members"))
    return MemberDetail.of(member)


@dataclass(frozen=True, slots=True)
class Export:
    text: str
    members: int


@use_case
@requires(Permission.MEMBERS)
def export_members(unit: Unit, status: MemberStatus | None = None) -> Export:
    """Every member (of one status) as CSV: email, name, status, created_at, unsubscribed_at,
    then one column per attribute; cells a spreadsheet would run as formulas are made safe.
    The same text on the desk, the API and the CLI; `subscribers import` reads it back."""
    found = list(rows.every(unit.session, status))
    keys = sorted({k for m in found for k in (m.attributes or {})})
    lines = (
        [
            m.email,
            m.name,
            str(m.status),
            m.created_at.isoformat(timespec="seconds"),
            m.unsubscribed_at.isoformat(timespec="seconds") if m.unsubscribed_at else "",
            *((m.attributes or {}).get(k, "") for k in keys),
        ]
        for m in found
    )
    # An attribute named like a column of ours gets a header of its own: a header may not repeat.
    header = [*EXPORT_COLUMNS, *(f"attribute {k}" if k in EXPORT_COLUMNS else k for k in keys)]
    text = write_csv(lines, header)
    unit.audit(
        "export-members",
        detail=f"{len(found)} members" + (f" ({status})" if status else "") + " exported as CSV",
    )
    return Export(text, len(found))
