"""Member pages over HTTP (FastAPI's test client), on SQLite and PostgreSQL, with a simulated clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.storage.models import (
    LinkHit,
    Member,
    Survey,
    SurveyStatus,
    SystemMail,
    Vote,
    utcnow,
)
from newsletter.web.app import create_app
from tests import steps as publish
from tests.smtpd import RecordingHandler
from tests.steps import import_csv, import_source

LINK = re.compile(r'https?://[^\s"\'<>]+/(v|u|t|p|archive)/[^\s"\'<>]+')


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Site:
    settings: Settings
    sessions: sessionmaker[Session]
    client: TestClient
    clock: Clock
    links: dict[str, list[str]]  # member email → every link in their message, in order

    def path(self, url: str) -> str:
        return url.replace(self.settings.list.base_url, "")

    def votes_of(self, email: str) -> list[str]:
        return [self.path(u) for u in self.links[email] if "/v/" in u]

    def unsubscribe_of(self, email: str) -> str:
        return next(self.path(u) for u in self.links[email] if "/u/" in u)

    def counted(self) -> dict[int, int]:
        with self.sessions() as s:
            self.client.get("/survey/1")  # settles pending clicks first
            rows = s.execute(select(Vote.option)).scalars().all()
        return {o: rows.count(o) for o in set(rows) if o is not None}

    def status(self, email: str) -> str:
        with self.sessions() as s:
            return str(s.scalar(select(Member.status).where(Member.email == email)))


@pytest.fixture
def web(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> Iterator[Site]:
    import_csv(sessions, site / "subscribers" / "example.csv")
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    asyncio.run(publish.send(settings, sessions))
    links: dict[str, list[str]] = {}
    for rcpt, (message,) in smtp_server.by_recipient().items():
        html = message.parse().get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
        links[rcpt] = [m.group(0) for m in LINK.finditer(html)]
    clock = Clock()
    clock.advance(600)  # people read their mail some minutes after it arrives
    # As a context manager the client runs the app's lifespan: its mailer sends what is queued.
    with TestClient(create_app(settings, sessions, clock=clock)) as client:
        yield Site(settings, sessions, client, clock, links)


def wait_for_mail(smtp_server: RecordingHandler, count: int) -> None:
    """Until the server has `count` messages (the mailer sends queued mail moments after)."""
    deadline = time.monotonic() + 10
    while smtp_server.count() < count:
        assert time.monotonic() < deadline, f"{smtp_server.count()} messages, not {count}"
        time.sleep(0.01)


def members_choices(sessions: sessionmaker[Session]) -> list[tuple[Any, ...]]:
    """Every member's preferences, as the preference page sets them."""
    with sessions() as s:
        return [
            tuple(row)
            for row in s.execute(
                select(
                    Member.email,
                    Member.language,
                    Member.sections,
                    Member.survey,
                    Member.paused_until,
                    Member.new_email,
                    Member.variant_key,
                ).order_by(Member.id)
            )
        ]


def db_state(sessions: sessionmaker[Session]) -> tuple[Any, ...]:
    with sessions() as s:
        return (
            s.execute(select(LinkHit.id)).all(),
            s.execute(select(Vote.member_id, Vote.option, Vote.pending_option)).all(),
            s.execute(select(Member.email, Member.status)).all(),
        )


def test_one_click_votes_count_after_the_quiet_period(web: Site) -> None:
    second = web.votes_of("li.wei@example.org")[1]
    page = web.client.get(second)
    assert page.status_code == 200
    assert "Your vote: Stability of ownership of the pledge" in page.text
    assert "(your vote)" in page.text
    assert "1 member has voted" in page.text
    assert web.counted() == {}  # pending: the evidence is not in yet
    web.clock.advance(31)
    assert web.counted() == {2: 1}


def test_one_member_one_vote_last_choice_counts(web: Site) -> None:
    first, _, third = web.votes_of("wang.fang@example.org")
    web.client.get(first)
    web.clock.advance(120)
    web.client.get(third)
    web.clock.advance(120)
    other = web.votes_of("chen.jie@example.org")[0]
    web.client.get(other)
    web.clock.advance(31)
    assert web.counted() == {3: 1, 1: 1}


def test_the_change_form_and_a_person_on_the_page(web: Site) -> None:
    token_path = web.votes_of("maria.garcia@example.org")[0]
    web.client.get(token_path)
    # The page's script reports a trusted input event: counted at once.
    assert web.client.post(f"{token_path}/person").status_code == 204
    assert web.counted() == {1: 1}
    page = web.client.post(token_path, data={"option": "3", "person": "1"})
    assert "Your vote: Ownership and effectiveness of the pledge" in page.text
    assert web.counted() == {3: 1}
    bad = web.client.post(token_path, data={"option": "9"})
    assert bad.status_code == 400


