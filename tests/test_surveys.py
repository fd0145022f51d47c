"""Surveys made by editors beside config.toml's: the rules for a new survey, drafts, opening and
closing, which survey an issue carries, config.toml's key changing, and the CLI's commands.

Each database test runs on SQLite and PostgreSQL, through the service layer as the doors call it.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter.cli.main import app
from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.services import drafts, issues, surveys, votes
from newsletter.services.surveys import InvalidSurvey
from newsletter.services.unit import Actor, Forbidden, Role, Services
from newsletter.services.votes import Outcome
from newsletter.storage import db
from newsletter.storage.models import AuditEntry, Issue, Survey, SurveySource
from tests import steps
from tests.snapshot import snapshot
from tests.test_cli import run

PUBLISHER = Actor("ed", Role.PUBLISHER)
WRITER = Actor("wren", Role.WRITER)
BREAKS = sorted(surveys.LINE_BREAKS)


# --- the rules, without a database -------------------------------------------------------------

# One line of text: no line breaks, controls or surrogates, and something besides spaces.
line_char = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"))


def one_line(longest: int) -> st.SearchStrategy[str]:
    return st.text(line_char, min_size=1, max_size=longest).filter(lambda t: bool(t.strip()))


def sameness(label: str) -> str:
    return " ".join(unicodedata.normalize("NFC", label).split()).casefold()


def distinct(labels: list[str]) -> bool:
    return len({sameness(label) for label in labels}) == len(labels)


valid_options = st.lists(one_line(200), min_size=2, max_size=10).filter(distinct)


@hypothesis_settings(max_examples=300)
@example(question="  Which?  ", options=[" Yes", "No "])
@example(question="问" * 1000, options=["a" * 200, "b"])
@example(question="Which?", options=["Yes", "yes\u0301"])  # a combining accent: another option
@given(question=one_line(1000), options=valid_options)
def test_a_valid_survey_is_kept_as_typed_but_for_surrounding_spaces(
    question: str, options: list[str]
) -> None:
    assert surveys.check(question, options) == (question.strip(), [o.strip() for o in options])


Case = tuple[str, list[str], str, int | None, str | None]  # ..., field, index, words


def _question(options: list[str], bad: str, words: str) -> Case:
    return bad, options, "question", None, words


def _option(question: str, options: list[str], where: int, bad: str, words: str) -> Case:
    return question, [*options[:where], bad, *options[where + 1 :]], "options", where, words


def _alike(label: str) -> str:
    """The label again but for case and spacing (or the very same label, where upper() is
    not casefold() or lengthens it past the limit)."""
    alike = "  " + label.upper().replace(" ", "   ") + " "
    same = sameness(alike) == sameness(label) and len(alike.strip()) <= 200
    return alike if same else label


@st.composite
def broken(draw: st.DrawFn) -> Case:
    """A valid survey with one rule broken, and the field and words the refusal must name."""
    question, options = draw(one_line(1000)), draw(valid_options)
    where = draw(st.integers(1, len(options) - 1))  # option 1 stays, for "repeats option 1"
    brk = draw(st.sampled_from(BREAKS))
    control = draw(st.sampled_from(["\x00", "\t", "\x1b", "\x7f"]))
    label = options[where]
    cases: dict[str, Callable[[], Case]] = {
        "q-empty": lambda: _question(
            options, draw(st.sampled_from(["", " ", "\u3000"])), "is empty"
        ),
        "q-long": lambda: _question(options, "q" * draw(st.integers(1001, 3000)), "at most 1000"),
        "q-break": lambda: _question(options, f"x{brk}y{question}", "one line"),
        "q-control": lambda: _question(options, f"x{control}{question}", "control character"),
        "few": lambda: (question, options[:1], "options", None, "2 to 10 options, not 1"),
        "many": lambda: (
            question,
            options + [f"extra {i}" for i in range(11 - len(options))],
            "options",
            None,
            "2 to 10 options, not 11",
        ),
        "o-empty": lambda: _option(
            question, options, where, draw(st.sampled_from(["", "  "])), "is empty"
        ),
        "o-long": lambda: _option(
            question, options, where, "o" * draw(st.integers(201, 1000)), "at most 200"
        ),
        "o-break": lambda: _option(question, options, where, f"{label}x{brk}y", "one line"),
        "o-control": lambda: _option(
            question, options, where, f"{label}{control}x", "control character"
        ),
        "o-same": lambda: _option(question, options, where, _alike(options[0]), "repeats option 1"),
    }
    return cases[draw(st.sampled_from(sorted(cases)))]()


@hypothesis_settings(max_examples=400)
@example(case=("Which?", ["Yes", "Yes"], "options", 1, "repeats option 1"))
@example(case=("Which?\r\nBcc: x", ["Yes", "No"], "question", None, "one line"))
@example(case=("Which?", ["Yes", "No\u2028"], "options", 1, None))  # trailing: stripped
@given(case=broken())
def test_a_survey_breaking_a_rule_is_refused_naming_the_field(case: Case) -> None:
    question, options, field, index, words = case
    if words is None:  # an example that is valid after all (a separator at the end is space)
        surveys.check(question, options)
        return
    with pytest.raises(InvalidSurvey) as caught:
        surveys.check(question, options)
    assert (caught.value.field, caught.value.index) == (field, index)
    assert words in str(caught.value)
    place = f"option {index + 1}" if index is not None else field
    assert str(caught.value).startswith(f"{place}: ")


# --- the database ------------------------------------------------------------------------------


def with_survey(settings: Settings, key: str | None) -> Settings:
    """The settings with config.toml's [survey] under another key, or without one (None)."""
    if key is None:
        return dataclasses.replace(settings, survey=None)
    assert settings.survey is not None
    return dataclasses.replace(settings, survey=dataclasses.replace(settings.survey, key=key))


