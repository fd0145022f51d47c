"""The members' board in headless Chromium, on SQLite and PostgreSQL, with the app's mailer sending
into a recording SMTP server: a member signs in by an emailed link and posts, an editor approves
on the desk, another member replies and the first gets the notice; a non-member cannot post;
mail scanners (HEAD and GET of every link, then the page with its script run) sign nobody in."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.services import board, members, moderation, sending
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.storage.models import AuditEntry, BoardSignin
from newsletter.web.app import create_app
from newsletter.web.auth import MEMBER_COOKIE
from tests import steps
from tests.boardsite import LI, REPO, WANG, Clock, html_of, parse, text_of
from tests.browser import browser, live_server, page  # noqa: F401
from tests.smtpd import RecordingHandler
from tests.test_cli import free_port
from tests.test_desk import EDITOR, PASSWORD, desk_settings

SEED = "Only our members can leave a message, so please register or login."
LINK = re.compile(r'href="(http://127\.0\.0\.1:\d+/[^"]+)"')


@dataclass
class Live:
    url: str
    settings: Settings
    sessions: sessionmaker[Session]
    smtp: RecordingHandler
    clock: Clock

    def mail(self, to: str, subject: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        """The messages to `to` whose subject has `subject`, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                m.data
                for m in self.smtp.by_recipient().get(to, [])
                if subject in str(m.parse()["Subject"])
            ]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"no {subject!r} mail to {to}"
            time.sleep(0.05)

    def sign_ins(self) -> int:
        with self.sessions() as s:
            query = select(func.count()).select_from(AuditEntry)
            return int(s.scalar(query.where(AuditEntry.action == "sign-in")) or 0)


@pytest.fixture
def live(site: Path, database_url: str, smtp_server: RecordingHandler) -> Iterator[Live]:
    port = free_port()
    settings = desk_settings(site, database_url, smtp_server.port)
    settings = dataclasses.replace(
        settings, list=dataclasses.replace(settings.list, base_url=f"http://127.0.0.1:{port}")
    )
    sessions = db.open_database(settings.database_url)
    services = Services(settings, sessions)
    members.import_file(services, REPO / "subscribers" / "example.csv", actor="test")
    clock = Clock()
    with live_server(create_app(settings, sessions, clock=clock), port=port) as url:
        yield Live(url, settings, sessions, smtp_server, clock)
    sessions.kw["bind"].dispose()


def link_in(data: bytes, path: str) -> str:
    found = re.search(rf"http://\S+/{path}/[A-Za-z0-9_-]+", text_of(parse(data)))
    assert found, f"no /{path}/ link"
    return found.group(0)


def ask_for_link(tab: Page, live: Live, email: str, subject: str = "Sign in to") -> str:
    """The member asks for a sign-in link on the site (its form is in the list's language);
    the link in the mail that arrives (in the member's: `subject` starts its Subject)."""
    had = len(live.smtp.by_recipient().get(email, []))
    tab.goto(f"{live.url}/board")
    tab.get_by_role("link", name="login").click()
    tab.get_by_label("Email address").fill(email)
    tab.get_by_role("button", name="Send me a sign-in link").click()
    expect(tab.locator("h1")).to_have_text("Check your inbox")
    return link_in(live.mail(email, subject, had + 1)[-1], "s")


def sign_in(tab: Page, live: Live, email: str, *, chinese: bool = False) -> None:
    """Sign in as the member; `chinese`: the member reads Chinese (王芳, in the sample)."""
    tab.goto(ask_for_link(tab, live, email, "登录" if chinese else "Sign in to"))
    tab.get_by_role("button", name="登录" if chinese else "Sign in").click()
    expect(tab.locator("p.done")).to_have_text("您已登录。" if chinese else "You are signed in.")


def new_page(browser: Browser) -> tuple[BrowserContext, Page]:  # noqa: F811
    context = browser.new_context(java_script_enabled=True)
    return context, context.new_page()