def test_scanners_count_nothing_and_unsubscribe_nobody(web: Site) -> None:
    with web.sessions() as s:
        from newsletter.storage.models import Delivery

        delivered = s.scalar(select(Delivery.sent_at).limit(1))
    assert delivered is not None
    web.clock.now = delivered + dt.timedelta(seconds=1)
    choices = members_choices(web.sessions)
    assert all(any("/p/" in u for u in urls) for urls in web.links.values())
    for _email, urls in web.links.items():
        for url in urls:  # HEAD then GET of every link, within two seconds of delivery
            assert web.client.head(web.path(url)).status_code in (200, 204)
            assert web.client.get(web.path(url)).status_code in (200, 204)
        web.clock.advance(0.01)
    web.clock.advance(120)
    assert web.counted() == {}
    assert all(web.status(e) == "active" for e in web.links)
    assert members_choices(web.sessions) == choices  # the preference links changed nobody's
    # The same member, five minutes later, clicks one option: that counts.
    web.clock.advance(300)
    web.client.get(web.votes_of("li.wei@example.org")[2])
    web.clock.advance(31)
    assert web.counted() == {3: 1}


def test_sibling_options_fetched_together_are_not_counted(web: Site) -> None:
    for path in web.votes_of("li.wei@example.org"):
        web.client.get(path)
    web.clock.advance(60)
    assert web.counted() == {}
    with web.sessions() as s:
        vote = s.scalars(select(Vote)).one()
        assert vote.evidence == "not counted: several options fetched together"


def test_forged_altered_and_closed_links_record_nothing(web: Site) -> None:
    path = web.votes_of("li.wei@example.org")[0]
    before = db_state(web.sessions)
    forged = "/v/AQEB" + "A" * 30
    assert web.client.get(forged).status_code == 400
    assert "Nothing was recorded" in web.client.get(forged).text
    # Another member's token with the option changed: the signature no longer matches.
    token = path.rsplit("/", 1)[1]
    import base64

    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[-17] = 3
    altered = "/v/" + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert web.client.get(altered).status_code == 400
    assert web.client.post(altered, data={"option": "3"}).status_code == 400
    assert web.client.post(f"{altered}/person").status_code == 400
    assert web.client.post("/u/" + token, data={"List-Unsubscribe": "One-Click"}).status_code == 400
    assert db_state(web.sessions) == before

    with web.sessions.begin() as s:
        survey = s.get(Survey, 1)
        assert survey is not None
        survey.status = SurveyStatus.CLOSED
    before = db_state(web.sessions)
    page = web.client.get(path)
    assert "Final results" in page.text
    assert "no longer recorded" in page.text
    web.client.post(path, data={"option": "2", "person": "1"})
    web.client.post(f"{path}/person")
    web.client.head(path)
    assert db_state(web.sessions) == before


def test_unsubscribe_get_shows_a_page_and_post_acts(web: Site) -> None:
    path = web.unsubscribe_of("li.wei@example.org")
    page = web.client.get(path)
    assert page.status_code == 200
    assert "Unsubscribe?" in page.text
    assert web.status("li.wei@example.org") == "active"
    done = web.client.post(path, data={"action": "unsubscribe"})
    assert "You are unsubscribed" in done.text
    assert web.status("li.wei@example.org") == "unsubscribed"
    back = web.client.post(path, data={"action": "resubscribe"})
    assert "subscribed again" in back.text
    assert web.status("li.wei@example.org") == "active"


def test_rfc8058_one_click_post(web: Site) -> None:
    path = web.unsubscribe_of("wang.fang@example.org")
    response = web.client.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert web.status("wang.fang@example.org") == "unsubscribed"


def test_unsubscribe_form_with_scanner_signs_asks_again(web: Site) -> None:
    email = "chen.jie@example.org"
    trap = next(web.path(u) for u in web.links[email] if "/t/" in u)
    web.client.get(trap)
    path = web.unsubscribe_of(email)
    first = web.client.post(path, data={"action": "unsubscribe"})
    assert "Please confirm" in first.text
    assert web.status(email) == "active"
    web.client.post(path, data={"action": "unsubscribe", "confirm": "1"})
    assert web.status(email) == "unsubscribed"


def queued_to(web: Site, email: str) -> int:
    """System messages queued (sent or not) to the address."""
    with web.sessions() as s:
        return len(s.scalars(select(SystemMail).where(SystemMail.to_address == email)).all())


