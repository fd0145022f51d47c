"""Queries on surveys and votes: the configured survey, its options, counted votes, pending clicks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.config import SurveySettings
from newsletter.storage.models import Member, Survey, SurveyOption, SurveyStatus, Vote


def get(session: Session, survey_id: int) -> Survey | None:
    return session.get(Survey, survey_id)


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
    return session.scalars(
        select(SurveyOption)
        .where(SurveyOption.survey_id == survey_id)
        .order_by(SurveyOption.position)
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


def member_vote(session: Session, survey_id: int, member_id: int) -> Vote | None:
    return session.scalar(
        select(Vote).where(Vote.survey_id == survey_id, Vote.member_id == member_id)
    )


def add_vote(session: Session, vote: Vote) -> Vote:
    session.add(vote)
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
