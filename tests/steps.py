"""The steps tests take, through the service layer as any door would (actor "test")."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from newsletter import config
from newsletter.config import Settings
from newsletter.content import sources
from newsletter.content.roster import ImportReport
from newsletter.delivery.engine import Summary
from newsletter.services import issues, items, members, sending
from newsletter.services.unit import Services
from newsletter.storage import items as item_rows
from newsletter.storage.models import Issue

ACTOR = "test"
REPO = Path(__file__).resolve().parent.parent
SECRET = "test-secret-key-0123456789abcdef"
Run = sending.Run
IssuePaused = sending.IssuePaused
NothingToSend = sending.NothingToSend


@functools.cache
def _any_settings() -> Settings:
    # For steps that need no settings of their own (an import, a pause): the sample site's.
    return config.load(REPO / "config.toml", env={config.SECRET_ENV: SECRET})


def services(settings: Settings | None, sessions: sessionmaker[Session]) -> Services:
    return Services(settings or _any_settings(), sessions)


def import_csv(sessions: sessionmaker[Session], path: Path, **options: Any) -> ImportReport:
    return members.import_file(services(None, sessions), path, actor=ACTOR, **options)


def import_source(
    sessions: sessionmaker[Session], source: str, **options: Any
) -> sources.SourceReport:
    return items.import_source(services(None, sessions), source, actor=ACTOR, **options)


@dataclass
class Prepared:
    issue: Issue
    queued: int


def get_issue(sessions: sessionmaker[Session], issue_id: int) -> Issue:
    return services(None, sessions).read(sending._issue, issue_id)


def release_next(settings: Settings, sessions: sessionmaker[Session], **options: Any) -> Prepared:
    released = services(settings, sessions).run(ACTOR, issues.release_next, **options)
    return Prepared(get_issue(sessions, released.issue_id), released.queued)


def send(
    settings: Settings, sessions: sessionmaker[Session], run: Run | None = None
) -> Coroutine[Any, Any, list[Summary]]:
    return sending.send(services(settings, sessions), run, actor=ACTOR)


def deliver(
    settings: Settings, sessions: sessionmaker[Session], issue: Issue, run: Run | None = None
) -> Coroutine[Any, Any, Summary]:
    return sending.deliver(services(settings, sessions), issue.id, run)


def retry(
    settings: Settings, sessions: sessionmaker[Session], issue_id: int, run: Run | None = None
) -> Coroutine[Any, Any, Summary]:
    return sending.retry(services(settings, sessions), issue_id, run, actor=ACTOR)


def pause(sessions: sessionmaker[Session], issue_id: int, **_: Any) -> issues.IssueInfo:
    return services(None, sessions).run(ACTOR, issues.pause, issue_id)


def resume(sessions: sessionmaker[Session], issue_id: int, **_: Any) -> issues.IssueInfo:
    return services(None, sessions).run(ACTOR, issues.resume, issue_id)


def cancel(sessions: sessionmaker[Session], issue_id: int, **_: Any) -> issues.IssueInfo:
    return services(None, sessions).run(ACTOR, issues.cancel, issue_id)


def issue_info(sessions: sessionmaker[Session], issue_id: int) -> issues.IssueInfo:
    return services(None, sessions).read(issues.info, issue_id)


def count_new_items(session: Session) -> int:
    return item_rows.count_new_items(session)


__all__ = ["asyncio"]
