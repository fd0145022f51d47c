"""Survey votes that mail scanners cannot cast: the vote rule, clicks, settling, results.

A click on a vote link is held as pending. It is counted once `window` seconds have passed
with none of the signs a scanner leaves around it (see docs/votes.md):
  - a HEAD request for any of the member's links;
  - the member's hidden trap link fetched (no person can see or click it);
  - another option of the same survey fetched by the same member;
  - the click arriving within `delivery_grace` seconds of the message's delivery.
A trusted input event on the vote page (a person's pointer, key or touch), reported by the
page's script, counts the pending click at once.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content.results import Results, tally
from newsletter.errors import NewsletterError
from newsletter.services.unit import Unit, prefetch, use_case
from newsletter.storage import hits, surveys
from newsletter.storage import members as member_rows
from newsletter.storage.models import SurveyStatus, Vote


class NoSuchSurvey(NewsletterError, LookupError):
    """The survey asked for does not exist."""


@dataclass(frozen=True, slots=True)
class VoteRule:
    window: dt.timedelta = dt.timedelta(seconds=30)
    delivery_grace: dt.timedelta = dt.timedelta(seconds=60)

    @classmethod
    def from_settings(cls, settings: Settings) -> VoteRule:
        return cls(
            window=dt.timedelta(seconds=settings.web.vote_window_seconds),
            delivery_grace=dt.timedelta(seconds=settings.web.delivery_grace_seconds),
        )


class Outcome(StrEnum):
    """What a vote link's visit came to (the page shows each differently)."""

    RECORDED = "recorded"  # the click is held, or counted on a person's evidence
    CLOSED = "closed"  # the survey is closed: nothing was recorded at all
    NO_OPTION = "no-option"  # the survey has no such option: nothing recorded
    UNKNOWN = "unknown"  # the survey or the member does not exist


@dataclass(frozen=True, slots=True)
class Click:
    outcome: Outcome
    survey_id: int
    option: int
    counted_before: int | None = None  # the member's counted option before this click


def _open_survey(unit: Unit, survey_id: int, member_id: int, option: int) -> Outcome | None:
    survey = surveys.get(unit.session, survey_id)
    if survey is None or member_rows.get(unit.session, member_id) is None:
        return Outcome.UNKNOWN
    if survey.status != SurveyStatus.OPEN:
        return Outcome.CLOSED
    if option not in {o.position for o in surveys.options(unit.session, survey_id)}:
        return Outcome.NO_OPTION
    return None


