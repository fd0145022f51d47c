"""The editor's desk in headless Chromium: log in, preview at two widths, a test send, send now."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.storage import db
from newsletter.web.app import create_app
from tests.browser import browser, live_server, page  # noqa: F401
from tests.smtpd import RecordingHandler
from tests.test_desk import EDITOR, PASSWORD, desk_settings, fill


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


@pytest.fixture
def desk_site(
    site: Path, tmp_path: Path, smtp_server: RecordingHandler
) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    settings = desk_settings(site, f"sqlite:///{tmp_path / 'desk.db'}", smtp_server.port)
    sessions = db.open_database(settings.database_url)
    fill(sessions, site)
    yield settings, sessions
    sessions.kw["bind"].dispose()


def test_the_desk_in_chromium(
    page: Page,  # noqa: F811
    desk_site: tuple[Settings, sessionmaker[Session]],
    smtp_server: RecordingHandler,
    tmp_path: Path,
) -> None:
    settings, sessions = desk_site
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", on_console)
    with live_server(create_app(settings, sessions)) as base:
        # Log in: the desk sends a stranger to the login form first.
        page.goto(f"{base}/desk")
        assert page.url == f"{base}/desk/login"
        page.fill("input[name=name]", EDITOR)
        page.fill("input[name=password]", "wrong")
        page.click("button[type=submit]")
        expect(page.locator(".error")).to_contain_text("Wrong name or password")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Issues")

        # The preview in two frames, 600 px and 375 px wide.
        page.goto(f"{base}/desk/preview")
        shots = {}
        for width in (600, 375):
            frame = page.locator(f"#preview-{width}")
            content = frame.content_frame
            expect(content.locator("body")).to_contain_text("Xiaomi")
            shots[width] = tmp_path / f"preview-{width}.png"
            frame.screenshot(path=str(shots[width]))
        sizes = {w: png_size(p) for w, p in shots.items()}
        assert all(p.stat().st_size > 1000 for p in shots.values())
        assert sizes[600][0] != sizes[375][0]
        assert abs(sizes[600][0] - 602) <= 2
        assert abs(sizes[375][0] - 377) <= 2  # 1 px borders

        # A test to one address: the only message the server receives.
        page.goto(f"{base}/desk")
        page.fill("#test-to", "proof@example.org")
        page.click("#send-test")
        expect(page.locator("#notice")).to_contain_text("test message sent to proof@example.org")
        assert [m.rcpt_to for m in smtp_server.messages] == ["proof@example.org"]
        assert str(smtp_server.messages[0].parse()["Subject"]).startswith("[TEST] ")

        # Send now, with a slow server, and watch the list's progress reach 100%.
        smtp_server.delay_seconds = 0.4
        page.click("#send-now")
        expect(page.locator("#send-summary")).to_contain_text("goes to 5 members")
        page.click("#confirm-send")
        expect(page.locator("#notice")).to_contain_text("sending started")
        progress = page.locator('progress[data-issue="1"]')
        expect(progress).to_be_visible(timeout=10_000)
        expect(page.locator("#issue-1 .percent")).to_have_text("100%", timeout=20_000)
        expect(progress).to_have_js_property("value", 100)
        expect(page.locator("#issue-1 .status")).to_contain_text("sent")
        assert smtp_server.count() == 1 + 5
    assert not [p for p in problems if "Content Security Policy" in p], problems