def survey_row(sessions: sessionmaker[Session], survey_id: int) -> Survey:
    with sessions() as s:
        row = s.get(Survey, survey_id)
        assert row is not None
        s.expunge(row)
        return row


def last_audit(sessions: sessionmaker[Session]) -> tuple[str, str, str]:
    with sessions() as s:
        entry = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
        return entry.actor, entry.action, entry.detail


def make(services: Services, question: str = "Which section first?", *options: str) -> int:
    made = services.run(PUBLISHER, surveys.create_survey, question, list(options or ("A", "B")))
    return made.id


@pytest.fixture
def services(settings: Settings, sessions: sessionmaker[Session]) -> Services:
    return Services(settings, sessions)


@hypothesis_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    case=st.one_of(
        st.tuples(one_line(1000), valid_options).map(lambda c: (*c, None)),
        broken(),
    )
)
def test_valid_surveys_are_stored_and_refused_ones_store_nothing(
    services: Services, sessions: sessionmaker[Session], case: tuple[Any, ...]
) -> None:
    question, options = case[0], case[1]
    try:
        expected = surveys.check(question, options)
    except InvalidSurvey as exc:
        expected, problem = None, exc
    before = snapshot(sessions)
    if expected is None:
        with pytest.raises(InvalidSurvey) as caught:
            services.run(PUBLISHER, surveys.create_survey, question, options)
        assert str(caught.value) == str(problem)
        assert snapshot(sessions) == before
        return
    made = services.run(PUBLISHER, surveys.create_survey, question, options)
    assert (made.question, list(made.options)) == expected
    assert (made.status, made.source, made.key) == ("draft", "desk", f"desk-{made.id}")
    stored = services.read(surveys.report, made.id)
    assert (stored.survey.question, list(stored.survey.options)) == expected
    assert [o.label for o in stored.results.options] == expected[1]
    actor, action, detail = last_audit(sessions)
    assert (actor, action) == ("ed", "create-survey")
    assert detail.startswith(f"survey {made.id} (desk-{made.id}), a draft: ")


def test_config_tomls_survey_comes_first_and_a_new_one_is_a_draft(
    services: Services, sessions: sessionmaker[Session], site: Path
) -> None:
    made = make(services, "Which section first?", "People watch", "Firms")
    config_survey, mine = survey_row(sessions, 1), survey_row(sessions, made)
    assert (config_survey.source, config_survey.status) == (SurveySource.CONFIG, "open")
    assert config_survey.opened_at is not None
    assert made == 2
    assert (mine.source, mine.status, mine.opened_at) == (SurveySource.DESK, "draft", None)
    # A draft records nothing: no issue carries it, and a link to it would count nothing.
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    before = snapshot(sessions)
    click = services.run("member:1", votes.click, made, 1, 1, method="POST", person=True)
    assert click.outcome == Outcome.CLOSED
    assert snapshot(sessions) == before


