"""Evidence from members' links: hits recorded as they come, and folded into counts when old.

Raw hits (who fetched which link, how, when, from where) are kept only as long as the vote
rule can still need them; after that they are folded into per-day counts with no member in
them, so the table stays bounded however many links are fetched.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from newsletter.services.unit import Unit, prefetch, use_case
from newsletter.services.votes import VoteRule
from newsletter.storage import hits, surveys
from newsletter.storage import members as member_rows
from newsletter.storage.models import MemberStatus

# Raw hits are kept at least this long (an editor looking into a complaint can see them), and
# never less than the vote rule needs.
KEEP = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Visitor:
    """The member a link names, as a page needs them (None fields when there is none)."""

    member_id: int
    email: str
    name: str
    status: MemberStatus


def _load_members(session: Session, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
    member_rows.load(session, {args[0] for args, _ in calls})


@prefetch(_load_members)
def visit(
    unit: Unit,
    member_id: int,
    *,
    kind: str,
    method: str,
    issue_id: int | None = None,
    ip: str = "",
    user_agent: str = "",
) -> Visitor | None:
    """Record a fetch of one of the member's links (unsubscribe, view, trap) as evidence, and
    return the member; None (and nothing recorded) when there is no such member."""
    member = member_rows.get(unit.session, member_id)
    if member is None:
        return None
    unit.hit(
        kind=kind,
        method=method,
        member_id=member_id,
        issue_id=issue_id,
        ip=ip,
        user_agent=user_agent,
    )
    return Visitor(member.id, member.email, member.name, member.status)


@prefetch(_load_members)
def member(unit: Unit, member_id: int) -> Visitor | None:
    found = member_rows.get(unit.session, member_id)
    if found is None:
        return None
    return Visitor(found.id, found.email, found.name, found.status)


def machine_nearby(unit: Unit, member_id: int) -> bool:
    """A HEAD or the hidden link around now: a scanner may be submitting forms."""
    rule = VoteRule.from_settings(unit.settings)
    return hits.machine_signs_since(unit.session, member_id, unit.now - rule.window) > 0


def fold_cutoff(unit: Unit) -> dt.datetime:
    """Hits before this moment no rule needs: older than KEEP and than twice the vote window
    (a click's evidence spans a window either side), and older than any pending click's."""
    rule = VoteRule.from_settings(unit.settings)
    cutoff = unit.now - max(KEEP, 2 * rule.window)
    oldest = surveys.oldest_pending(unit.session)
    if oldest is not None:
        cutoff = min(cutoff, oldest - rule.window)
    return cutoff


FOLD_CHUNK = 5000  # raw hits folded in one call


@use_case
def fold(unit: Unit, limit: int = FOLD_CHUNK) -> int:
    """Fold old raw hits into counts (up to `limit` a call); how many were folded."""
    folded = hits.fold_before(unit.session, fold_cutoff(unit), limit)
    if folded:
        unit.audit("fold-hits", detail=f"{folded} link hits folded into daily counts")
    return folded
