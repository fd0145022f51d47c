"""Survey votes that mail scanners cannot cast: evidence from link hits, the vote rule, results.

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
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.storage.models import Delivery, Issue, LinkHit, Survey, SurveyOption, Vote


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


def record_hit(
    session: Session,
    *,
    kind: str,
    method: str,
    member_id: int,
    at: dt.datetime,
    issue_id: int | None = None,
    survey_id: int | None = None,
    option: int | None = None,
    ip: str = "",
    user_agent: str = "",
) -> None:
    session.add(
        LinkHit(
            kind=kind,
            method=method,
            member_id=member_id,
            issue_id=issue_id,
            survey_id=survey_id,
            option=option,
            at=at,
            ip=ip[:64],
            user_agent=user_agent[:300],
        )
    )


def scanner_signs(
    session: Session, member_id: int, survey_id: int, option: int, at: dt.datetime, rule: VoteRule
) -> str | None:
    """Why a click at `at` looks like a machine, or None if nothing does."""
    hits = session.execute(
        select(LinkHit.kind, LinkHit.method, LinkHit.survey_id, LinkHit.option).where(
            LinkHit.member_id == member_id,
            LinkHit.at >= at - rule.window,
            LinkHit.at <= at + rule.window,
        )
    ).all()
    for kind, method, hit_survey, hit_option in hits:
        if method == "HEAD":
            return "a HEAD request for the member's links"
        if kind == "trap":
            return "the hidden link was fetched"
        if kind == "vote" and hit_survey == survey_id and hit_option != option:
            return "several options fetched together"
    delivered = session.scalar(
        select(func.max(Delivery.sent_at))
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(
            Delivery.member_id == member_id, Issue.survey_id == survey_id, Delivery.sent_at <= at
        )
    )
    if delivered is not None and at - delivered < rule.delivery_grace:
        return f"within {int(rule.delivery_grace.total_seconds())} s of delivery"
    return None


def click(
    session: Session,
    survey_id: int,
    member_id: int,
    option: int,
    at: dt.datetime,
    *,
    person: bool = False,
) -> Vote:
    """A member chose `option`: pending until settled, or counted at once on a person's evidence."""
    vote = session.scalar(
        select(Vote).where(Vote.survey_id == survey_id, Vote.member_id == member_id)
    )
    if vote is None:
        vote = Vote(survey_id=survey_id, member_id=member_id, evidence="")
        session.add(vote)
    if person:
        vote.option, vote.counted_at = option, at
        vote.pending_option, vote.pending_at = None, None
        vote.evidence = "counted: a person used the page"
    else:
        vote.pending_option, vote.pending_at = option, at
        vote.evidence = "pending"
    session.flush()
    return vote


def confirm_person(session: Session, survey_id: int, member_id: int, at: dt.datetime) -> bool:
    """A trusted input event on the vote page: count the member's pending click now."""
    vote = session.scalar(
        select(Vote).where(Vote.survey_id == survey_id, Vote.member_id == member_id)
    )
    if vote is None or vote.pending_option is None:
        return False
    click(session, survey_id, member_id, vote.pending_option, at, person=True)
    return True


def settle(session: Session, now: dt.datetime, rule: VoteRule) -> int:
    """Count or drop every pending click whose window has passed. Returns how many were counted."""
    counted = 0
    pending = session.scalars(
        select(Vote).where(Vote.pending_at.is_not(None), Vote.pending_at <= now - rule.window)
    ).all()
    for vote in pending:
        assert vote.pending_at is not None and vote.pending_option is not None
        reason = scanner_signs(
            session, vote.member_id, vote.survey_id, vote.pending_option, vote.pending_at, rule
        )
        if reason is None:
            vote.option, vote.counted_at = vote.pending_option, now
            vote.evidence = "counted: no scanner signs around the click"
            counted += 1
        else:
            vote.evidence = f"not counted: {reason}"
        vote.pending_option, vote.pending_at = None, None
    session.flush()
    return counted


@dataclass(frozen=True, slots=True)
class OptionResult:
    position: int
    label: str
    votes: int
    percent: float


@dataclass(frozen=True, slots=True)
class Results:
    survey_id: int
    question: str
    status: str
    total: int
    options: tuple[OptionResult, ...]

    @property
    def leader(self) -> OptionResult | None:
        return max(self.options, key=lambda o: o.votes) if self.total else None


def results(
    session: Session, survey_id: int, *, extra: tuple[int, int | None, int] | None = None
) -> Results:
    """Counted votes per option, members not clicks. `extra` = (member, old option, new option)
    shows one member's own pending choice in place of their counted one (for their page only)."""
    survey = session.get(Survey, survey_id)
    if survey is None:
        raise LookupError(f"no survey #{survey_id}")
    options: Sequence[SurveyOption] = session.scalars(
        select(SurveyOption)
        .where(SurveyOption.survey_id == survey_id)
        .order_by(SurveyOption.position)
    ).all()
    counts = dict(
        session.execute(
            select(Vote.option, func.count())
            .where(Vote.survey_id == survey_id, Vote.option.is_not(None))
            .group_by(Vote.option)
        ).all()
    )
    if extra is not None:
        _, old, new = extra
        if old is not None:
            counts[old] = counts.get(old, 0) - 1
        counts[new] = counts.get(new, 0) + 1
    total = sum(counts.get(o.position, 0) for o in options)
    return Results(
        survey_id,
        survey.question,
        survey.status,
        total,
        tuple(
            OptionResult(
                o.position,
                o.label,
                counts.get(o.position, 0),
                100.0 * counts.get(o.position, 0) / total if total else 0.0,
            )
            for o in options
        ),
    )


def member_vote(session: Session, survey_id: int, member_id: int) -> Vote | None:
    return session.scalar(
        select(Vote).where(Vote.survey_id == survey_id, Vote.member_id == member_id)
    )
