"""The members' pages in headless Chromium: add a member, edit them, unsubscribe them on request,
export the list (a real download), erase them, and import a Mailchimp export through the
mapping step, in which the erased address is refused by its line."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.storage import db
from newsletter.storage.models import AuditEntry, Member
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


def test_managing_members_in_chromium(
    page: Page,  # noqa: F811
    desk_site: tuple[Settings, sessionmaker[Session]],
    tmp_path: Path,
) -> None:
    settings, sessions = desk_site
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            problems.append(message.text)

    page.on("console", on_console)
    with live_server(create_app(settings, sessions)) as base:
        page.goto(f"{base}/desk/login")
        page.fill("input[name=name]", EDITOR)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.get_by_role("link", name="Members").click()
        expect(page.locator("#matching")).to_have_text("6 members match.")

        # Add, by the labels a person reads.
        page.get_by_label("Address", exact=True).fill("Reader@Example.org")
        page.get_by_label("Name", exact=True).fill("Rea Der")
        page.click("#add-member")
        expect(page.locator("#notice")).to_have_text("reader@example.org added")
        expect(page.locator("h1")).to_have_text("reader@example.org")

        # Edit the name and the attributes.
        page.get_by_label("Name", exact=True).fill("Rhea Der")
        page.locator("#attributes").fill("company = Example IP\ncity = Xi'an")
        page.click("#save")
        expect(page.locator("#notice")).to_have_text("saved")
        expect(page.locator("#attributes")).to_have_value("city = Xi'an\ncompany = Example IP")

        # Unsubscribe on request, with the reason.
        page.get_by_label("Reason for the audit log: how they asked").fill("asked on the phone")
        page.click("#do-unsubscribe")
        expect(page.locator("#notice")).to_contain_text("is unsubscribed")
        expect(page.locator("#status")).to_have_text("unsubscribed")

        # Export: a real download of the CSV.
        page.get_by_role("link", name="All members").click()
        with page.expect_download() as download_info:
            page.click("#export-csv")
        download = download_info.value
        assert download.suggested_filename == "members.csv"
        saved = tmp_path / "members.csv"
        download.save_as(saved)
        rows = {r[0]: r for r in csv.reader(io.StringIO(saved.read_text(encoding="utf-8")))}
        assert rows["reader@example.org"][:3] == ["reader@example.org", "Rhea Der", "unsubscribed"]

        # Erase: refused until the box is ticked (the browser asks first), then done.
        page.get_by_role("link", name="reader@example.org").click()
        page.get_by_label("Reason for the audit log: their request, a ticket").fill(
            "GDPR request 41"
        )
        page.get_by_label("Erase reader@example.org for good").check()
        page.click("#do-erase")
        expect(page.locator("#notice")).to_contain_text("erased")
        expect(page.locator("h1")).to_contain_text("(erased)")
        expect(page.locator("main")).not_to_contain_text("reader@example.org")

        # Import a Mailchimp export that brings the address back: the mapping step first.
        mailchimp = tmp_path / "mailchimp.csv"
        mailchimp.write_text(
            "Email Address;First Name;Last Name;OPTIN_IP;NOTES\n"
            "reader@example.org;Rea;Der;192.0.2.1;\n"
            "mc.new@example.org;Mo;Chen;192.0.2.2;met at the fair\n",
            encoding="utf-8",
        )
        page.get_by_role("link", name="All members").click()
        page.get_by_label("CSV file").set_input_files(str(mailchimp))
        page.click("#upload")
        expect(page.locator("#layout")).to_contain_text("Mailchimp, semicolon-separated")
        expect(page.get_by_label("OPTIN_IP")).to_have_value("skip")
        page.get_by_label("NOTES").select_option("skip")
        page.screenshot(path=str(tmp_path / "mapping.png"), full_page=True)
        page.click("#run-import")
        expect(page.locator("#import-report")).to_contain_text("1 added")
        expect(page.locator(".import-errors")).to_contain_text(
            "line 2: reader@example.org was erased at the member's request"
        )
    assert not problems, problems
    with sessions() as s:
        new = s.scalar(select(Member).where(Member.email == "mc.new@example.org"))
        assert new is not None
        assert (new.name, new.attributes) == ("Mo Chen", {})  # NOTES skipped as chosen
        actions = [
            a.action
            for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))
            if a.actor == EDITOR
        ]
    assert actions == [
        "login",
        "add-member",
        "edit-member",
        "unsubscribe-member",
        "export-members",
        "erase-member",
        "import-members",
    ]