def _load_clicks(session: Session, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
    """A batch of clicks: their members and votes in two queries."""
    member_rows.load(session, {args[1] for args, _ in calls})
    surveys.load_votes(session, {(args[0], args[1]) for args, _ in calls})


@use_case
@prefetch(_load_clicks)
def click(
    unit: Unit,
    survey_id: int,
    member_id: int,
    option: int,
    *,
    method: str,
    person: bool = False,
    ip: str = "",
    user_agent: str = "",
) -> Click:
    """A member's vote link (GET, HEAD) or the vote page's form (POST) chose `option`.

    The visit is recorded as evidence; the choice is held as pending until the vote rule
    settles it, or counted at once when the form says a person used the page. A HEAD request
    records the hit only (it is a sign of a machine, never a choice). A closed survey, an
    option the survey lacks or an unknown member records nothing."""
    refused = _open_survey(unit, survey_id, member_id, option)
    if refused is not None:
        return Click(refused, survey_id, option)
    unit.hit(
        kind="vote",
        method=method,
        member_id=member_id,
        survey_id=survey_id,
        option=option,
        ip=ip,
        user_agent=user_agent,
    )
    if method == "HEAD":
        return Click(Outcome.RECORDED, survey_id, option)
    vote = surveys.member_vote(unit.session, survey_id, member_id)
    before = vote.option if vote is not None else None
    _choose(unit, survey_id, member_id, option, vote, person=person)
    # A vote counted (a person used the page) is audited; a held click is evidence, decided
    # and audited by settle. The shared results catch up within their cache's lifetime (the
    # member's own page shows their choice at once), so a burst does not recount per vote.
    if person:
        unit.audit(
            "vote",
            member_id=member_id,
            detail=f"survey {survey_id}, option {option}: counted (a person used the page)",
        )
    return Click(Outcome.RECORDED, survey_id, option, before)


def _choose(
    unit: Unit,
    survey_id: int,
    member_id: int,
    option: int,
    vote: Vote | None,
    *,
    person: bool,
) -> Vote:
    if vote is None:
        vote = surveys.add_vote(
            unit.session, Vote(survey_id=survey_id, member_id=member_id, evidence="")
        )
    if person:
        vote.option, vote.counted_at = option, unit.now
        vote.pending_option, vote.pending_at = None, None
        vote.evidence = "counted: a person used the page"
    else:
        vote.pending_option, vote.pending_at = option, unit.now
        vote.evidence = "pending"
    return vote


@use_case
@prefetch(_load_clicks)
def person(
    unit: Unit, survey_id: int, member_id: int, option: int, *, ip: str = "", user_agent: str = ""
) -> bool:
    """The vote page's script reports a trusted pointer, key or touch event: count the
    member's pending click now. False (nothing changes) when there is nothing to count."""
    refused = _open_survey(unit, survey_id, member_id, option)
    if refused is not None:
        return False
    unit.hit(
        kind="person",
        method="POST",
        member_id=member_id,
        survey_id=survey_id,
        option=option,
        ip=ip,
        user_agent=user_agent,
    )
    vote = surveys.member_vote(unit.session, survey_id, member_id)
    if vote is None or vote.pending_option is None:
        return False
    chosen = vote.pending_option
    _choose(unit, survey_id, member_id, chosen, vote, person=True)
    unit.audit(
        "vote",
        member_id=member_id,
        detail=f"survey {survey_id}, option {chosen}: counted (a person used the page)",
    )
    return True


def _machine_sign(
    hits: list[tuple[dt.datetime, str, str, int | None, int | None]],
    sent: list[dt.datetime],
    survey_id: int,
    option: int,
    at: dt.datetime,
    rule: VoteRule,
) -> str | None:
    """Why a click at `at` looks like a machine, or None if nothing does."""
    for hit_at, kind, method, hit_survey, hit_option in hits:
        if abs(hit_at - at) > rule.window:
            continue
        if method == "HEAD":
            return "a HEAD request for the member's links"
        if kind == "trap":
            return "the hidden link was fetched"
        if kind == "vote" and hit_survey == survey_id and hit_option != option:
            return "several options fetched together"
    delivered = max((t for t in sent if t <= at), default=None)
    if delivered is not None and at - delivered < rule.delivery_grace:
        return f"within {int(rule.delivery_grace.total_seconds())} s of delivery"
    return None


SETTLE_CHUNK = 500  # pending clicks decided in one call


@dataclass(frozen=True, slots=True)
class Settled:
    counted: int
    decided: int  # counted or dropped; SETTLE_CHUNK means more may be due


@use_case
def settle(unit: Unit, limit: int = SETTLE_CHUNK) -> Settled:
    """Count or drop the pending clicks whose window has passed, the oldest first, up to
    `limit` of them (call it again while it decides that many).

    The evidence for all of them is read in two queries (the members' hits around their
    clicks, and when they were sent the survey), so settling after a burst stays cheap."""
    rule = VoteRule.from_settings(unit.settings)
    due = surveys.pending_before(unit.session, unit.now - rule.window, limit)
    if not due:
        return Settled(0, 0)
    # A pending click always has its member (an erasure drops the member's pending clicks).
    members = {v.member_id for v in due if v.member_id is not None}
    clicked = [v.pending_at for v in due if v.pending_at is not None]
    around = hits.around_many(
        unit.session, members, min(clicked) - rule.window, max(clicked) + rule.window
    )
    sent: dict[tuple[int, int], list[dt.datetime]] = {}
    for survey_id in {v.survey_id for v in due}:
        for member_id, when in hits.deliveries_for_survey(unit.session, members, survey_id).items():
            sent[(survey_id, member_id)] = when
    counted = 0
    for vote in due:
        assert vote.pending_at is not None
        assert vote.pending_option is not None
        reason = _machine_sign(
            around.get(vote.member_id or 0, []),
            sent.get((vote.survey_id, vote.member_id or 0), []),
            vote.survey_id,
            vote.pending_option,
            vote.pending_at,
            rule,
        )
        if reason is None:
            vote.option, vote.counted_at = vote.pending_option, unit.now
            vote.evidence = "counted: no scanner signs around the click"
            counted += 1
        else:
            vote.evidence = f"not counted: {reason}"
        vote.pending_option, vote.pending_at = None, None
    unit.audit("settle-votes", detail=f"{counted} counted, {len(due) - counted} not counted")
    for survey_id in {v.survey_id for v in due}:
        unit.after_commit(functools.partial(unit.services.changed, f"survey:{survey_id}"))
    return Settled(counted, len(due))


def settle_all(unit: Unit) -> int:
    """Settle every click that is due, chunk after chunk; how many were counted."""
    counted = 0
    while True:
        done = settle(unit)
        counted += done.counted
        if done.decided < SETTLE_CHUNK:
            return counted
        unit.session.flush()


def results(unit: Unit, survey_id: int) -> Results:
    """Counted votes per option (pending clicks are not counted yet)."""
    survey = surveys.get(unit.session, survey_id)
    if survey is None:
        raise NoSuchSurvey(f"there is no survey #{survey_id}")
    options = [(o.position, o.label) for o in surveys.options(unit.session, survey_id)]
    counts = surveys.counted(unit.session, survey_id)
    return tally(survey_id, survey.question, survey.status, options, counts)


def settled_results(unit: Unit, survey_id: int | None = None, *, drafts: bool = False) -> Results:
    """Settle what is due, then the results of `survey_id` (default: the newest survey that
    was asked). A survey never opened (a draft) is shown only with `drafts` (editors' pages):
    the public results page does not reveal a question before it is asked."""
    settle_all(unit)
    survey = surveys.find(unit.session, survey_id)
    if survey is None or (survey.opened_at is None and not drafts):
        if survey_id is None:
            raise NoSuchSurvey("there is no survey yet (it is made with the first issue)")
        raise NoSuchSurvey(f"there is no survey #{survey_id}")
    return results(unit, survey.id)