def test_open_close_and_reopen_each_once(
    services: Services, sessions: sessionmaker[Session]
) -> None:
    made = make(services)
    opened = services.run(PUBLISHER, surveys.open_survey, made)
    assert opened.status == "open"
    assert last_audit(sessions)[1:] == (
        "open-survey",
        f"survey {made} (desk-{made}) opened: Which section first?",
    )
    with pytest.raises(surveys.Conflict, match="already open"):
        services.run(PUBLISHER, surveys.open_survey, made)
    closed = services.run(PUBLISHER, surveys.close_survey, f"desk-{made}")  # by key too
    assert (closed.status, closed.votes) == ("closed", 0)
    assert last_audit(sessions)[1:] == (
        "close-survey",
        f"survey {made} (desk-{made}) closed: 0 votes counted",
    )
    first_closed = survey_row(sessions, made).closed_at
    with pytest.raises(surveys.Conflict, match="already closed"):
        services.run(PUBLISHER, surveys.close_survey, made)
    assert survey_row(sessions, made).closed_at == first_closed  # the first close is kept
    reopened = services.run(PUBLISHER, surveys.open_survey, str(made))  # by number as typed
    assert (reopened.status, reopened.closed_at) == ("open", None)
    detail = last_audit(sessions)[2]
    assert re.match(rf"survey {made} \(desk-{made}\) reopened, closed since \d{{4}}-", detail)
    with pytest.raises(votes.NoSuchSurvey, match="#99"):
        services.run(PUBLISHER, surveys.open_survey, 99)
    with pytest.raises(votes.NoSuchSurvey, match="'nope'"):
        services.run(PUBLISHER, surveys.close_survey, "nope")


def test_a_writer_may_read_surveys_but_not_make_open_or_close_them(
    services: Services, sessions: sessionmaker[Session]
) -> None:
    made = make(services)
    before = snapshot(sessions)
    for fn, args in (
        (surveys.create_survey, ("Q?", ["A", "B"])),
        (surveys.open_survey, (made,)),
        (surveys.close_survey, (made,)),
        (surveys.votes_csv, (made,)),  # the votes name members: a publisher's
    ):
        with pytest.raises(Forbidden, match="wren is a writer"):
            services.run(WRITER, fn, *args)
    assert snapshot(sessions) == before
    assert services.run(WRITER, surveys.report, made).survey.id == made
    assert [s.id for s in services.read(surveys.listing).surveys] == [made, 1]


def test_the_default_survey_is_config_tomls_while_open_else_the_one_opened_last(
    services: Services, sessions: sessionmaker[Session]
) -> None:
    # Before anything is stored, the default is config.toml's survey, not made yet.
    default = services.read(surveys.default_survey)
    assert default is not None
    assert (default.id, default.key, default.stored) == (0, "ip-pledge-loan-2017", False)
    first, second = make(services, "First?"), make(services, "Second?")
    services.run(PUBLISHER, surveys.open_survey, first)
    services.run(PUBLISHER, surveys.open_survey, second)
    assert [s.id for s in services.read(surveys.open_surveys)] == [1, second, first]
    assert surveys_default(services) == 1  # config.toml's, though opened before the others
    services.run(PUBLISHER, surveys.close_survey, 1)
    assert [s.id for s in services.read(surveys.open_surveys)] == [second, first]
    assert surveys_default(services) == second
    services.run(PUBLISHER, surveys.close_survey, first)
    services.run(PUBLISHER, surveys.open_survey, first)  # reopened: now the one opened last
    assert surveys_default(services) == first
    services.run(PUBLISHER, surveys.open_survey, 1)  # config.toml's again comes first
    assert surveys_default(services) == 1
    # The next issue's own choice: a survey carried while it is open, or none at all.
    chosen = services.read(surveys.for_issue, str(first))
    assert chosen is not None
    assert (chosen[0], chosen[1]) == (first, "First?")
    services.run(PUBLISHER, surveys.close_survey, second)
    assert services.read(surveys.for_issue, str(second)) is None  # closed since: none other
    assert services.read(surveys.for_issue, "99") is None
    assert services.read(surveys.for_issue, "none") is None


def surveys_default(services: Services) -> int | None:
    default = services.read(surveys.default_survey)
    carried = services.read(surveys.for_issue)
    assert (default.id if default else None) == (carried[0] if carried else None)
    return default.id if default else None


