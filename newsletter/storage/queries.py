"""Named queries: a session in, rows or counts out. No query text lives anywhere else."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, func, insert, literal, select
from sqlalchemy.orm import Session

from newsletter.config import SurveySettings
from newsletter.storage.models import (
    ACTIVE,
    QUEUED,
    SENDING,
    Delivery,
    Issue,
    IssueItem,
    Item,
    Member,
    Survey,
    SurveyOption,
    utcnow,
)


def new_items(session: Session, limit: int) -> Sequence[Item]:
    """Items that have gone out in no issue yet, oldest first."""
    sent = select(IssueItem.item_id)
    return session.scalars(
        select(Item)
        .where(Item.id.not_in(sent))
        .order_by(func.coalesce(Item.published_at, Item.created_at), Item.id)
        .limit(limit)
    ).all()


def count_new_items(session: Session) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Item).where(Item.id.not_in(select(IssueItem.item_id)))
        )
        or 0
    )


def issue_items(session: Session, issue_id: int) -> Sequence[Item]:
    return session.scalars(
        select(Item)
        .join(IssueItem, IssueItem.item_id == Item.id)
        .where(IssueItem.issue_id == issue_id)
        .order_by(IssueItem.position)
    ).all()


def sync_survey(session: Session, conf: SurveySettings) -> Survey:
    """The survey described in config.toml, created on first use. Its options are fixed once made."""
    survey = session.scalar(select(Survey).where(Survey.key == conf.key))
    if survey is None:
        # A new key starts a new survey; the one before it closes with its final results.
        for old in session.scalars(select(Survey).where(Survey.status == "open")):
            old.status, old.closed_at = "closed", utcnow()
        survey = Survey(key=conf.key, question=conf.question)
        session.add(survey)
        session.flush()
        session.add_all(
            SurveyOption(survey_id=survey.id, position=i, label=label)
            for i, label in enumerate(conf.options, start=1)
        )
        session.flush()
    return survey


def survey_options(session: Session, survey_id: int) -> Sequence[SurveyOption]:
    return session.scalars(
        select(SurveyOption)
        .where(SurveyOption.survey_id == survey_id)
        .order_by(SurveyOption.position)
    ).all()


def unfinished_issue(session: Session) -> Issue | None:
    """The issue a send was interrupted in, if any; a new send resumes it first."""
    return session.scalar(select(Issue).where(Issue.status == SENDING).order_by(Issue.id).limit(1))


def snapshot_audience(session: Session, issue_id: int, now: dt.datetime) -> int:
    """One queued delivery row per active member, in one INSERT … SELECT."""
    columns = [
        "issue_id",
        "member_id",
        "status",
        "attempts",
        "last_message",
        "message_id",
        "created_at",
    ]
    query = select(
        literal(issue_id),
        Member.id,
        literal(QUEUED),
        literal(0),
        literal(""),
        literal(""),
        literal(now, type_=Delivery.created_at.type),
    ).where(Member.status == ACTIVE)
    result = cast(CursorResult[Any], session.execute(insert(Delivery).from_select(columns, query)))
    return int(result.rowcount or 0)


def delivery_counts(session: Session, issue_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.issue_id == issue_id)
        .group_by(Delivery.status)
    ).all()
    return {status: int(n) for status, n in rows}


def member_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Member.status, func.count()).group_by(Member.status)).all()
    return {status: int(n) for status, n in rows}
