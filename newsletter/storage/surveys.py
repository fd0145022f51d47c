"""Queries on surveys and votes: the configured survey, its options, counted votes, pending clicks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from newsletter.config import SurveySettings
from newsletter.storage.models import Member, Survey, SurveyOption, SurveyStatus, Vote


def get(session: Session, survey_id: int) -> Survey | None:
    survey = session.get(Survey, survey_id)
    # Kept for the session's life: a batch of clicks on one survey asks for it once.
    session.info.setdefault("keep", []).append(survey)
    return survey


def sync(session: Session, conf: SurveySettings, now: dt.datetime) -> Survey:
    """The survey described in config.toml, created on first use. Its options are fixed once made."""
    survey = session.scalar(select(Survey).where(Survey.key == conf.key))
    if survey is None:
        # A new key starts a new survey; the one before it closes with its final results.
        for old in session.scalars(select(Survey).where(Survey.status == SurveyStatus.OPEN)):
            old.status, old.closed_at = SurveyStatus.CLOSED, now
        survey = Survey(key=conf.key, question=conf.question)
        session.add(survey)
        session.flush()
        session.add_all(
            SurveyOption(survey_id=survey.id, position=i, label=label)
            for i, label in enumerate(conf.options, start=1)
        )
        session.flush()
    return survey


def options(session: Session, survey_id: int) -> Sequence[SurveyOption]:
    """The survey's options in order (asked once per session: options never change)."""
    known: dict[int, Sequence[SurveyOption]] = session.info.setdefault("survey_options", {})
    if survey_id not in known:
        known[survey_id] = session.scalars(
            select(SurveyOption)
            .where(SurveyOption.survey_id == survey_id)
            .order_by(SurveyOption.position)
        ).all()
    return known[survey_id]


def open_ones(session: Session) -> Sequence[Survey]:
    return session.scalars(
        select(Survey).where(Survey.status == SurveyStatus.OPEN).order_by(Survey.id.desc())
    ).all()


def newest_id(session: Session) -> int | None:
    return session.scalar(select(Survey.id).order_by(Survey.id.desc()).limit(1))


def find(session: Session, key: str | None) -> Survey | None:
    """A survey by key or number; the newest when key is None."""
    query = select(Survey).order_by(Survey.id.desc())
    if key:
        number = int(key) if key.isdigit() and len(key) < 12 else -1
        query = query.where((Survey.key == key) | (Survey.id == number))
    return session.scalars(query.limit(1)).first()


def counted(session: Session, survey_id: int) -> dict[int, int]:
    """Counted votes per option position."""
    rows = session.execute(
        select(Vote.option, func.count())
        .where(Vote.survey_id == survey_id, Vote.option.is_not(None))
        .group_by(Vote.option)
    ).all()
    return {int(option or 0): int(n) for option, n in rows}


def _votes(session: Session) -> dict[tuple[int, int], Vote | None]:
    # (survey, member) → the vote as this session knows it, None when known to be absent:
    # what load_votes fetched for a batch, and every vote added since.
    known: dict[tuple[int, int], Vote | None] = session.info.setdefault("votes", {})
    return known


# Statements of the vote pages' hot path, built once (see storage/members.py).
_VOTE = select(Vote).where(Vote.survey_id == bindparam("s"), Vote.member_id == bindparam("m"))
_VOTES = select(Vote).where(
    Vote.survey_id == bindparam("s"), Vote.member_id.in_(bindparam("ms", expanding=True))
)


def member_vote(session: Session, survey_id: int, member_id: int) -> Vote | None:
    known = _votes(session)
    key = (survey_id, member_id)
    if key not in known:
        known[key] = session.scalar(_VOTE, {"s": survey_id, "m": member_id})
    return known[key]


def load_votes(session: Session, pairs: set[tuple[int, int]]) -> None:
    """The votes of these (survey, member) pairs in one query, for a batch of clicks."""
    known = _votes(session)
    wanted = {pair for pair in pairs if pair not in known}
    by_survey: dict[int, set[int]] = {}
    for survey_id, member_id in wanted:
        by_survey.setdefault(survey_id, set()).add(member_id)
    for survey_id, member_ids in by_survey.items():
        found = session.scalars(_VOTES, {"s": survey_id, "ms": list(member_ids)})
        for vote in found:
            known[(vote.survey_id, vote.member_id)] = vote
    for pair in wanted:
        known.setdefault(pair, None)


def add_vote(session: Session, vote: Vote) -> Vote:
    session.add(vote)
    _votes(session)[(vote.survey_id, vote.member_id)] = vote
    return vote


def pending_before(session: Session, cutoff: dt.datetime, limit: int = 5000) -> Sequence[Vote]:
    """Clicks still waiting for evidence whose window ended before `cutoff`."""
    return session.scalars(
        select(Vote)
        .where(Vote.pending_at.is_not(None), Vote.pending_at <= cutoff)
        .order_by(Vote.pending_at)
        .limit(limit)
    ).all()


def oldest_pending(session: Session) -> dt.datetime | None:
    oldest: dt.datetime | None = session.scalar(
        select(func.min(Vote.pending_at)).where(Vote.pending_at.is_not(None))
    )
    return oldest


def counted_votes(
    session: Session, survey_id: int
) -> Sequence[tuple[str, int, dt.datetime | None]]:
    """(email, option, counted_at) of every counted vote, oldest first (the CSV export)."""
    rows = session.execute(
        select(Member.email, Vote.option, Vote.counted_at)
        .join(Member, Member.id == Vote.member_id)
        .where(Vote.survey_id == survey_id, Vote.option.is_not(None))
        .order_by(Vote.counted_at)
    ).all()
    return [(str(e), int(o or 0), c) for e, o, c in rows]