def test_a_new_key_closes_only_the_previous_config_survey(
    services: Services, sessions: sessionmaker[Session]
) -> None:
    mine = make(services)
    services.run(PUBLISHER, surveys.open_survey, mine)
    renamed = Services(with_survey(services.settings, "next-key"), sessions)
    new_id = renamed.run("test", surveys.sync_config)
    assert new_id is not None
    assert survey_row(sessions, 1).status == "closed"
    assert survey_row(sessions, mine).status == "open"  # editors' surveys are left alone
    assert survey_row(sessions, new_id).key == "next-key"
    assert last_audit(sessions)[1:] == (
        "close-survey",
        "survey 1 (ip-pledge-loan-2017): replaced by 'next-key' in config.toml",
    )
    assert surveys_default(renamed) == new_id
    # The replaced survey is over: it is never carried and cannot be reopened.
    with pytest.raises(surveys.Conflict, match="no longer asks it"):
        renamed.run(PUBLISHER, surveys.open_survey, 1)
    assert [s.id for s in renamed.read(surveys.open_surveys)] == [new_id, mine]
    assert renamed.read(surveys.listing).surveys[-1].replaced
    # [survey] taken out of config.toml: its survey closes too; the editor's is the default.
    gone = Services(with_survey(services.settings, None), sessions)
    assert gone.run("test", surveys.sync_config) is None
    assert survey_row(sessions, new_id).status == "closed"
    assert surveys_default(gone) == mine


def test_before_the_key_change_is_seen_reads_already_follow_config_toml(
    services: Services, sessions: sessionmaker[Session]
) -> None:
    mine = make(services)  # config.toml's survey is stored as #1, open
    services.run(PUBLISHER, surveys.open_survey, mine)
    renamed = Services(with_survey(services.settings, "next-key"), sessions)
    # Nothing has run with the new key yet: survey 1 is still stored open, but is not offered.
    assert survey_row(sessions, 1).status == "open"
    assert [s.id for s in renamed.read(surveys.open_surveys)] == [mine]
    default = renamed.read(surveys.default_survey)
    assert default is not None
    assert (default.id, default.key) == (0, "next-key")


def test_keys_of_the_two_kinds_never_collide(
    services: Services, sessions: sessionmaker[Session]
) -> None:
    taken = Services(with_survey(services.settings, "desk-2"), sessions)
    made = make(taken)  # config.toml's survey took "desk-2" as #1; this one is #2
    assert survey_row(sessions, made).key == "desk-2-2"
    clash = Services(with_survey(services.settings, "desk-2-2"), sessions)
    with pytest.raises(ConfigError, match=r"survey\.key.*made by an editor"):
        clash.run("test", surveys.sync_config)


def test_an_issue_carries_an_editors_survey_when_config_toml_has_none(
    settings: Settings, sessions: sessionmaker[Session], site: Path
) -> None:
    services = Services(with_survey(settings, None), sessions)
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    made = make(services, "Which section first?", "People watch", "Firms", "Inquiry")
    html = services.read(issues.preview_html)
    assert "Which section first?" not in html  # a draft is not carried
    services.run(PUBLISHER, surveys.open_survey, made)
    assert "Which section first?" in services.read(issues.preview_html)
    released = services.run("test", issues.release_next)
    with sessions() as s:
        issue = s.get(Issue, released.issue_id)
        assert issue is not None
        assert issue.survey_id == made
        assert "Inquiry" in issue.html
        assert s.scalar(select(Survey.id).where(Survey.source == SurveySource.CONFIG)) is None
    # Its votes count like any other, and its CSV has them.
    services.run("member:1", votes.click, made, 1, 2, method="POST", person=True)
    services.run("member:2", votes.click, made, 2, 3, method="POST", person=True)
    export = services.run(PUBLISHER, surveys.votes_csv, made)
    lines = export.text.splitlines()
    assert lines[0] == "email,option,label,counted_at"
    assert [line.split(",")[1:3] for line in lines[1:]] == [["2", "Firms"], ["3", "Inquiry"]]
    assert export.votes == 2
    # Closed, it records nothing.
    services.run(PUBLISHER, surveys.close_survey, made)
    before = snapshot(sessions)
    click = services.run("member:3", votes.click, made, 3, 1, method="POST", person=True)
    assert click.outcome == Outcome.CLOSED
    assert snapshot(sessions) == before


# --- the CLI -------------------------------------------------------------------------------------


