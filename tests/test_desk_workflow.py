"""An editor's whole week in headless Chromium: write, shape, test, schedule, send, mend.

Sign in, write an item, add an editor's note and a subject, reorder two items, hold one,
preview at 375 px, send a test and find it in the recording SMTP server as set (the note,
the order, the subject, no held item); schedule the issue two minutes ahead and, with the
app's clock moved on, see it go out; then find on the issue's page the failure the SMTP
server injected, with its code and text, retry it and see it delivered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
import zoneinfo
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect
from sqlalchemy import select

from newsletter.storage import db
from newsletter.storage.models import AuditEntry, Delivery, DeliveryStatus, Issue, utcnow
from newsletter.web.app import create_app
from tests.browser import browser, live_server, page  # noqa: F401
from tests.smtpd import RecordingHandler
from tests.test_desk import EDITOR, PASSWORD, desk_settings, fill

WRITTEN = "Shenzhen court sets a record in a design patent case"
FIRST_SEED = "IP-Silk Road Russian-Chinese IP Center Established in December 17"
HELD = "Xiaomi and Nokia Signs Patent Licensing Agreement to Explore Artificial Intelligence"
FAILING = "li.wei@example.org"


class Clock:
    """The app's clock: real time plus whatever the test moved it on by."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def body_of(message: RecordingHandler, index: int) -> tuple[str, str]:
    parsed = message.messages[index].parse()
    html = parsed.get_body(preferencelist=("html",))
    assert html is not None
    return str(parsed["Subject"]), html.get_content()


