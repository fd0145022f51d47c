"""A member's own choices: sections, language, the survey, a pause, a change of address, leaving.

Each use-case takes the member's id, whichever door established it (a signed link from an
issue today, a signed-in session later). Nothing here runs on a plain GET: the preference
page's form posts, and a change of address is made only when the new address confirms it
from the page its mail links to.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Collection
from dataclasses import dataclass

from newsletter import i18n
from newsletter.content.addresses import normalize_address
from newsletter.content.variants import member_key, read_sections, sections_text
from newsletter.errors import NewsletterError
from newsletter.i18n import N_
from newsletter.services import evidence, mail, members
from newsletter.services.unit import Unit, use_case
from newsletter.storage import mail as mail_rows
from newsletter.storage import members as rows
from newsletter.storage.models import Member, MemberStatus

PAUSE_WEEKS = (2, 4, 8)
ADDRESS = "address"  # the system mail kind of a change-of-address confirmation
# A confirmation link for a new address works this long; a member asks for at most this many
# a day (each goes to an address the link's holder typed: no one is mailed without limit).
ADDRESS_DAYS = 2
ADDRESS_MAILS_PER_DAY = 3


class PreferenceError(NewsletterError, ValueError):
    """A choice the form cannot make (an unknown section or language, no section at all).
    `message` is a catalog's message id, so the page says it in the member's language."""

    def __init__(self, message: str, **values: object) -> None:
        self.message, self.values = message, values
        super().__init__(message % values if values else message)

    def said_in(self, language: str) -> str:
        return i18n.gettext(language, self.message, **self.values)


@dataclass(frozen=True, slots=True)
class Preferences:
    """What the preference page shows: the member's choices and what they may choose from."""

    member_id: int
    email: str
    name: str
    status: MemberStatus
    language: str  # the language mail and pages use (the list's when none was chosen)
    sections: frozenset[str] | None  # None: every section, new ones included
    survey: bool
    paused_until: dt.datetime | None
    new_email: str | None  # a change of address waiting for the new address to confirm
    choices: tuple[str, ...]  # the sections one may choose (issue.sections)
    languages: tuple[tuple[str, str], ...]  # (code, the language's own name)
    done: str = ""  # what the last form did: saved, paused, resumed, address, unsubscribe, ...

    def receives(self, section: str) -> bool:
        return self.sections is None or section in self.sections

    def paused(self, now: dt.datetime) -> bool:
        return self.paused_until is not None and self.paused_until > now


def language_of(unit: Unit, member: Member) -> str:
    """The language a member's mail and pages are in."""
    chosen = member.language
    return chosen if chosen in i18n.languages() else unit.settings.list.language


def _view(unit: Unit, member: Member, done: str = "") -> Preferences:
    # Members choose among the sections issue.sections lists; items of other sections go to
    # everyone (content/variants.effective).
    ordered = list(dict.fromkeys(unit.settings.issue.sections))
    return Preferences(
        member_id=member.id,
        email=member.email,
        name=member.name,
        status=member.status,
        language=language_of(unit, member),
        sections=read_sections(member.sections),
        survey=member.survey,
        paused_until=member.paused_until,
        new_email=member.new_email,
        choices=tuple(ordered),
        languages=tuple((code, i18n.label(code)) for code in i18n.languages()),
        done=done,
    )


def _member(unit: Unit, member_id: int) -> Member | None:
    return rows.get(unit.session, member_id)


def show(unit: Unit, member_id: int) -> Preferences | None:
    """The member's preferences; None when there is no such member. Changes nothing."""
    member = _member(unit, member_id)
    return None if member is None else _view(unit, member)


def visit(
    unit: Unit,
    member_id: int,
    issue_id: int,
    *,
    method: str,
    ip: str = "",
    user_agent: str = "",
) -> Preferences | None:
    """A fetch of the preference link (GET or HEAD): recorded as evidence like any member's
    link (evidence.visit: a hit, no audit entry), and the page's content; no preference
    changes."""
    visitor = evidence.visit(
        unit,
        member_id,
        kind="preferences",
        method=method,
        issue_id=issue_id or None,
        ip=ip,
        user_agent=user_agent,
    )
    return None if visitor is None else show(unit, member_id)


def _require(unit: Unit, member_id: int) -> Member:
    member = _member(unit, member_id)
    if member is None:
        raise PreferenceError(N_("the link names a member that does not exist"))
    return member


@use_case
def save(
    unit: Unit,
    member_id: int,
    *,
    sections: Collection[str] | None,
    language: str,
    survey: bool,
) -> Preferences:
    """Keep the member's sections (None or every one offered: all, new ones included), language
    and survey choice; the next issue follows them."""
    member = _require(unit, member_id)
    offered = _view(unit, member).choices
    code = i18n.normalize(language)
    if code is None:
        raise PreferenceError(N_("we have no language %(code)s"), code=repr(language[:40]))
    chosen = None if sections is None or not offered else sorted(set(sections))
    if chosen is not None:
        unknown = [s for s in chosen if s not in offered]
        if unknown:
            raise PreferenceError(N_("there is no section %(name)s"), name=repr(unknown[0][:200]))
        if not chosen:
            raise PreferenceError(N_("choose at least one section, or unsubscribe"))
        if set(chosen) == set(offered):
            chosen = None
    member.language, member.sections, member.survey = code, sections_text(chosen), survey
    member.variant_key = member_key(code, chosen, survey)
    unit.session.flush()
    picked = "every section" if chosen is None else ", ".join(chosen)
    unit.audit(
        "preferences",
        member_id=member_id,
        detail=f"{picked}; language {code}; survey {'on' if survey else 'off'}"[:2000],
    )
    return _view(unit, member, "saved")


