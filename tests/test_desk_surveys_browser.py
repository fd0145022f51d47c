"""The desk's survey pages in headless Chromium: make a survey with the form, have it refused and
corrected, open it, and see its chart, all under the desk's Content-Security-Policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.storage import db
from newsletter.web.app import create_app
from tests.browser import browser, live_server, page  # noqa: F401
from tests.test_desk import EDITOR, PASSWORD, desk_settings, fill


@pytest.fixture
def desk_site(site: Path, tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    settings = desk_settings(site, f"sqlite:///{tmp_path / 'desk.db'}", 8025)
    sessions = db.open_database(settings.database_url)
    fill(sessions, site)
    yield settings, sessions
    sessions.kw["bind"].dispose()


def test_making_and_opening_a_survey_in_chromium(
    page: Page,  # noqa: F811
    desk_site: tuple[Settings, sessionmaker[Session]],
    tmp_path: Path,
) -> None:
    settings, sessions = desk_site
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", on_console)
    with live_server(create_app(settings, sessions)) as base:
        page.goto(f"{base}/desk/login")
        page.fill("input[name=name]", EDITOR)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.goto(f"{base}/desk/surveys")
        page.click("#new-survey")
        expect(page.locator("h1")).to_have_text("Make a survey")
        # Labels name every field: fill them by what a person reads.
        page.get_by_label("Question").fill("Which section should come first?")
        page.get_by_label("Option 1", exact=True).fill("People watch")
        page.get_by_label("Option 2", exact=True).fill("Firms")
        page.get_by_label("Option 3", exact=True).fill("people  WATCH")
        page.click("#make-survey")
        expect(page.locator("#error")).to_have_text("option 3: repeats option 1")
        expect(page.get_by_label("Option 2", exact=True)).to_have_value("Firms")  # kept
        page.get_by_label("Option 3", exact=True).fill("Inquiry and Assessment")
        page.click("#make-survey")
        expect(page.locator("#notice")).to_contain_text("survey #2 made as a draft")
        expect(page.locator("h1")).to_have_text("Survey #2 (draft)")
        page.click("#survey-actions button[value=open]")
        expect(page.locator("#notice")).to_have_text("survey #2 is open")
        expect(page.locator(".chart .row")).to_have_count(3)
        page.screenshot(path=str(tmp_path / "survey.png"), full_page=True)
        page.goto(f"{base}/desk/surveys")
        expect(page.locator("#survey-2")).to_have_attribute("data-status", "open")
        page.screenshot(path=str(tmp_path / "surveys.png"), full_page=True)
    # (The refused form's 400 and the missing favicon's 404 are logged too: not problems.)
    assert not [p for p in problems if "Content Security Policy" in p], problems
