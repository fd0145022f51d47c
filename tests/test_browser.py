"""The member pages in headless Chromium, starting from the messages `newsletter demo` delivered."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config
from newsletter.delivery.sink import ServerThread
from newsletter.services import clicks
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.storage.models import (
    ClickCount,
    ClickHit,
    Delivery,
    Member,
    MemberClick,
    Vote,
    utcnow,
)
from newsletter.web.app import create_app
from tests.browser import live_server
from tests.checks import parse
from tests.smtpd import RecordingHandler
from tests.test_cli import free_port

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r'href="(http://127\.0\.0\.1:\d+/[^"]+)"')


@dataclass
class Demo:
    site: Path
    port: int
    html: dict[str, str]  # member address → the HTML part of the message they received


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """A site whose `newsletter demo` run delivered the sample issue into var/outbox/."""
    site = tmp_path_factory.mktemp("browser") / "site"
    site.mkdir()
    shutil.copy(REPO / "config.toml", site / "config.toml")
    shutil.copytree(REPO / "examples", site / "examples")
    (site / "subscribers").mkdir()
    shutil.copy(REPO / "subscribers" / "example.csv", site / "subscribers" / "example.csv")
    port = free_port()
    text = (site / "config.toml").read_text()
    text = text.replace(
        'base_url = "http://127.0.0.1:8000"', f'base_url = "http://127.0.0.1:{port}"'
    )
    text = text.replace("port = 8025", f"port = {free_port()}")
    (site / "config.toml").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "demo"],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    html: dict[str, str] = {}
    for path in (site / "var" / "outbox").glob("*.eml"):
        msg = parse(path.read_bytes().split(b"\r\n", 2)[2])
        part = msg.get_body(preferencelist=("html",))
        assert part is not None
        html[msg["To"].addresses[0].addr_spec] = part.get_content()
    assert len(html) == 5
    return Demo(site, port, html)


class Clock:
    """The app's clock: ten minutes after the send, unless a test moves it."""

    def __init__(self) -> None:
        self.now = utcnow() + dt.timedelta(minutes=10)

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class Served:
    url: str
    clock: Clock
    sessions: sessionmaker[Session]
    smtp: RecordingHandler
    settings: config.Settings

    def status(self, email: str) -> str:
        with self.sessions() as s:
            return str(s.scalar(select(Member.status).where(Member.email == email)))

    def clicks(self, *, scanners: bool = False) -> int:
        with self.sessions() as s:
            column = ClickCount.scanners if scanners else ClickCount.people
            return int(s.scalar(select(func.coalesce(func.sum(column), 0))) or 0)

    def click_rows(self) -> int:
        with self.sessions() as s:
            hits = s.scalar(select(func.count()).select_from(ClickHit)) or 0
            kept = s.scalar(select(func.count()).select_from(MemberClick)) or 0
            return int(hits + kept)

    def settle_clicks(self, fetches: int) -> None:
        """Once `fetches` link fetches wait to be decided (a redirect answers before its fetch
        is stored), run the click rule as `serve` does in the background, at the app's time;
        then again past the settle window, which purges the evidence."""
        deadline = time.monotonic() + 10
        while True:
            with self.sessions() as s:
                waiting = s.scalar(
                    select(func.count()).select_from(ClickHit).where(ClickHit.decided.is_(False))
                )
            if (waiting or 0) >= fetches:
                break
            assert time.monotonic() < deadline, f"{waiting} fetches stored, not {fetches}"
            time.sleep(0.05)
        services = Services(self.settings, self.sessions, clock=self.clock)
        services.run("system", clicks.settle)
        self.clock.now += dt.timedelta(minutes=2)
        services.run("system", clicks.settle)

    def counted(self, email: str) -> int | None:
        with self.sessions() as s:
            member_id = s.scalar(select(Member.id).where(Member.email == email))
            return s.scalar(select(Vote.option).where(Vote.member_id == member_id))


