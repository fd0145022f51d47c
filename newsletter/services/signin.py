"""Members sign in by a link sent by email: asking for one, the page it opens, the button's POST.

A sign-in link works once and for board.signin_minutes (its row in board_signins); the board
link every issue carries works for board.issue_link_days, as often as its member likes. Both
open a page with a "Sign in" button, and only its POST signs in: mail scanners fetch every
link, and some run the page's script, so a GET never signs anyone in. A POST made with the
marks of a scanner around it (a HEAD of the member's links within the vote window) and
without the page's sign of a person asks once more, as unsubscribing does. Only active
members who are not blocked sign in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from newsletter.i18n import N_, Said
from newsletter.services import evidence, notices
from newsletter.services.board import blocked
from newsletter.services.preferences import language_of
from newsletter.services.unit import Unit, use_case
from newsletter.storage import board as board_rows
from newsletter.storage import members as member_rows
from newsletter.storage import signins
from newsletter.storage.models import Member, MemberStatus

# Sign-in links: at most this many asked for from one network address an hour, and this
# many mailed to one member an hour.
REQUESTS_PER_IP_HOUR = 10
LINKS_PER_MEMBER_HOUR = 3
HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """What asking for a link did; the page says the same whatever it was (no membership
    is revealed)."""

    limited: bool  # too many requests from this network: nothing was stored
    mail_id: int | None


def _may_sign_in(unit: Unit, member: Member | None) -> str:
    """Why this member may not sign in ("" when they may)."""
    if member is None or member.status != MemberStatus.ACTIVE:
        return Said(N_("only members who receive the newsletter can sign in"))
    if blocked(board_rows.standing(unit.session, member.id), unit.now):
        return Said(N_("an editor has blocked this member from the board for now"))
    return ""


@use_case
def request_link(unit: Unit, email: str, *, ip: str) -> LinkRequest:
    """Mail a sign-in link to `email` if it is an active member's who may sign in, within the
    limits (per network address, per member)."""
    if signins.from_ip_since(unit.session, ip, unit.now - HOUR) >= REQUESTS_PER_IP_HOUR:
        return LinkRequest(True, None)
    member = member_rows.by_email(unit.session, email)
    if _may_sign_in(unit, member):
        return LinkRequest(False, None)
    assert member is not None
    if signins.for_member_since(unit.session, member.id, unit.now - HOUR) >= LINKS_PER_MEMBER_HOUR:
        return LinkRequest(False, None)
    row = signins.add(unit.session, member.id, ip, unit.now)
    mail_id = notices.queue_signin(unit, member, row.id)
    unit.audit("signin-link", member_id=member.id, detail=f"asked from {ip or '?'}")
    return LinkRequest(False, mail_id)


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A sign-in's outcome: the session's member and generation, or why not."""

    member_id: int = 0
    generation: int = 0
    refused: str = ""
    ask_again: bool = False  # scanner signs around: the person must press once more
    language: str = ""  # the member's, for the page that says why not or asks again


def _signin_problem(unit: Unit, member_id: int, signin_id: int) -> str:
    row = signins.get(unit.session, signin_id)
    if row is None or row.member_id != member_id:
        return Said(N_("the link names a sign-in that does not exist"))
    if row.used_at is not None:
        return Said(N_("this sign-in link has been used already; ask for a new one"))
    minutes = unit.settings.board.signin_minutes
    if unit.now - row.created_at > dt.timedelta(minutes=minutes):
        return Said(
            N_("this sign-in link has expired (links last %(minutes)s minutes); ask for a new one"),
            minutes=minutes,
        )
    return ""


@dataclass(frozen=True, slots=True)
class LinkPage:
    """What a sign-in link's page shows: the button, or why the link no longer works."""

    problem: str
    email: str
    language: str  # the member's: the page is in it


def _language(unit: Unit, member: Member | None) -> str:
    return unit.settings.list.language if member is None else language_of(unit, member)


def visit(
    unit: Unit,
    member_id: int,
    *,
    kind: str,
    method: str,
    signin_id: int | None = None,
    issue_id: int | None = None,
    ip: str = "",
    user_agent: str = "",
) -> LinkPage | None:
    """A GET or HEAD of a sign-in link (kind "signin") or an issue's board link ("board"):
    recorded as evidence, nothing else. None (and nothing recorded) when the link names no
    member, or a sign-in that is not the member's."""
    if signin_id is not None:
        row = signins.get(unit.session, signin_id)
        if row is None or row.member_id != member_id:
            return None
    visitor = evidence.visit(
        unit,
        member_id,
        kind=kind,
        method=method,
        issue_id=issue_id,
        ip=ip,
        user_agent=user_agent,
    )
    if visitor is None:
        return None
    member = member_rows.get(unit.session, member_id)
    problem = _may_sign_in(unit, member)
    if not problem and signin_id is not None:
        problem = _signin_problem(unit, member_id, signin_id)
    return LinkPage(problem, visitor.email, _language(unit, member))


@use_case
def sign_in(
    unit: Unit,
    member_id: int,
    *,
    signin_id: int | None = None,
    issue_id: int | None = None,
    person: bool = False,
    confirmed: bool = False,
) -> SignedIn:
    """The button's POST on a sign-in link (`signin_id`, which it uses up) or on an issue's
    board link (`issue_id`; the door checks its age, board.issue_link_days)."""
    member = member_rows.get(unit.session, member_id)
    language = _language(unit, member)
    problem = _may_sign_in(unit, member)
    if not problem and signin_id is not None:
        problem = _signin_problem(unit, member_id, signin_id)
    if problem:
        return SignedIn(refused=problem, language=language)
    if not (person or confirmed) and evidence.machine_nearby(unit, member_id):
        return SignedIn(ask_again=True, language=language)
    if signin_id is not None:
        row = signins.get(unit.session, signin_id)
        assert row is not None
        row.used_at = unit.now
        how = "an emailed sign-in link"
    else:
        how = f"the board link of issue #{issue_id}"
    standing = board_rows.standing(unit.session, member_id)
    unit.audit("sign-in", member_id=member_id, detail=f"by {how}")
    return SignedIn(member_id, standing.generation if standing else 0, language=language)


@use_case
def sign_out_everywhere(unit: Unit, member_id: int, generation: int) -> bool:
    """End every session of the member (each names the generation it began in). False when
    this session was over already (nothing changes then)."""
    standing = board_rows.ensure_standing(unit.session, member_id)
    if standing.generation != generation:
        return False
    standing.generation += 1
    unit.audit("sign-out-everywhere", member_id=member_id, detail="every session ended")
    return True


def language(unit: Unit, member_id: int) -> str:
    """The language of a member's pages (the list's for no such member)."""
    return _language(unit, member_rows.get(unit.session, member_id))


@use_case
def set_notices(unit: Unit, member_id: int, on: bool, *, via: str) -> bool:
    """Switch a member's reply notices on or off; False when they were so already."""
    if member_rows.get(unit.session, member_id) is None:
        return False
    standing = board_rows.ensure_standing(unit.session, member_id)
    if standing.notices == on:
        return False
    standing.notices = on
    unit.audit(
        "board-notices", member_id=member_id, detail=f"reply notices {'on' if on else 'off'}: {via}"
    )
    return True
