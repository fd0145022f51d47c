"""Surveys as editors run them: config.toml's survey kept in step, surveys made by editors
(drafts, opened, closed), which survey the next issue carries, and the votes as CSV.

Two kinds of survey live side by side (`Survey.source`). config.toml's `[survey]` makes one
("config") the first time anything needs it; a new key there closes the previous config
survey and makes the new one, and leaves every other survey as it is. Editors make the
others ("desk": from the desk, the API or the CLI) as drafts, then open and close them.

The survey an issue carries by default (`default_survey`, `for_issue`): config.toml's survey
while it is open; otherwise the open survey that was opened last. A config survey whose key
is no longer in config.toml is over: `sync_config` closes it and it cannot be reopened (ask
it again with a new survey), so it is never a candidate.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from newsletter.config import SurveySettings
from newsletter.content.results import Results
from newsletter.errors import ConfigError, NewsletterError
from newsletter.services import votes
from newsletter.services.unit import Permission, Unit, requires, use_case
from newsletter.storage import surveys as rows
from newsletter.storage.models import Survey, SurveySource, SurveyStatus

MAX_QUESTION = 1000  # characters
MAX_OPTION = 200  # characters
MIN_OPTIONS, MAX_OPTIONS = 2, 10
LIST_LIMIT = 200  # surveys on one list, newest first

# What str.splitlines breaks at: a question or option is one line in every part of a message.
LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


class InvalidSurvey(NewsletterError, ValueError):
    """A new survey's question or options break a rule; nothing was stored.

    `field` is "question" or "options", `index` the option's place (from 0) when one option
    is at fault; the message names it for people ("option 3: is empty")."""

    def __init__(self, field: str, reason: str, index: int | None = None) -> None:
        self.field, self.reason, self.index = field, reason, index
        place = f"option {index + 1}" if index is not None else field
        super().__init__(f"{place}: {reason}")

    @property
    def path(self) -> str:
        """The field as a JSON body names it: question, options, options.2."""
        return self.field if self.index is None else f"{self.field}.{self.index}"


class Conflict(NewsletterError):
    """The action does not fit the survey's state (opening an open survey, closing a closed
    one, reopening a survey config.toml has replaced); nothing was done."""


NoSuchSurvey = votes.NoSuchSurvey  # one class for every door's "no such survey" (404)


# --- the rules for a new survey ----------------------------------------------------------------


def _line_problem(text: str) -> str | None:
    """Why `text` cannot be one line of a survey, or None."""
    for ch in text:
        if ch in LINE_BREAKS:
            return "must be one line (it has a line break)"
        category = unicodedata.category(ch)
        if category == "Cc":  # NUL, tab, escape...: PostgreSQL refuses NUL outright
            return f"contains the control character U+{ord(ch):04X}"
        if category == "Cs":  # a lone surrogate is no text at all (argv's undecodable bytes)
            return f"contains U+{ord(ch):04X}, which is not a character"
    return None


def _checked_text(text: str, longest: int) -> tuple[str, str | None]:
    text = text.strip()
    problem = _line_problem(text)
    if problem is not None:
        return text, problem
    if not text:
        return text, "is empty"
    if len(text) > longest:
        return text, f"has {len(text):,} characters; at most {longest} are allowed"
    return text, None


def _sameness(label: str) -> str:
    # Two options a reader cannot tell apart are one option: case and spacing aside.
    return " ".join(unicodedata.normalize("NFC", label).split()).casefold()


def check(question: str, options: Sequence[str]) -> tuple[str, list[str]]:
    """The question and options as they would be stored (surrounding spaces removed), or
    InvalidSurvey naming the first field that breaks a rule: a question of 1 to 1000
    characters on one line; 2 to 10 options, each 1 to 200 characters on one line, no two
    alike (ignoring case and spacing)."""
    question, problem = _checked_text(question, MAX_QUESTION)
    if problem is not None:
        raise InvalidSurvey("question", problem)
    if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        raise InvalidSurvey(
            "options", f"a survey has {MIN_OPTIONS} to {MAX_OPTIONS} options, not {len(options)}"
        )
    labels: list[str] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(options):
        label, problem = _checked_text(raw, MAX_OPTION)
        if problem is None and _sameness(label) in seen:
            problem = f"repeats option {seen[_sameness(label)] + 1}"
        if problem is not None:
            raise InvalidSurvey("options", problem, index)
        seen[_sameness(label)] = index
        labels.append(label)
    return question, labels


# --- what the doors show -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SurveyInfo:
    """A survey as lists show it. `id` 0 is config.toml's survey before its row is made (the
    next issue, or the next survey an editor makes, makes it)."""

    id: int
    key: str
    question: str
    source: SurveySource
    status: SurveyStatus
    options: tuple[str, ...]
    votes: int  # members whose vote is counted
    created_at: dt.datetime | None
    opened_at: dt.datetime | None
    closed_at: dt.datetime | None
    replaced: bool = False  # from config.toml, which now asks another: it cannot reopen

    @property
    def stored(self) -> bool:
        return self.id > 0

    @property
    def from_config(self) -> bool:
        return self.source == SurveySource.CONFIG


def _infos(unit: Unit, found: Sequence[Survey]) -> list[SurveyInfo]:
    ids = [s.id for s in found]
    labels = rows.options_of(unit.session, ids)
    totals = rows.counted_totals(unit.session, ids)
    return [
        SurveyInfo(
            id=s.id,
            key=s.key,
            question=s.question,
            source=s.source,
            status=s.status,
            options=tuple(labels.get(s.id, [])),
            votes=totals.get(s.id, 0),
            created_at=s.created_at,
            opened_at=s.opened_at,
            closed_at=s.closed_at,
            replaced=_replaced(s, unit.settings.survey),
        )
        for s in found
    ]


def _info(unit: Unit, survey: Survey) -> SurveyInfo:
    return _infos(unit, [survey])[0]


def _unmade(conf: SurveySettings) -> SurveyInfo:
    return SurveyInfo(
        0,
        conf.key,
        conf.question,
        SurveySource.CONFIG,
        SurveyStatus.OPEN,
        tuple(conf.options),
        0,
        None,
        None,
        None,
    )


def _replaced(survey: Survey, conf: SurveySettings | None) -> bool:
    """A config survey config.toml no longer asks (its key changed, or [survey] is gone)."""
    return survey.source == SurveySource.CONFIG and (conf is None or survey.key != conf.key)


def _candidates(unit: Unit) -> list[Survey]:
    """The stored surveys an issue may carry: the open ones but those config.toml replaced,
    the default first (config.toml's survey when open, then the one opened last)."""
    conf = unit.settings.survey
    found = [s for s in rows.open_surveys(unit.session) if not _replaced(s, conf)]
    # config.toml's survey first; the rest stay in the order they were last opened.
    found.sort(key=lambda s: s.source != SurveySource.CONFIG)
    return found


def open_surveys(unit: Unit) -> list[SurveyInfo]:
    """The surveys the next issue may carry, the default first (a read).

    config.toml's survey is among them once its row is made; before that, `default_survey`
    describes it with id 0."""
    return _infos(unit, _candidates(unit))


def default_survey(unit: Unit) -> SurveyInfo | None:
    """The survey an issue carries when none is chosen for it (a read): config.toml's survey
    while it is open (id 0 when the next issue will make it), otherwise the open survey that
    was opened last; None when no survey is open."""
    conf = unit.settings.survey
    if conf is not None and rows.by_key(unit.session, conf.key) is None:
        return _unmade(conf)
    found = _candidates(unit)
    return _info(unit, found[0]) if found else None


@dataclass(frozen=True, slots=True)
class Listing:
    surveys: list[SurveyInfo]  # newest first
    default: SurveyInfo | None  # what the next issue carries unless its settings choose


def listing(unit: Unit, limit: int = LIST_LIMIT) -> Listing:
    """Every survey, newest first, and the default one (a read)."""
    found = _infos(unit, rows.newest(unit.session, max(1, min(limit, 1000))))
    return Listing(found, default_survey(unit))


@dataclass(frozen=True, slots=True)
class Overview:
    """The desk's survey page: the list, and the default survey's results so far."""

    listing: Listing
    results: Results | None  # the default survey's, when it is stored


def overview(unit: Unit) -> Overview:
    """Settle what is due, then the list and the default survey's results (run with call)."""
    votes.settle_all(unit)
    found = listing(unit)
    default = found.default
    results = votes.results(unit, default.id) if default is not None and default.stored else None
    return Overview(found, results)


@dataclass(frozen=True, slots=True)
class Report:
    survey: SurveyInfo
    results: Results


def _find(unit: Unit, ref: int | str | None) -> Survey:
    survey = rows.find(unit.session, ref)
    if survey is None:
        if ref is None:
            raise NoSuchSurvey("there is no survey yet")
        raise NoSuchSurvey(
            f"there is no survey #{ref}" if isinstance(ref, int) else f"no survey {ref!r}"
        )
    return survey


def find(unit: Unit, ref: int | str | None) -> int:
    """The number of the survey with this number or key (None: the newest one asked)."""
    return _find(unit, ref).id


def report(unit: Unit, survey_id: int) -> Report:
    """One survey and its counted results, pending clicks settled first (run with call)."""
    survey = _find(unit, survey_id)
    return Report(_info(unit, survey), votes.settled_results(unit, survey.id, drafts=True))


@dataclass(frozen=True, slots=True)
class VotesCsv:
    text: str
    votes: int


@requires(Permission.MEMBERS)  # every row names a member: personal data, as the member list is
def votes_csv(unit: Unit, survey_id: int) -> VotesCsv:
    """Every counted vote as CSV (email, option, label, counted_at), oldest first, pending
    clicks settled first (run with call). The desk, the API and the CLI write the same."""
    results = votes.settled_results(unit, _find(unit, survey_id).id, drafts=True)
    counted = rows.counted_votes(unit.session, results.survey_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["email", "option", "label", "counted_at"])
    for email, option, counted_at in counted:
        when = counted_at.isoformat() if counted_at else ""
        writer.writerow([email, option, results.label(option), when])
    return VotesCsv(out.getvalue(), len(counted))


# --- config.toml's survey ------------------------------------------------------------------------


@use_case
def sync_config(unit: Unit) -> int | None:
    """Keep the stored surveys in step with config.toml's [survey]: make its survey (open)
    the first time, and close the config survey it replaced (audited: its links stop
    recording). Surveys made by editors are left alone. Returns the configured survey's
    number."""
    conf = unit.settings.survey
    for old in rows.open_from_config(unit.session):
        if _replaced(old, conf):
            old.status, old.closed_at = SurveyStatus.CLOSED, unit.now
            why = f"replaced by {conf.key!r}" if conf is not None else "[survey] is gone"
            unit.audit("close-survey", detail=f"survey {old.id} ({old.key}): {why} in config.toml")
            _changed(unit, old.id)
    if conf is None:
        return None
    survey = rows.by_key(unit.session, conf.key)
    if survey is not None:
        if survey.source != SurveySource.CONFIG:
            raise ConfigError(
                "survey.key",
                f"{conf.key!r} is the key of survey #{survey.id}, made by an editor; "
                "choose another key",
            )
        return survey.id
    # Not audited: config.toml made it, and the action that needed it (a release, a new
    # survey) has its own entry.
    survey = rows.add(
        unit.session,
        key=conf.key,
        question=conf.question,
        labels=conf.options,
        source=SurveySource.CONFIG,
        status=SurveyStatus.OPEN,
        now=unit.now,
    )
    return survey.id


def for_issue(unit: Unit, choice: str = "default") -> tuple[int, str, list[tuple[int, str]]] | None:
    """The survey the issue being compiled carries, as the compiler takes it (id, question,
    options), for the next issue's choice (`Draft.survey`): "none"; a survey's number,
    carried while it is open (one closed since it was chosen, or gone, leaves the issue
    without a survey: none other is put in its place); or "default": config.toml's survey
    while it is open, else the open survey opened last. Runs in the compiling transaction,
    after keeping config.toml's survey in step."""
    if choice == "none":
        return None
    sync_config(unit)
    if choice.isdigit() and len(choice) < 10:
        survey = rows.get(unit.session, int(choice))
        if survey is None or survey.status != SurveyStatus.OPEN:
            return None
    else:
        found = _candidates(unit)
        if not found:
            return None
        survey = found[0]
    options = [(o.position, o.label) for o in rows.options(unit.session, survey.id)]
    return survey.id, survey.question, options


# --- editors' actions ----------------------------------------------------------------------------


def _changed(unit: Unit, survey_id: int) -> None:
    # Member pages cache results per survey; a survey opened or closed shows differently.
    unit.after_commit(functools.partial(unit.services.changed, f"survey:{survey_id}"))


def _free_key(unit: Unit, survey_id: int) -> str:
    # "desk-N" names survey N, unless a config.toml key took it first.
    key, n = f"desk-{survey_id}", 1
    while rows.by_key(unit.session, key) is not None:
        n += 1
        key = f"desk-{survey_id}-{n}"
    return key


@use_case
@requires(Permission.SURVEYS)
def create_survey(unit: Unit, question: str, options: Sequence[str]) -> SurveyInfo:
    """Make a survey as a draft: no issue carries it and it records nothing until it is
    opened. InvalidSurvey, naming the field, when the question or an option breaks a rule
    (see `check`). Its key is desk-N, N its number."""
    question, labels = check(question, options)
    sync_config(unit)  # config.toml's survey comes first, as the site's first survey
    survey = rows.add(
        unit.session,
        key=f"new-{uuid.uuid4().hex}",  # a placeholder until the number is known
        question=question,
        labels=labels,
        source=SurveySource.DESK,
        status=SurveyStatus.DRAFT,
        now=unit.now,
    )
    survey.key = _free_key(unit, survey.id)
    unit.session.flush()
    unit.audit(
        "create-survey",
        detail=f"survey {survey.id} ({survey.key}), a draft: {question} "
        + " | ".join(f"{i}. {label}" for i, label in enumerate(labels, start=1)),
    )
    return _info(unit, survey)


@use_case
@requires(Permission.SURVEYS)
def open_survey(unit: Unit, ref: int | str) -> SurveyInfo:
    """Open a draft, or reopen a closed survey: issues may carry it and its links record
    votes again. Conflict when it is open already, or when it came from config.toml and
    config.toml now asks another survey."""
    survey = _find(unit, ref)
    if survey.status == SurveyStatus.OPEN:
        raise Conflict(f"survey #{survey.id} ({survey.key}) is already open")
    if _replaced(survey, unit.settings.survey):
        raise Conflict(
            f"survey #{survey.id} ({survey.key}) came from config.toml, which no longer asks it; "
            "to ask it again, make a new survey"
        )
    was = survey.status
    since = f", closed since {survey.closed_at:%Y-%m-%d %H:%M} UTC" if survey.closed_at else ""
    survey.status, survey.opened_at, survey.closed_at = SurveyStatus.OPEN, unit.now, None
    unit.session.flush()
    verb = "reopened" if was == SurveyStatus.CLOSED else "opened"
    unit.audit(
        "open-survey", detail=f"survey {survey.id} ({survey.key}) {verb}{since}: {survey.question}"
    )
    _changed(unit, survey.id)
    return _info(unit, survey)


@use_case
@requires(Permission.SURVEYS)
def close_survey(unit: Unit, ref: int | str | None) -> SurveyInfo:
    """Close a survey (by number or key; None: the one the next issue would carry): its
    links then show the final results and record nothing. Pending clicks are decided first.
    Conflict when it is closed already."""
    if ref is None:
        carried = _candidates(unit)
        if not carried:
            raise NoSuchSurvey("no survey is open")
        survey = carried[0]
    else:
        survey = _find(unit, ref)
    if survey.status == SurveyStatus.CLOSED:
        raise Conflict(f"survey #{survey.id} ({survey.key}) is already closed")
    votes.settle_all(unit)
    was = survey.status
    survey.status, survey.closed_at = SurveyStatus.CLOSED, unit.now
    unit.session.flush()
    closed = _info(unit, survey)
    what = "a draft, never asked" if was == SurveyStatus.DRAFT else f"{closed.votes} votes counted"
    unit.audit("close-survey", detail=f"survey {survey.id} ({survey.key}) closed: {what}")
    _changed(unit, survey.id)
    return closed