@pytest.fixture
def served(demo: Demo) -> Iterator[Served]:
    handler = RecordingHandler()
    with ServerThread(handler) as smtp:
        handler.port = smtp.port
        settings = config.load(
            demo.site / "config.toml",
            env={config.SECRET_FILE_ENV: str(demo.site / "var" / "secret.key")},
            overrides={"smtp": {"port": smtp.port}},
        )
        sessions = db.open_database(settings.database_url)
        clock = Clock()
        with live_server(create_app(settings, sessions, clock=clock), port=demo.port) as url:
            yield Served(url, clock, sessions, handler, settings)
        sessions.kw["bind"].dispose()


def links(demo: Demo, email: str, part: str) -> list[str]:
    return [u for u in LINK.findall(demo.html[email]) if f"/{part}/" in u]


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_vote_with_one_click(demo: Demo, served: Served, page: Page, tmp_path: Path) -> None:
    page.set_content(demo.html["li.wei@example.org"])  # the message, as the member reads it
    page.locator("a.option").nth(1).click()
    page.wait_for_url(re.compile(r"/v/"))
    assert page.locator("h1").inner_text() == "Your vote: Stability of ownership of the pledge"
    assert page.locator(".chart .row").count() == 3
    assert "(your vote)" in page.locator(".chart .mine").inner_text()
    page.screenshot(path=str(tmp_path / "vote.png"))
    # A person's hand on the page (a trusted pointer event) counts the vote at once.
    page.mouse.click(5, 300)
    wait_for(lambda: served.counted("li.wei@example.org") == 2)


def test_unsubscribe_button_and_rfc8058_post(demo: Demo, served: Served, page: Page) -> None:
    (link,) = links(demo, "wang.fang@example.org", "u")
    page.goto(link)
    assert page.locator("h1").inner_text() == "Unsubscribe?"
    assert served.status("wang.fang@example.org") == "active"  # the GET changed nothing
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_text("You are unsubscribed").wait_for()
    assert served.status("wang.fang@example.org") == "unsubscribed"
    page.get_by_role("button", name="Resubscribe").click()
    page.get_by_text("subscribed again").wait_for()
    assert served.status("wang.fang@example.org") == "active"

    (one_click,) = links(demo, "chen.jie@example.org", "u")
    response = page.request.post(one_click, form={"List-Unsubscribe": "One-Click"})
    assert response.status == 200
    assert served.status("chen.jie@example.org") == "unsubscribed"


def test_subscribe_then_confirm(served: Served, page: Page) -> None:
    page.goto(f"{served.url}/subscribe")
    page.get_by_label("Email address").fill("reader.new@example.org")
    page.get_by_label("Name (optional)").fill("新读者")
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_text("Check your inbox").wait_for()
    assert served.status("reader.new@example.org") == "pending"
    wait_for(lambda: served.smtp.count() == 1)
    text = served.smtp.messages[0].parse().get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    confirm = re.search(r"http://\S+/c/\S+", text)
    assert confirm is not None
    page.goto(confirm.group(0))
    assert served.status("reader.new@example.org") == "pending"
    page.get_by_role("button", name="Confirm subscription").click()
    page.get_by_text("You are subscribed").wait_for()
    assert served.status("reader.new@example.org") == "active"


def test_archive_and_search_render(served: Served, page: Page, tmp_path: Path) -> None:
    page.goto(f"{served.url}/archive")
    page.locator("ol.archive a").first.click()
    page.get_by_text("Kobalt Music Enters Into Strategic Licensing").first.wait_for()
    assert page.locator("a.option").count() == 3
    page.screenshot(path=str(tmp_path / "archive.png"), full_page=True)
    page.goto(f"{served.url}/search")
    page.get_by_role("searchbox").fill("patent licensing")
    page.get_by_role("button", name="Search").click()
    page.locator("ol.hits li").first.wait_for()
    assert "Xiaomi and Nokia" in page.locator("ol.hits").inner_text()
    assert page.locator("ol.hits mark").count() >= 2
    page.screenshot(path=str(tmp_path / "search.png"), full_page=True)


