"""The desk's survey pages on SQLite and PostgreSQL: making a survey, opening and closing it,
its results as a chart and its votes as CSV, and what a writer may and may not do there."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter.cli.main import app as cli
from newsletter.config import Settings
from newsletter.services import surveys, votes
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.web.app import create_app
from tests.snapshot import snapshot
from tests.test_desk import EDITOR, WRITER, audit_rows, desk_settings, fill, log_in

Desk = tuple[TestClient, Settings, sessionmaker[Session]]
INPUT = re.compile(r"<input (?![^>]*type=\"hidden\")[^>]*\bid=\"([^\"]+)\"")


@pytest.fixture
def desk(site: Path, database_url: str) -> Iterator[Desk]:
    settings = desk_settings(site, database_url, 8025)
    sessions = db.open_database(settings.database_url)
    fill(sessions, site)
    with TestClient(create_app(settings, sessions, background=False)) as c:
        yield c, settings, sessions
    sessions.kw["bind"].dispose()


def make(c: TestClient, csrf: str, question: str, *options: str) -> tuple[int, str]:
    r = c.post(
        "/desk/surveys/new",
        data={"csrf": csrf, "question": question, "option": list(options)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    found = re.match(r"/desk/surveys/(\d+)\?", location)
    assert found, location
    return int(found.group(1)), location


def test_a_publisher_makes_opens_and_closes_a_survey(desk: Desk) -> None:
    c, _, sessions = desk
    csrf = log_in(c)
    form = c.get("/desk/surveys/new")
    assert form.status_code == 200
    ids = INPUT.findall(form.text)
    assert len(ids) == 11  # the question and ten options
    for input_id in ids:
        assert f'<label for="{input_id}">' in form.text, input_id
    survey_id, location = make(c, csrf, "Which section first?", "People watch", "Firms", "", "")
    page = c.get(location)
    assert "survey #2 made as a draft" in page.text  # config.toml's survey is #1
    assert "Survey #2 (draft)" in page.text
    assert 'class="chart"' in page.text
    assert "People watch" in page.text
    assert audit_rows(sessions)[-1] == (EDITOR, "create-survey", None)

    listing = c.get("/desk/surveys")
    assert 'id="survey-2" data-status="draft"' in listing.text
    assert 'id="survey-1" data-status="open"' in listing.text
    # config.toml's survey is the default one, with its chart.
    assert '<a href="/desk/surveys/1">Survey #1</a>' in listing.text
    assert 'class="chart"' in listing.text

    opened = c.post(f"/desk/surveys/{survey_id}/open", data={"csrf": csrf})
    assert opened.status_code == 200
    assert "survey #2 is open" in opened.text
    again = c.post(f"/desk/surveys/{survey_id}/open", data={"csrf": csrf})
    assert 'class="notice error"' in again.text
    assert "already open" in again.text
    c.post("/desk/surveys/1/close", data={"csrf": csrf})
    listing = c.get("/desk/surveys")
    assert '<a href="/desk/surveys/2">Survey #2</a>: Which section first?' in listing.text
    closed = c.post(f"/desk/surveys/{survey_id}/close", data={"csrf": csrf})
    assert "survey #2 is closed" in closed.text
    assert "Reopen" in closed.text
    assert "No survey is open" in c.get("/desk/surveys").text
    assert audit_rows(sessions)[-3:] == [  # the refused open wrote nothing
        (EDITOR, "open-survey", None),
        (EDITOR, "close-survey", None),
        (EDITOR, "close-survey", None),
    ]
    bad = c.post("/desk/surveys/2/publish", data={"csrf": csrf})
    assert "unknown action &#39;publish&#39;" in bad.text
    assert c.get("/desk/surveys/99").status_code == 404
    assert c.post("/desk/surveys/99/open", data={"csrf": csrf}).status_code == 404


def test_a_refused_survey_comes_back_as_typed_with_the_reason(desk: Desk) -> None:
    c, _, sessions = desk
    csrf = log_in(c)
    before = snapshot(sessions)
    cases = [
        (("", "Yes", "No"), "question: is empty"),
        (("Which?\nBcc: x", "Yes", "No"), "question: must be one line"),
        (("Which?", "Yes"), "options: a survey has 2 to 10 options, not 1"),
        (("Which?", "Yes", "", "No"), "option 2: is empty"),  # a blank between: named
        (("Which?", "Yes", "No", " yes "), "option 3: repeats option 1"),
        (("Which?", "Yes", "N" * 201), "option 2: has 201 characters; at most 200"),
        (("Which?", *(f"o{i}" for i in range(11))), "not 11"),
    ]
    for (question, *options), reason in cases:
        r = c.post(
            "/desk/surveys/new", data={"csrf": csrf, "question": question, "option": options}
        )
        assert r.status_code == 400, (question, options)
        assert reason in r.text, (reason, r.text)
        for option in options[:10]:
            assert f'value="{option}"' in r.text  # what was typed is kept
    assert snapshot(sessions) == before
    # Without the form's token nothing is made either.
    r = c.post("/desk/surveys/new", data={"question": "Which?", "option": ["Yes", "No"]})
    assert r.status_code == 403
    assert snapshot(sessions) == before


def test_the_votes_download_is_what_the_cli_writes(desk: Desk, tmp_path: Path) -> None:
    c, settings, sessions = desk
    csrf = log_in(c)
    survey_id, _ = make(c, csrf, "Which section first?", "People watch", "Firms")
    c.post(f"/desk/surveys/{survey_id}/open", data={"csrf": csrf})
    services = Services(settings, sessions)
    for member, option in ((1, 2), (2, 1), (3, 2)):
        services.run(
            f"member:{member}", votes.click, survey_id, member, option, method="POST", person=True
        )
    page = c.get(f"/desk/surveys/{survey_id}")
    assert "3 members have voted." in page.text
    assert "67% · 2" in page.text
    download = c.get(f"/desk/surveys/{survey_id}/votes.csv")
    assert download.status_code == 200
    assert download.headers["content-type"] == "text/csv; charset=utf-8"
    assert download.headers["content-disposition"] == (
        f'attachment; filename="survey-{survey_id}-votes.csv"'
    )
    assert download.headers["x-content-type-options"] == "nosniff"
    out = tmp_path / "votes.csv"
    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(settings.config_path),
            "survey",
            "results",
            str(survey_id),
            "--csv",
            str(out),
        ],
        env={"NEWSLETTER_DATABASE_URL": settings.database_url, "NEWSLETTER_SECRET_KEY": "x" * 32},
    )
    assert result.exit_code == 0, result.output
    assert download.content == out.read_bytes()
    lines = download.text.splitlines()
    assert lines[0] == "email,option,label,counted_at"
    assert sorted(line.split(",")[2] for line in lines[1:]) == ["Firms", "Firms", "People watch"]


def test_a_writer_reads_surveys_but_may_not_make_open_close_or_export(desk: Desk) -> None:
    c, _, sessions = desk
    publisher_csrf = log_in(c)
    survey_id, _ = make(c, publisher_csrf, "Which section first?", "People watch", "Firms")
    writer = TestClient(c.app)
    csrf = log_in(writer, WRITER)
    before = snapshot(sessions)
    refused = {
        "new form": writer.get("/desk/surveys/new"),
        "make": writer.post(
            "/desk/surveys/new", data={"csrf": csrf, "question": "Q?", "option": ["A", "B"]}
        ),
        "open": writer.post(f"/desk/surveys/{survey_id}/open", data={"csrf": csrf}),
        "close": writer.post("/desk/surveys/1/close", data={"csrf": csrf}),
        "votes": writer.get(f"/desk/surveys/{survey_id}/votes.csv"),
    }
    for name, answer in refused.items():
        assert answer.status_code == 403, name
        assert "Not allowed" in answer.text, name
        assert f"{WRITER} is a writer" in answer.text, name
    assert snapshot(sessions) == before
    listing = writer.get("/desk/surveys")
    assert listing.status_code == 200
    assert 'id="survey-2"' in listing.text
    assert "/desk/surveys/new" not in listing.text
    assert '<form method="post" action="/desk/surveys/' not in listing.text
    page = writer.get(f"/desk/surveys/{survey_id}")
    assert page.status_code == 200
    assert 'class="chart"' in page.text
    assert "votes.csv" not in page.text


def test_a_draft_is_not_public_until_it_is_opened(desk: Desk) -> None:
    c, settings, sessions = desk
    csrf = log_in(c)
    survey_id, _ = make(c, csrf, "Which section first?", "People watch", "Firms")
    public = TestClient(c.app)
    assert public.get(f"/survey/{survey_id}").status_code == 404
    c.post(f"/desk/surveys/{survey_id}/open", data={"csrf": csrf})
    shown = public.get(f"/survey/{survey_id}")
    assert shown.status_code == 200
    assert "Which section first?" in shown.text
    # The default survey is still config.toml's, as the service says.
    default = Services(settings, sessions).read(surveys.default_survey)
    assert default is not None
    assert default.id == 1
