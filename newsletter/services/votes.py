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

from newsletter.config import Settings
from newsletter.content.results import Results, tally
from newsletter.errors import NewsletterError
from newsletter.services.unit import Unit, use_case
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


@use_case
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
    if person:  # counted: a vote cast. A held click is evidence, decided (and audited) by settle
        unit.audit(
            "vote",
            member_id=member_id,
            detail=f"survey {survey_id}, option {option}: counted (a person used the page)",
        )
        unit.after_commit(lambda: unit.services.changed(f"survey:{survey_id}"))
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
    unit.after_commit(lambda: unit.services.changed(f"survey:{survey_id}"))
    return True


def scanner_signs(
    unit: Unit, member_id: int, survey_id: int, option: int, at: dt.datetime, rule: VoteRule
) -> str | None:
    """Why a click at `at` looks like a machine, or None if nothing does."""
    for kind, method, hit_survey, hit_option in hits.around(
        unit.session, member_id, at - rule.window, at + rule.window
    ):
        if method == "HEAD":
            return "a HEAD request for the member's links"
        if kind == "trap":
            return "the hidden link was fetched"
        if kind == "vote" and hit_survey == survey_id and hit_option != option:
            return "several options fetched together"
    delivered = hits.last_delivery_for_survey(unit.session, member_id, survey_id, at)
    if delivered is not None and at - delivered < rule.delivery_grace:
        return f"within {int(rule.delivery_grace.total_seconds())} s of delivery"
    return None


@use_case
def settle(unit: Unit) -> int:
    """Count or drop every pending click whose window has passed. Returns how many were counted."""
    rule = VoteRule.from_settings(unit.settings)
    counted = dropped = 0
    changed: set[int] = set()
    for vote in surveys.pending_before(unit.session, unit.now - rule.window):
        assert vote.pending_at is not None and vote.pending_option is not None
        reason = scanner_signs(
            unit, vote.member_id, vote.survey_id, vote.pending_option, vote.pending_at, rule
        )
        if reason is None:
            vote.option, vote.counted_at = vote.pending_option, unit.now
            vote.evidence = "counted: no scanner signs around the click"
            counted += 1
        else:
            vote.evidence = f"not counted: {reason}"
            dropped += 1
        vote.pending_option, vote.pending_at = None, None
        changed.add(vote.survey_id)
    if counted or dropped:
        unit.audit("settle-votes", detail=f"{counted} counted, {dropped} not counted")
        for survey_id in changed:
            unit.after_commit(functools.partial(unit.services.changed, f"survey:{survey_id}"))
    return counted


def results(unit: Unit, survey_id: int) -> Results:
    """Counted votes per option (pending clicks are not counted yet)."""
    survey = surveys.get(unit.session, survey_id)
    if survey is None:
        raise NoSuchSurvey(f"there is no survey #{survey_id}")
    options = [(o.position, o.label) for o in surveys.options(unit.session, survey_id)]
    counts = surveys.counted(unit.session, survey_id)
    return tally(survey_id, survey.question, survey.status, options, counts)


def settled_results(unit: Unit, survey_id: int | None = None) -> Results:
    """Settle what is due, then the results of `survey_id` (default: the newest survey)."""
    settle(unit)
    if survey_id is None:
        survey_id = surveys.newest_id(unit.session)
        if survey_id is None:
            raise NoSuchSurvey("there is no survey yet (it is made with the first issue)")
    return results(unit, survey_id)


@use_case
def close(unit: Unit, key: str | None) -> str:
    """Close a survey (the newest, or the one with this key or number): its links then show
    the final results and record nothing. Pending clicks are decided first."""
    survey = surveys.find(unit.session, key)
    if survey is None:
        raise NoSuchSurvey(f"no survey {key!r}" if key else "there is no survey yet")
    settle(unit)
    survey.status, survey.closed_at = SurveyStatus.CLOSED, unit.now
    unit.audit("close-survey", detail=f"survey {survey.id} ({survey.key})")
    unit.after_commit(lambda: unit.services.changed(f"survey:{survey.id}"))
    return survey.key


def find(unit: Unit, key: str | None) -> int:
    survey = surveys.find(unit.session, key)
    if survey is None:
        raise NoSuchSurvey(f"no survey {key!r}" if key else "there is no survey yet")
    return survey.id


def counted_votes(unit: Unit, survey_id: int) -> list[tuple[str, int, dt.datetime | None]]:
    return list(surveys.counted_votes(unit.session, survey_id))
