"""The next issue's draft: one row an editor shapes (note, subject, preheader, survey, send at)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import Table, update
from sqlalchemy.orm import Session

from newsletter.storage.models import Draft

D = cast(Table, Draft.__table__)
ID = 1  # one site, one next issue


def get(session: Session) -> Draft:
    """The draft, made empty on first use."""
    draft = session.get(Draft, ID)
    if draft is None:
        draft = Draft(id=ID, note_md="", subject="", preheader="", survey="default", updated_by="")
        session.add(draft)
        session.flush()
    return draft


def claim_due(session: Session, now: dt.datetime) -> bool:
    """Take the scheduled send if it is due: of several processes asking at once, exactly one
    gets True (the row's send_at is cleared by whoever gets it)."""
    result = session.execute(
        update(D)
        .where(D.c.id == ID, D.c.send_at.is_not(None), D.c.send_at <= now)
        .values(send_at=None)
    )
    return bool(cast(Any, result).rowcount)


def clear(session: Session, now: dt.datetime, by: str) -> None:
    """Empty the draft once its issue is released: the next one starts afresh."""
    draft = get(session)
    draft.note_md, draft.subject, draft.preheader, draft.survey = "", "", "", "default"
    draft.send_at, draft.updated_at, draft.updated_by = None, now, by
