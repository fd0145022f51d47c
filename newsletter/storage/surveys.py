"""Queries on surveys and votes: surveys by key and state, options, votes, pending clicks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from newsletter.storage.models import (
    Member,
    Survey,
    SurveyOption,
    SurveySource,
    SurveyStatus,
    Vote,
)


def get(session: Session, survey_id: int) -> Survey | None:
    survey = session.get(Survey, survey_id)
    # Kept for the session's life: a batch of clicks on one survey asks for it once.
    session.info.setdefault("keep", []).append(survey)
    return survey


def by_key(session: Session, key: str) -> Survey | None:
    return session.scalar(select(Survey).where(Survey.key == key))


def add(
    session: Session,
    *,
    key: str,
    question: str,
    labels: Sequence[str],
    source: SurveySource,
    status: SurveyStatus,
    now: dt.datetime,
) -> Survey:
    """A new survey and its options (positions 1, 2, ...), flushed so that it has its id."""
    survey = Survey(
        key=key,
        question=question,
        source=source,
        status=status,
        created_at=now,
        opened_at=now if status == SurveyStatus.OPEN else None,
    )
    session.add(survey)
    session.flush()
    session.add_all(
        SurveyOption(survey_id=survey.id, position=i, label=label)
        for i, label in enumerate(labels, start=1)
    )
    session.flush()
    return survey


def open_from_config(session: Session) -> Sequence[Survey]:
    """The open surveys that config.toml's [survey] made."""
    return session.scalars(
        select(Survey).where(
            Survey.status == SurveyStatus.OPEN, Survey.source == SurveySource.CONFIG
        )
    ).all()


def open_surveys(session: Session) -> Sequence[Survey]:
    """Every open survey, the one opened last first."""
    return session.scalars(
        select(Survey)
        .where(Survey.status == SurveyStatus.OPEN)
        .order_by(Survey.opened_at.desc().nulls_last(), Survey.id.desc())
    ).all()


def newest(session: Session, limit: int) -> Sequence[Survey]:
    return session.scalars(select(Survey).order_by(Survey.id.desc()).limit(limit)).all()


def options_of(session: Session, survey_ids: Collection[int]) -> dict[int, list[str]]:
    """The option labels of these surveys in order, in one query (for a list of surveys)."""
    found: dict[int, list[str]] = {i: [] for i in survey_ids}
    if not found:
        return found
    rows = session.execute(
        select(SurveyOption.survey_id, SurveyOption.label)
        .where(SurveyOption.survey_id.in_(list(found)))
        .order_by(SurveyOption.survey_id, SurveyOption.position)
    )
    for survey_id, label in rows:
        found[int(survey_id)].append(str(label))
    return found


def counted_totals(session: Session, survey_ids: Collection[int]) -> dict[int, int]:
    """How many members' votes are counted in each of these surveys, in one query."""
    if not survey_ids:
        return {}
    rows = session.execute(
        select(Vote.survey_id, func.count())
        .where(Vote.survey_id.in_(list(survey_ids)), Vote.option.is_not(None))
        .group_by(Vote.survey_id)
    ).all()
    return {int(survey_id): int(n) for survey_id, n in rows}


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


def find(session: Session, ref: int | str | None) -> Survey | None:
    """A survey by number (an int), by key or number (a str, as typed on a command line), or,
    for None, the newest survey that has been asked (a draft never was)."""
    query = select(Survey).order_by(Survey.id.desc())
    if isinstance(ref, int):
        query = query.where(Survey.id == ref)
    elif ref:
        number = int(ref) if ref.isdigit() and len(ref) < 12 else -1
        query = query.where((Survey.key == ref) | (Survey.id == number))
    else:
        query = query.where(Survey.opened_at.is_not(None))
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
            known[(vote.survey_id, vote.member_id or 0)] = vote
    for pair in wanted:
        known.setdefault(pair, None)


def add_vote(session: Session, vote: Vote) -> Vote:
    session.add(vote)
    _votes(session)[(vote.survey_id, vote.member_id or 0)] = vote
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
    """(email, option, counted_at) of every counted vote, oldest first (the CSV export); an
    erased member's vote has no member, and an empty address."""
    rows = session.execute(
        select(Member.email, Vote.option, Vote.counted_at)
        .outerjoin(Member, Member.id == Vote.member_id)
        .where(Vote.survey_id == survey_id, Vote.option.is_not(None))
        .order_by(Vote.counted_at)
    ).all()
    return [(str(e or ""), int(o or 0), c) for e, o, c in rows]