def test_an_editor_writes_shapes_schedules_and_mends_an_issue(
    page: Page,  # noqa: F811
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    settings = desk_settings(site, f"sqlite:///{tmp_path / 'desk.db'}", smtp_server.port)
    # Quick background rounds (a third of the vote window), and a failure that is final at
    # once: the first retry would come after the deadline, so the row is failed, not deferred.
    settings = dataclasses.replace(
        settings,
        web=dataclasses.replace(settings.web, vote_window_seconds=3.0),
        delivery=dataclasses.replace(
            settings.delivery, retry_base_seconds=3600.0, retry_deadline_hours=0.5
        ),
    )
    sessions = db.open_database(settings.database_url)
    fill(sessions, site)
    smtp_server.faults[FAILING] = ["451"]  # the first attempt refused, the next accepted
    clock = Clock()
    shots = Path(os.environ.get("NEWSLETTER_SHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with live_server(create_app(settings, sessions, clock=clock)) as base:
        page.goto(f"{base}/desk/login")
        page.get_by_label("Name").fill(EDITOR)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"{base}/desk")

        # Write an item, watching the live preview follow the Markdown.
        page.goto(f"{base}/desk/next")
        page.click("#write-item")
        page.get_by_label("Title").fill(WRITTEN)
        page.get_by_label("Section").fill("Comprehensive Reports")
        page.get_by_label("Text (Markdown)").fill("The court awarded **record** damages.")
        expect(page.locator("#item-preview strong")).to_have_text("record")
        page.screenshot(path=str(shots / "item-editor.png"), full_page=True)
        page.click("#save-item")
        expect(page.locator("#notice")).to_contain_text("written")

        # The note and the subject.
        page.locator("#subject").fill("This week: a record in Shenzhen")
        page.locator("#note").fill("Dear members, *three* things this week.")
        page.click("#save-draft")
        expect(page.locator("#notice")).to_contain_text("saved")

        # The written item is newest, so first, the newest seed item second: swap them.
        rows = page.locator("#next-items tbody tr")
        expect(rows.nth(0)).to_contain_text(WRITTEN)
        expect(rows.nth(1)).to_contain_text(FIRST_SEED)
        page.get_by_role("button", name=f"Move {FIRST_SEED} up").click()
        expect(page.locator("#notice")).to_contain_text("order is saved")
        expect(rows.nth(0)).to_contain_text(FIRST_SEED)
        expect(rows.nth(1)).to_contain_text(WRITTEN)

        # Hold one back.
        page.get_by_role("button", name=f"Hold {HELD}").click()
        expect(page.locator("#notice")).to_contain_text("held")
        expect(page.locator("tr.held")).to_contain_text(HELD)

        # The preview at 375 px shows the note, the order, and not the held item.
        frame = page.frame_locator("#preview-375")
        expect(frame.locator("body")).to_contain_text("three things this week")
        assert page.locator("#preview-375").bounding_box()["width"] == 375  # type: ignore[index]
        page.screenshot(path=str(shots / "next-issue.png"), full_page=True)

        # A test copy to ourselves.
        page.get_by_label("Send a test to").fill("proof@example.org")
        page.click("#send-test")
        expect(page.locator("#notice")).to_contain_text("test message sent to proof@example.org")
        (test,) = [m for m in smtp_server.messages if m.rcpt_to == "proof@example.org"]
        subject, html = body_of(smtp_server, smtp_server.messages.index(test))
        assert subject == "[TEST] This week: a record in Shenzhen"
        assert "three</em> things this week" in html
        assert html.index(FIRST_SEED) < html.index(WRITTEN)
        assert HELD not in html

        # Schedule it two minutes ahead, in the list's time zone.
        zone = zoneinfo.ZoneInfo(settings.list.timezone)
        at = (clock() + dt.timedelta(minutes=2)).astimezone(zone)
        page.get_by_label(f"Send at ({settings.list.timezone})").fill(f"{at:%Y-%m-%dT%H:%M}")
        page.click("#schedule")
        expect(page.locator("#notice")).to_contain_text("goes out at")
        expect(page.locator("#audience")).to_contain_text("scheduled for")
        time.sleep(1.5)  # a background round passes: not due yet, nothing goes out
        with sessions() as s:
            assert s.scalars(select(Issue)).all() == []
        clock.offset = dt.timedelta(minutes=3)  # ... and now it is

        def members_reached() -> bool:
            return {m.rcpt_to for m in smtp_server.messages} >= {
                "wang.fang@example.org",
                "chen.jie@example.org",
                "maria.garcia@example.org",
            }

        wait_until(members_reached, "the scheduled issue to go out")
        with sessions() as s:
            issue = s.scalars(select(Issue)).one()
            assert issue.subject == "This week: a record in Shenzhen"

        # The issue's page: the injected failure with its code and text; retry it.
        def failed_row() -> bool:
            with sessions() as s:
                return bool(
                    s.scalars(
                        select(Delivery).where(Delivery.status == DeliveryStatus.FAILED)
                    ).all()
                )

        wait_until(failed_row, "the refused delivery to be recorded as failed")
        page.goto(f"{base}/desk")
        page.get_by_role("link", name="This week: a record in Shenzhen").click()
        failures = page.locator("#issue-failures")
        expect(failures).to_contain_text("451")
        expect(failures).to_contain_text("Temporary local problem")
        page.screenshot(path=str(shots / "issue.png"), full_page=True)
        page.click("#retry")
        expect(page.locator("#notice")).to_contain_text("retried")
        wait_until(
            lambda: any(m.rcpt_to == FAILING for m in smtp_server.messages), "the retried delivery"
        )
        with sessions() as s:
            row = s.scalars(select(Delivery).where(Delivery.status == DeliveryStatus.FAILED)).all()
            assert row == []
        # The audit log: a row for each of the editor's actions above, in order, with its
        # detail, and the scheduled release by the scheduler.
        with sessions() as s:
            log = [
                (a.actor, a.action, a.detail)
                for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))
                if a.actor != "test"
            ]
    assert [(actor, action) for actor, action, _ in log] == [
        (EDITOR, "login"),
        (EDITOR, "write-item"),
        (EDITOR, "edit-draft"),
        (EDITOR, "reorder-items"),
        (EDITOR, "hold-item"),
        (EDITOR, "test-send"),
        (EDITOR, "schedule"),
        ("scheduler:send-at", "release"),
        (EDITOR, "retry"),
    ]
    details = {action: detail for _, action, detail in log}
    assert WRITTEN in details["write-item"]
    assert "subject" in details["edit-draft"]
    assert "note" in details["edit-draft"]
    assert HELD in details["hold-item"]
    assert "proof@example.org" in details["test-send"]
    assert f"{at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC" in details["schedule"]
    assert details["retry"] == "1 failed deliveries queued again"
    sessions.kw["bind"].dispose()
