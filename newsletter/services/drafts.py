"""The next issue as editors shape it: an editor's note, a subject, a preheader, its survey, and
when it goes out. Saved with the draft; used when the issue is compiled; cleared on release."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass

from newsletter.content.compiler import Shape
from newsletter.content.sources import html_to_text, render_markdown
from newsletter.errors import NewsletterError
from newsletter.services.unit import Permission, Unit, requires, use_case
from newsletter.storage import drafts as rows
from newsletter.storage.models import Draft

NOTE_LIMIT = 20_000  # characters of Markdown
SUBJECT_LIMIT = 300
PREHEADER_LIMIT = 200
_LINE_BREAK = re.compile(r"[\r\n\x00-\x08\x0b\x0c\x0e-\x1f]")


class BadDraft(NewsletterError, ValueError):
    """A field of the next issue's settings is not acceptable; nothing was saved."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True, slots=True)
class DraftInfo:
    note_md: str
    subject: str
    preheader: str
    survey: str  # "default", "none" or a survey's number
    send_at: dt.datetime | None  # UTC
    updated_at: dt.datetime | None
    updated_by: str

    def send_at_local(self, timezone: str) -> dt.datetime | None:
        return (
            None if self.send_at is None else self.send_at.astimezone(zoneinfo.ZoneInfo(timezone))
        )


def _info(draft: Draft) -> DraftInfo:
    return DraftInfo(
        draft.note_md,
        draft.subject,
        draft.preheader,
        draft.survey,
        draft.send_at,
        draft.updated_at,
        draft.updated_by,
    )


def info(unit: Unit) -> DraftInfo:
    return _info(rows.get(unit.session))


def shape(unit: Unit) -> Shape:
    """What the compiler needs of the draft."""
    draft = rows.get(unit.session)
    note_html = render_markdown(draft.note_md) if draft.note_md.strip() else ""
    return Shape(
        note_html=note_html,
        note_text=html_to_text(note_html) if note_html else "",
        subject=draft.subject,
        preheader=draft.preheader,
    )


def _one_line(field: str, value: str, limit: int) -> str:
    value = value.strip()
    if _LINE_BREAK.search(value):
        raise BadDraft(field, "must be one line (no line breaks or control characters)")
    if len(value) > limit:
        raise BadDraft(field, f"is {len(value):,} characters, over the limit of {limit:,}")
    return " ".join(value.split())


@use_case
@requires(Permission.WRITE)
def save(
    unit: Unit,
    *,
    note_md: str | None = None,
    subject: str | None = None,
    preheader: str | None = None,
    survey: str | None = None,
) -> DraftInfo:
    """Change the next issue's settings (each one given; the others stay as they were)."""
    draft = rows.get(unit.session)
    changed = []
    if note_md is not None:
        if len(note_md) > NOTE_LIMIT:
            raise BadDraft("note", f"is {len(note_md):,} characters, over {NOTE_LIMIT:,}")
        draft.note_md = note_md.replace("\r\n", "\n")
        changed.append("note")
    if subject is not None:
        draft.subject = _one_line("subject", subject, SUBJECT_LIMIT)
        changed.append("subject")
    if preheader is not None:
        draft.preheader = _one_line("preheader", preheader, PREHEADER_LIMIT)
        changed.append("preheader")
    if survey is not None:
        survey = survey.strip() or "default"
        if survey not in ("default", "none") and not (survey.isdigit() and len(survey) < 10):
            raise BadDraft("survey", "must be 'default', 'none' or a survey's number")
        draft.survey = survey
        changed.append("survey")
    draft.updated_at, draft.updated_by = unit.now, unit.actor
    unit.audit("edit-draft", detail=", ".join(changed) or "nothing")
    return _info(draft)


@use_case
@requires(Permission.SEND)
def schedule(unit: Unit, send_at: dt.datetime | None) -> DraftInfo:
    """Send the next issue at `send_at` (aware, any zone), or not at all (None). `serve`
    releases and sends it then; until then it can be moved or cancelled."""
    draft = rows.get(unit.session)
    if send_at is not None:
        if send_at.tzinfo is None:
            raise BadDraft("send_at", "needs a time zone")
        if send_at <= unit.now:
            raise BadDraft("send_at", "is not in the future; use Send now instead")
        send_at = send_at.astimezone(dt.UTC)
    draft.send_at, draft.updated_at, draft.updated_by = send_at, unit.now, unit.actor
    when = f"for {send_at:%Y-%m-%d %H:%M} UTC" if send_at else "cancelled"
    unit.audit("schedule", detail=f"the next issue's send {when}")
    return _info(draft)


def local_time(text: str, timezone: str) -> dt.datetime:
    """A date and time as an editor types it (ISO, e.g. 2026-12-01T09:30) in the list's zone."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadDraft(
            "send_at", f"{text[:40]!r} is not a date and time (YYYY-MM-DD HH:MM)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
    return when