def test_subscribe_double_opt_in(web: Site, smtp_server: RecordingHandler) -> None:
    count = smtp_server.count()
    page = web.client.post("/subscribe", data={"email": "New.Reader@Example.org", "name": "新读者"})
    assert "Check your inbox" in page.text
    assert web.status("new.reader@example.org") == "pending"
    wait_for_mail(smtp_server, count + 1)
    (mail,) = smtp_server.messages[count:]
    assert mail.rcpt_to == "new.reader@example.org"
    text = mail.parse().get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    link = re.search(r"https?://\S+/c/\S+", text)
    assert link is not None
    confirm = web.path(link.group(0))
    assert "Confirm subscription" in web.client.get(confirm).text
    web.client.head(confirm)
    assert web.status("new.reader@example.org") == "pending"  # GET and HEAD change nothing
    assert "You are subscribed" in web.client.post(confirm).text
    assert web.status("new.reader@example.org") == "active"
    # Signing up again, or for an existing member, sends nothing and reveals nothing.
    for email in ("new.reader@example.org", "li.wei@example.org"):
        again = web.client.post("/subscribe", data={"email": email})
        assert "Check your inbox" in again.text
    assert queued_to(web, "new.reader@example.org") == 1
    assert queued_to(web, "li.wei@example.org") == 0
    assert smtp_server.count() == count + 1


def test_repeated_signups_do_not_spam_and_ips_are_limited(
    web: Site, smtp_server: RecordingHandler
) -> None:
    count = smtp_server.count()
    for _ in range(4):
        web.client.post("/subscribe", data={"email": "eager@example.org"})
    assert queued_to(web, "eager@example.org") == 1  # one confirmation per hour at most
    wait_for_mail(smtp_server, count + 1)
    statuses = [
        web.client.post("/subscribe", data={"email": f"x{i}@example.org"}).status_code
        for i in range(8)
    ]
    assert statuses[:6] == [200] * 6
    assert statuses[6:] == [429, 429]
    bad = web.client.post("/subscribe", data={"email": "not an address"})
    assert (bad.status_code == 400 and "not an email address" in bad.text) or "spaces" in bad.text


def test_archive_and_search(web: Site) -> None:
    listing = web.client.get("/archive")
    assert listing.status_code == 200
    assert "/archive/1" in listing.text
    public = web.client.get("/archive/1").text
    assert "Kobalt Music" in public
    assert "/v/" not in public
    assert "/u/" not in public
    assert "/t/" not in public
    view = next(web.path(u) for u in web.links["li.wei@example.org"] if "/archive/1?t=" in u)
    personal = web.client.get(view).text
    assert personal.count("/v/") == 3
    results = web.client.get("/search", params={"q": "patent"})
    assert results.status_code == 200
    assert "<mark>" in results.text
    assert "Xiaomi" in results.text
    assert web.client.get("/search", params={"q": '"; DROP TABLE items; --'}).status_code == 200


def test_pages_set_a_content_security_policy(web: Site) -> None:
    for path in (
        "/",
        "/archive",
        "/subscribe",
        "/search?q=ip",
        web.votes_of("li.wei@example.org")[0],
    ):
        response = web.client.get(path)
        assert "default-src 'none'" in response.headers["content-security-policy"], path
        assert "script-src 'self'" in response.headers["content-security-policy"]


def test_results_in_the_next_issue_and_on_the_command_line(
    web: Site, site: Path, tmp_path: Path, smtp_server: RecordingHandler, database_url: str
) -> None:
    from typer.testing import CliRunner

    from newsletter.cli.main import app

    for email, choice in [
        ("li.wei@example.org", 1),
        ("wang.fang@example.org", 1),
        ("chen.jie@example.org", 3),
    ]:
        web.client.get(web.votes_of(email)[choice - 1])
        web.clock.advance(60)
    assert web.counted() == {1: 2, 3: 1}

    feed = (site / "examples" / "seed-feed.xml").read_text().replace("chinaip-report-", "second-")
    (tmp_path / "second.xml").write_text(feed)
    import_source(web.sessions, str(tmp_path / "second.xml"))
    count = smtp_server.count()
    asyncio.run(publish.send(web.settings, web.sessions))
    message = smtp_server.messages[count].parse()
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Survey results so far" in html
    assert "3 members voted" in html
    assert 'width="67%"' in html
    assert 'width="33%"' in html  # bars are table cells
    assert "<svg" not in html
    assert "<script" not in html
    assert "#" * 13 + " 67% (2)" in text

    runner = CliRunner()
    env = {
        "NEWSLETTER_DATABASE_URL": database_url,
        "NEWSLETTER_SECRET_KEY": "x" * 32,
        "COLUMNS": "160",
    }
    out = tmp_path / "votes.csv"
    result = runner.invoke(
        app,
        ["--config", str(site / "config.toml"), "survey", "results", "--csv", str(out)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "66.7" in result.output
    assert "█" in result.output
    assert "3 members voted" in result.output
    rows = out.read_text().splitlines()
    assert rows[0] == "email,option,label,counted_at"
    assert len(rows) == 4
    closed = runner.invoke(app, ["--config", str(site / "config.toml"), "survey", "close"], env=env)
    assert closed.exit_code == 0
    assert "Final results" in web.client.get(web.votes_of("maria.garcia@example.org")[0]).text