@pytest.mark.slow
def test_sign_in_post_approve_reply_and_the_notice(
    browser: Browser,  # noqa: F811
    page: Page,  # noqa: F811
    live: Live,
    tmp_path: Path,
) -> None:
    # Wang has posted before: her reply goes on the board at once.
    services = Services(live.settings, live.sessions)
    services.run("test", board.post, 2, 0, "An earlier message of Wang's", ip="192.0.2.2")
    services.run("test", moderation.approve, 1)

    sign_in(page, live, LI)
    expect(page.locator(".me")).to_contain_text("Signed in as Li Wei")
    page.get_by_label("Leave a message").fill("Has anyone pledged a **patent** as collateral?")
    page.get_by_role("button", name="Post", exact=True).click()
    expect(page.locator("p.done")).to_contain_text("waits for an editor's approval")
    expect(page.get_by_text("Has anyone pledged")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "board-held.png"), full_page=True)

    editor_context, editor = new_page(browser)
    try:
        editor.goto(f"{live.url}/desk/login")
        editor.fill("input[name=name]", EDITOR)
        editor.fill("input[name=password]", PASSWORD)
        editor.click("button[type=submit]")
        editor.get_by_role("link", name="Board").click()
        item = editor.locator(".queue-item", has_text="Has anyone pledged")
        expect(item).to_contain_text("held")
        item.get_by_role("button", name="Approve").click()
        expect(editor.locator("#notice")).to_contain_text("is on the board")
    finally:
        editor_context.close()

    page.goto(f"{live.url}/board")
    expect(page.locator(".said strong")).to_have_text("patent")

    wang_context, wang = new_page(browser)
    try:
        # 王芳 reads Chinese (subscribers/example.csv): her mail and board are in Chinese.
        sign_in(wang, live, WANG, chinese=True)
        expect(wang.locator("html")).to_have_attribute("lang", "zh-Hans")
        wang.locator(".thread", has_text="Has anyone pledged").locator(".thread-link a").click()
        wang.get_by_label("您的回复").fill("We did, in *Shanghai*, last year.")
        wang.get_by_role("button", name="回复", exact=True).click()
        expect(wang.locator("p.done")).to_have_text("您的留言已发布到留言板。")
        expect(wang.locator(".replies em")).to_have_text("Shanghai")
        wang.screenshot(path=str(tmp_path / "board-thread.png"), full_page=True)
    finally:
        wang_context.close()

    (notice,) = live.mail(LI, "A reply to your message")
    msg = parse(notice)
    assert "王芳 replied to your message" in text_of(msg)
    assert "<em>Shanghai</em>" in html_of(msg)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_non_member_sees_the_sentence_and_cannot_post(
    browser: Browser,  # noqa: F811
    page: Page,  # noqa: F811
    live: Live,
) -> None:
    page.goto(f"{live.url}/board")
    expect(page.locator("p.gate")).to_have_text(SEED)
    expect(page.get_by_role("link", name="register")).to_have_attribute("href", "/subscribe")
    expect(page.get_by_role("link", name="login")).to_have_attribute("href", "/signin")
    expect(page.locator("textarea")).to_have_count(0)
    forged: dict[str, str | float | bool] = {"body": "Let me in", "csrf": "AQkBAQE" + "A" * 20}
    refused = page.request.post(f"{live.url}/board", form=forged)
    assert refused.status == 403
    assert SEED in refused.text()
    page.context.add_cookies(
        [{"name": MEMBER_COOKIE, "value": "AQgBAQEB" + "x" * 22, "url": live.url}]
    )
    assert page.request.post(f"{live.url}/board", form=forged).status == 403
    assert page.request.post(f"{live.url}/board/1", form=forged).status == 403
    with live.sessions() as s:
        assert s.scalar(select(func.count()).select_from(BoardSignin)) == 0
    assert live.sign_ins() == 0


def scan(tab: Page, links: list[str], clock: Clock) -> None:
    """What a mail scanner does: HEAD and GET of every link within two seconds, then each page
    loaded in a browser that runs its script (and has no person to press anything)."""
    for url in links:
        # A redirect (an issue's /r/ link) is not followed: its target is elsewhere, and
        # tests reach only loopback.
        assert tab.request.head(url, max_redirects=0).status < 400, url
        assert tab.request.get(url, max_redirects=0).status < 400, url
        clock.advance(seconds=0.01)
    for url in links:
        if "/r/" not in url:
            tab.goto(url)
            tab.wait_for_load_state("networkidle")


def no_session(tab: Page) -> bool:
    return all(c["name"] != MEMBER_COOKIE for c in tab.context.cookies())


def test_a_scanner_on_a_sign_in_mail_signs_nobody_in(
    browser: Browser,  # noqa: F811
    page: Page,  # noqa: F811
    live: Live,
) -> None:
    asked = page.request.post(f"{live.url}/signin", form={"email": LI})
    assert asked.status == 200
    (mail,) = live.mail(LI, "Sign in to")
    every = LINK.findall(html_of(parse(mail)))
    assert any("/s/" in u for u in every)
    scan(page, every, live.clock)
    assert live.sign_ins() == 0
    assert no_session(page)
    with live.sessions() as s:
        assert s.scalar(select(BoardSignin.used_at)) is None
    # A minute later the member opens it and presses the button: the link still works.
    live.clock.advance(minutes=1)
    person_context, person = new_page(browser)
    try:
        person.goto(link_in(mail, "s"))
        person.get_by_role("button", name="Sign in").click()
        expect(person.locator("p.done")).to_have_text("You are signed in.")
        assert not no_session(person)
    finally:
        person_context.close()
    assert live.sign_ins() == 1


def test_a_scanner_on_an_issue_with_the_board_link_signs_nobody_in(
    page: Page,  # noqa: F811
    live: Live,
    site: Path,
) -> None:
    steps.import_source(live.sessions, str(site / "examples" / "seed-feed.xml"))
    services = Services(live.settings, live.sessions)

    def send() -> None:
        asyncio.run(sending.send(services, actor="test"))

    run_in_thread(send)
    messages = [m for m in live.smtp.messages if "/b/" in html_of(m.parse())]
    assert len(messages) == 5
    every = [u for m in messages for u in LINK.findall(html_of(m.parse()))]
    assert sum("/b/" in u for u in every) == 5
    assert any("/r/" in u for u in every)  # the items' links: redirects, fetched unfollowed
    scan(page, every, live.clock)
    assert live.sign_ins() == 0
    assert no_session(page)
    page.goto(f"{live.url}/board")
    expect(page.locator("p.gate")).to_have_text(SEED)


def run_in_thread(work: Callable[[], None]) -> None:
    # Playwright's sync API marks its own event loop as running in this thread.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pool.submit(work).result()
