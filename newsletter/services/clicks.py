"""Clicks on an issue's links, counted only when a person made them, and kept only as counts.

A fetch of a /r/ link is answered at once (a redirect to the link's target) and held as
evidence. Once `web.vote_window_seconds` have passed it is decided by the vote rule's signs
of a mail scanner (docs/votes.md, docs/bounces.md): a HEAD request; the member's hidden link
fetched within the window; `tracking.burst_links` different links of the member's mail
fetched within `tracking.burst_seconds`; the click within `web.delivery_grace_seconds` of
delivery. A person's click adds to the link's people count, a scanner's to its scanners
count; no row naming the member is kept (unless `tracking.per_member`), and the raw
evidence is deleted once no undecided click can need it (twice the window).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from newsletter.services.unit import Unit, prefetch, use_case
from newsletter.services.votes import VoteRule
from newsletter.storage import clicks as rows
from newsletter.storage import hits
from newsletter.storage import members as member_rows
from newsletter.storage.models import ClickHit, MemberClick

SETTLE_CHUNK = 500


def _load_members(session: Session, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
    member_rows.load(session, {args[1] for args, _ in calls})


@prefetch(_load_members)
def fetch(
    unit: Unit,
    issue_id: int,
    member_id: int,
    link: int,
    *,
    method: str,
    at: dt.datetime | None = None,
) -> None:
    """A member's message's link was fetched (GET or HEAD) at `at` (when the request came;
    default now): held as evidence. A member who no longer exists (or member 0, a test
    copy's) records nothing. Changes nothing else, so it writes no audit entry."""
    if member_rows.get(unit.session, member_id) is None:
        return
    rows.add(
        unit.session,
        ClickHit(
            issue_id=issue_id,
            member_id=member_id,
            link=link,
            method=method[:8],
            at=at or unit.now,
            decided=False,
        ),
    )


@dataclass(frozen=True, slots=True)
class ClickRule:
    votes: VoteRule
    burst_links: int
    burst: dt.timedelta
    per_member: bool

    @classmethod
    def of(cls, unit: Unit) -> ClickRule:
        t = unit.settings.tracking
        return cls(
            VoteRule.from_settings(unit.settings),
            t.burst_links,
            dt.timedelta(seconds=t.burst_seconds),
            t.per_member,
        )


def machine_sign(
    click: ClickHit,
    link_hits: list[tuple[dt.datetime, str, str, int | None, int | None]],
    click_hits: list[rows.ClickSign],
    delivered: dt.datetime | None,
    rule: ClickRule,
) -> str | None:
    """Why the click looks like a mail scanner's, or None if nothing does."""
    if click.method == "HEAD":
        return "a HEAD request"
    window = rule.votes.window
    for at, kind, method, _, _ in link_hits:
        if abs(at - click.at) <= window and (method == "HEAD" or kind == "trap"):
            return "a HEAD request or the hidden link around it"
    for at, _, _, method in click_hits:
        if abs(at - click.at) <= window and method == "HEAD":
            return "a HEAD request around it"
    # Different links fetched around it: the issue's (by place) and the member's own.
    fetched: set[tuple[str, int]] = {
        (f"issue {issue}", link)
        for at, issue, link, _ in click_hits
        if abs(at - click.at) <= rule.burst
    }
    fetched |= {
        (kind, option or 0)
        for at, kind, _, _, option in link_hits
        if abs(at - click.at) <= rule.burst and kind in ("vote", "unsubscribe", "view")
    }
    if len(fetched) >= rule.burst_links:
        return f"{len(fetched)} links fetched within {rule.burst.total_seconds():g} s"
    grace = rule.votes.delivery_grace
    if delivered is not None and dt.timedelta(0) <= click.at - delivered < grace:
        return f"within {grace.total_seconds():g} s of delivery"
    return None


@dataclass(frozen=True, slots=True)
class Settled:
    people: int
    scanners: int
    decided: int  # SETTLE_CHUNK means more may be due
    purged: int


@use_case
def settle(unit: Unit, limit: int = SETTLE_CHUNK) -> Settled:
    """Decide the clicks whose window has passed (up to `limit`), add them to the counts, and
    delete the evidence no undecided click can need any more."""
    rule = ClickRule.of(unit)
    window = rule.votes.window
    due = rows.due(unit.session, unit.now - window, limit)
    counts: dict[tuple[int, int], list[int]] = {}
    people = scanners = 0
    if due:
        members = {c.member_id for c in due}
        reach = max(window, rule.burst)
        start, end = min(c.at for c in due) - reach, max(c.at for c in due) + reach
        around = hits.around_many(unit.session, members, start, end)
        clicked = rows.around_many(unit.session, members, start, end)
        delivered = rows.sent_at(unit.session, {(c.issue_id, c.member_id) for c in due})
        kept: list[MemberClick] = []
        for click in due:
            reason = machine_sign(
                click,
                around.get(click.member_id, []),
                clicked.get(click.member_id, []),
                delivered.get((click.issue_id, click.member_id)),
                rule,
            )
            tally = counts.setdefault((click.issue_id, click.link), [0, 0])
            if reason is None:
                tally[0] += 1
                people += 1
                if rule.per_member:
                    kept.append(
                        MemberClick(
                            member_id=click.member_id,
                            issue_id=click.issue_id,
                            link=click.link,
                            at=click.at,
                        )
                    )
            else:
                tally[1] += 1
                scanners += 1
            click.decided = True
        rows.add_counts(unit.session, {k: (v[0], v[1]) for k, v in counts.items()})
        rows.add_member_clicks(unit.session, kept)
    unit.session.flush()
    # A decided click is evidence for undecided ones up to a window later, never after.
    purged = rows.purge_decided(unit.session, unit.now - 2 * max(window, rule.burst))
    if due:
        unit.audit(
            "settle-clicks",
            detail=f"{people} by people, {scanners} by scanners on "
            f"{len({k[0] for k in counts})} issues",
        )
    return Settled(people, scanners, len(due), purged)


def settle_all(unit: Unit) -> None:
    while settle(unit).decided == SETTLE_CHUNK:
        unit.session.flush()


@dataclass(frozen=True, slots=True)
class LinkCount:
    index: int
    url: str
    people: int
    scanners: int


def link_counts(unit: Unit, issue_id: int) -> tuple[list[LinkCount], int]:
    """Per link of the issue (in order): counts; and how many clicks wait to be decided."""
    targets = rows.links(unit.session, issue_id) or []
    found = rows.counts(unit.session, issue_id)
    listed = [LinkCount(i, url, *found.get(i, (0, 0))) for i, url in enumerate(targets)]
    return listed, rows.pending(unit.session, issue_id)


def targets(unit: Unit, issue_id: int) -> tuple[str, ...] | None:
    """The issue's link list, for the redirects (None: no such issue)."""
    found = rows.links(unit.session, issue_id)
    return None if found is None else tuple(found)