@use_case
def pause(unit: Unit, member_id: int, weeks: int) -> Preferences:
    """Send the member nothing for 2, 4 or 8 weeks (0 ends a pause now). Rows of an issue
    already going out that have not reached them are skipped, as for someone who leaves."""
    member = _require(unit, member_id)
    if weeks and weeks not in PAUSE_WEEKS:
        raise PreferenceError(N_("a pause lasts 2, 4 or 8 weeks, not %(weeks)s"), weeks=weeks)
    if weeks:
        member.paused_until = unit.now + dt.timedelta(weeks=weeks)
        rows.skip_unsent(unit.session, member_id, unit.now, "paused by the member")
        detail = f"paused for {weeks} weeks, until {member.paused_until:%Y-%m-%d %H:%M} UTC"
    else:
        member.paused_until = None
        detail = "pause ended"
    unit.session.flush()
    unit.audit("pause-member", member_id=member_id, detail=detail)
    return _view(unit, member, "paused" if weeks else "resumed")


@use_case
def change_address(unit: Unit, member_id: int, new_address: str) -> Preferences:
    """Ask to move the member to a new address: a confirmation goes to the new address, and
    nothing changes until it is confirmed there. A newer request replaces an older one."""
    member = _require(unit, member_id)
    try:
        address = normalize_address(new_address)
    except ValueError as exc:
        raise PreferenceError(
            N_("%(address)s is not an address we can send to: %(reason)s"),
            address=repr(new_address[:320]),
            reason=str(exc),
        ) from None
    if address == member.email:
        raise PreferenceError(N_("that is the address the list already uses"))
    since = unit.now - dt.timedelta(days=1)
    if mail_rows.count_for_member(unit.session, member_id, ADDRESS, since) >= ADDRESS_MAILS_PER_DAY:
        raise PreferenceError(N_("too many changes of address today; try again tomorrow"))
    member.new_email = address
    member.new_email_nonce = secrets.randbelow(2**31 - 1) + 1
    member.new_email_at = unit.now
    unit.session.flush()
    _queue_address_mail(unit, member)
    unit.audit("change-address-asked", member_id=member_id, detail=f"to {address}")
    return _view(unit, member, "address")


def _queue_address_mail(unit: Unit, member: Member) -> None:
    """The confirmation sent to the new address, in the member's language, made as every
    system message is (mail.queue_system_mail)."""
    settings, language = unit.settings, language_of(unit, member)
    assert member.new_email is not None
    assert member.new_email_nonce is not None
    list_name = settings.list.name_in(language)
    mail.queue_system_mail(
        unit,
        kind=ADDRESS,
        template="address",
        subject=i18n.gettext(language, N_("Confirm your new address for %(list)s"), list=list_name),
        to_address=member.new_email,
        to_name=member.name,
        context={
            "name": member.name,
            "old": member.email,
            "new": member.new_email,
            "link": unit.services.links.address(member.id, member.new_email_nonce),
            "days": ADDRESS_DAYS,
        },
        language=language,
        member_id=member.id,
    )


@dataclass(frozen=True, slots=True)
class AddressChange:
    """A change of address as its confirmation page shows it."""

    member_id: int
    old: str
    new: str
    language: str
    state: str  # "waiting" (not confirmed yet), "done", "stale" (replaced or not asked), "taken"


def _pending(unit: Unit, member_id: int, nonce: int) -> tuple[Member | None, AddressChange]:
    member = _member(unit, member_id)
    if member is None:
        return None, AddressChange(member_id, "", "", unit.settings.list.language, "stale")
    language = language_of(unit, member)
    if member.new_email is None or member.new_email_nonce != nonce:
        return None, AddressChange(member_id, member.email, "", language, "stale")
    return member, AddressChange(member_id, member.email, member.new_email, language, "waiting")


def address_change(unit: Unit, member_id: int, nonce: int) -> AddressChange:
    """The change a confirmation link stands for; changes nothing."""
    return _pending(unit, member_id, nonce)[1]


@use_case
def confirm_address(unit: Unit, member_id: int, nonce: int) -> AddressChange:
    """The new address confirms: from now on the member's mail goes there, and none to the old
    one (rows of an issue still going out are sent to the new address too)."""
    member, change = _pending(unit, member_id, nonce)
    if member is None:
        return change
    if rows.by_email(unit.session, change.new) is not None:
        member.new_email = member.new_email_nonce = member.new_email_at = None
        unit.audit("change-address-refused", member_id=member_id, detail=f"{change.new} is taken")
        return AddressChange(member_id, change.old, change.new, change.language, "taken")
    member.email = change.new
    member.new_email = member.new_email_nonce = member.new_email_at = None
    unit.session.flush()
    unit.audit("change-address", member_id=member_id, detail=f"{change.old} → {change.new}")
    unit.after_commit(lambda: unit.services.changed("members"))
    return AddressChange(member_id, change.old, change.new, change.language, "done")


@use_case
def leave(unit: Unit, member_id: int, *, confirmed: bool) -> Preferences:
    """Unsubscribe from the preference page. A form posted with scanner signs around it (a
    HEAD, the hidden link) asks once more, as the unsubscribe page does."""
    member = _require(unit, member_id)
    if not confirmed and evidence.machine_nearby(unit, member_id):
        return _view(unit, member, "confirm-unsubscribe")
    members.unsubscribe(unit, member_id, via="the preference page")
    return _view(unit, member, "unsubscribe")