def test_the_survey_commands(site: Path, database_url: str) -> None:
    runner = CliRunner()
    env = {
        "NEWSLETTER_DATABASE_URL": database_url,
        "NEWSLETTER_SECRET_KEY": "x" * 32,
        "COLUMNS": "200",
    }

    def cli(*args: str) -> Any:
        return runner.invoke(app, ["--config", str(site / "config.toml"), "survey", *args], env=env)

    listed = cli("list")
    assert listed.exit_code == 0, listed.output
    assert (
        "the next issue makes and carries config.toml's survey 'ip-pledge-loan-2017'"
        in listed.output
    )
    made = cli("create", "Which section first?", "--option", "People watch", "-o", "Firms")
    assert made.exit_code == 0, made.output
    assert "survey #2 (desk-2) made as a draft with 2 options" in made.output
    # A refusal is one line naming the field, and exit status 1 (newsletter's own main).
    refused = run(site, "survey", "create", "Which?", "-o", "Yes", "-o", " yes ", env=env)
    assert (refused.returncode, refused.stderr) == (1, "error: option 2: repeats option 1\n")
    assert cli("open", "desk-2").exit_code == 0
    again = cli("open", "2")
    assert isinstance(again.exception, surveys.Conflict)
    assert "already open" in str(again.exception)
    listed = cli("list")
    assert re.search(r"2 +│ desk-2 +│ editor +│ open", listed.output), listed.output
    assert re.search(r"1 +│ ip-pledge-loan-2017 +│ config.toml +│ open .*carries it", listed.output)
    closed = cli("close", "ip-pledge-loan-2017")
    assert closed.exit_code == 0
    assert "survey 'ip-pledge-loan-2017' closed: 0 votes counted" in closed.output
    assert re.search(r"2 +│ desk-2 .*carries it", cli("list").output)
    out = site / "votes.csv"
    results = cli("results", "desk-2", "--csv", str(out))
    assert results.exit_code == 0, results.output
    assert "Which section first? (open)" in results.output
    assert out.read_bytes() == b"email,option,label,counted_at\r\n"


def test_close_without_a_survey_closes_the_one_the_next_issue_carries(
    services: Services, sessions: sessionmaker[Session]
) -> None:
    older, newer = make(services, "Older?"), make(services, "Newer?")
    services.run(PUBLISHER, surveys.open_survey, newer)
    services.run(PUBLISHER, surveys.open_survey, older)
    closed = [services.run(PUBLISHER, surveys.close_survey, None).id for _ in range(3)]
    assert closed == [1, older, newer]
    with pytest.raises(votes.NoSuchSurvey, match="no survey is open"):
        services.run(PUBLISHER, surveys.close_survey, None)


def test_the_migration_keeps_every_stored_survey_as_config_tomls(database_url: str) -> None:
    """0010 on a database with surveys: each came from config.toml and was open from the
    moment it was made; going back keeps an editor's draft, as a closed survey."""
    engine = db.make_engine(database_url)
    config = db._alembic_config(engine)
    command.upgrade(config, "0009")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO surveys (key, question, status, created_at, closed_at) VALUES "
                "('old', 'Old?', 'closed', '2017-03-01 08:00:00', '2017-04-01 08:00:00'), "
                "('now', 'Now?', 'open', '2017-04-01 08:00:00', NULL)"
            )
        )
    command.upgrade(config, "0010")
    with engine.begin() as conn:
        found = conn.execute(
            text("SELECT key, source, status, opened_at = created_at FROM surveys ORDER BY id")
        ).all()
        assert [tuple(row) for row in found] == [
            ("old", "config", "closed", True),
            ("now", "config", "open", True),
        ]
        conn.execute(
            text(
                "INSERT INTO surveys (key, question, status, source, created_at) "
                "VALUES ('desk-3', 'Draft?', 'draft', 'desk', '2026-01-01 08:00:00')"
            )
        )
    command.downgrade(config, "0009")
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT key, status FROM surveys ORDER BY id")).all()
        assert [tuple(row) for row in statuses] == [
            ("old", "closed"),
            ("now", "open"),
            ("desk-3", "closed"),
        ]
    engine.dispose()


def test_the_next_issues_choice_picks_its_survey(
    services: Services, sessions: sessionmaker[Session], site: Path
) -> None:
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    made = make(services, "Which section first?", "People watch", "Firms")
    services.run(PUBLISHER, surveys.open_survey, made)
    config_question = "which is the most important factor"
    assert config_question in services.read(issues.preview_html)  # the default: config.toml's
    services.run(PUBLISHER, drafts.save, survey="none")
    html = services.read(issues.preview_html)
    assert config_question not in html
    assert "Which section first?" not in html
    services.run(PUBLISHER, drafts.save, survey=str(made))
    assert "Which section first?" in services.read(issues.preview_html)
    released = services.run(PUBLISHER, issues.release_next)
    with sessions() as s:
        issue = s.get(Issue, released.issue_id)
        assert issue is not None
        assert issue.survey_id == made