def test_scanner_in_a_browser_counts_nothing(demo: Demo, served: Served, page: Page) -> None:
    email = "john.smith@example.org"
    with served.sessions() as s:
        member_id = s.scalar(select(Member.id).where(Member.email == email))
        delivered = s.scalar(select(Delivery.sent_at).where(Delivery.member_id == member_id))
    assert delivered is not None
    served.clock.now = delivered + dt.timedelta(seconds=1)
    every = LINK.findall(demo.html[email])
    assert any("/t/" in u for u in every)  # the hidden link is there for scanners to find
    assert any("/r/" in u for u in every)  # the items' links go through redirects
    clicks_before = served.clicks()
    assert any("/p/" in u for u in every)  # and the preference link
    with served.sessions() as s:
        choices = s.execute(select(Member).where(Member.id == member_id)).scalar_one()
        before = (choices.language, choices.sections, choices.survey, choices.paused_until)
    for url in every:  # HEAD and GET of every link, then each page loaded with its script run
        # A redirect is not followed: its target is elsewhere, and tests reach only loopback.
        assert page.request.head(url, max_redirects=0).status < 400
        assert page.request.get(url, max_redirects=0).status < 400
    for url in every:
        if "/r/" not in url:
            page.goto(url)
            page.wait_for_load_state("networkidle")
    served.clock.now += dt.timedelta(seconds=120)
    page.goto(f"{served.url}/survey/1")  # settles pending clicks
    assert served.counted(email) is None
    assert served.status(email) == "active"
    served.settle_clicks(2 * sum(1 for u in every if "/r/" in u))
    people, scanners = served.clicks(), served.clicks(scanners=True)
    assert people == clicks_before  # not one of the redirect fetches counted as a person's
    assert scanners >= sum(1 for u in every if "/r/" in u)
    assert served.click_rows() == 0  # decided and gone: only counts remain
    with served.sessions() as s:
        choices = s.execute(select(Member).where(Member.id == member_id)).scalar_one()
        after = (choices.language, choices.sections, choices.survey, choices.paused_until)
    assert after == before  # a scanner that loads the preference page changes nothing
    # Five minutes later the member clicks one option; after the quiet period it counts.
    served.clock.now += dt.timedelta(minutes=5)
    page.goto(links(demo, email, "v")[2])
    served.clock.now += dt.timedelta(seconds=31)
    page.goto(f"{served.url}/survey/1")
    assert served.counted(email) == 3


def test_a_persons_click_on_an_items_link_counts_once(
    demo: Demo, served: Served, page: Page
) -> None:
    """A member opens the message minutes after delivery and clicks one item's link: the
    redirect takes Chromium to the report (served here by the test, since tests reach only
    this machine), and after the settle window the link counts one person more, and no row
    names the member."""
    email = "maria.garcia@example.org"
    redirects = [u for u in LINK.findall(demo.html[email]) if "/r/" in u]
    assert len(redirects) >= 3
    served.clock.now = utcnow() + dt.timedelta(minutes=10)
    before = served.clicks()
    page.route(
        "https://chinaip.example.org/**",
        lambda route: route.fulfill(
            status=200,
            content_type="text/html",
            body="<!DOCTYPE html><title>Report</title><h1>The report</h1>",
        ),
    )
    page.set_content(demo.html[email])  # the message, as a mail client shows it
    page.locator("a[href*='/r/']").nth(1).click()
    page.wait_for_url("https://chinaip.example.org/**")
    assert page.locator("h1").inner_text() == "The report"
    served.clock.now += dt.timedelta(seconds=31)
    served.settle_clicks(1)
    assert served.clicks() == before + 1
    assert served.click_rows() == 0
