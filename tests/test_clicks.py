"""Clicks on an issue's links: /r/ redirects, the scanner rule, counts without people in them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config
from newsletter.config import Settings
from newsletter.services import clicks
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.storage.models import (
    ClickCount,
    ClickHit,
    Delivery,
    Issue,
    Item,
    Member,
    MemberClick,
)
from newsletter.tokens import Kind, Signer
from newsletter.web.app import create_app
from tests import steps
from tests.conftest import SECRET
from tests.smtpd import RecordingHandler

HREF = re.compile(r'href="([^"]+)"')


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Clicked:
    settings: Settings
    sessions: sessionmaker[Session]
    client: TestClient
    clock: Clock
    html: dict[str, str]
    text: dict[str, str]

    def redirects(self, email: str) -> list[str]:
        base = self.settings.list.base_url
        return [u.replace(base, "") for u in HREF.findall(self.html[email]) if "/r/" in u]

    def settle(self) -> None:
        """Decide what is due, then again past the settle window (which purges the evidence)."""
        services = Services(self.settings, self.sessions, clock=self.clock)
        services.run("system", clicks.settle)
        self.clock.advance(120)
        services.run("system", clicks.settle)

    def counts(self) -> tuple[int, int]:
        with self.sessions() as s:
            people = s.scalar(select(func.coalesce(func.sum(ClickCount.people), 0)))
            scanners = s.scalar(select(func.coalesce(func.sum(ClickCount.scanners), 0)))
            return int(people or 0), int(scanners or 0)

    def wait_for(self, fetches: int) -> None:
        """Until `fetches` link fetches are stored: a redirect answers before its fetch is
        (the batcher stores it moments later)."""
        deadline = time.monotonic() + 10
        while self.rows(ClickHit) < fetches:
            assert time.monotonic() < deadline, f"{self.rows(ClickHit)} fetches, not {fetches}"
            time.sleep(0.01)

    def rows(self, table: type[ClickHit] | type[MemberClick]) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(table)) or 0)


def _clicked(
    site: Path,
    database_url: str,
    smtp_server: RecordingHandler,
    sections: bool = False,
    **tracking: object,
) -> Iterator[Clicked]:
    settings = config.load(
        site / "config.toml",
        env={config.SECRET_ENV: SECRET},
        overrides={
            "database": {"url": database_url},
            "smtp": {"port": smtp_server.port},
            "delivery": {"linger_seconds": 0.0},
            "tracking": tracking,
        },
    )
    sessions = db.open_database(settings.database_url)
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    if sections:  # items of the other sections too (with links): members' choices differ
        folder = site / "more"
        folder.mkdir()
        for n, section in enumerate(["International IP Firms", "People watch"] * 2):
            (folder / f"{n}.md").write_text(
                f"---\ntitle: Item {n}\nsection: {section}\n"
                f"url: https://more.example.org/{n}\n---\nText {n}.\n",
                encoding="utf-8",
            )
        steps.import_source(sessions, str(folder))
    asyncio.run(steps.send(settings, sessions))
    html, text = {}, {}
    for address, (message,) in smtp_server.by_recipient().items():
        msg = message.parse()
        html[address] = msg.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
        text[address] = msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    with sessions() as s:
        delivered = s.scalar(select(func.max(Delivery.sent_at)))
    assert delivered is not None
    clock = Clock(delivered + dt.timedelta(minutes=10))  # people read their mail later
    with TestClient(create_app(settings, sessions, clock=clock, background=False)) as client:
        yield Clicked(settings, sessions, client, clock, html, text)
    sessions.kw["bind"].dispose()


@pytest.fixture
def clicked(site: Path, database_url: str, smtp_server: RecordingHandler) -> Iterator[Clicked]:
    yield from _clicked(site, database_url, smtp_server)


ADDRESS = "li.wei@example.org"


def test_an_issues_links_go_through_redirects_to_its_own_list(clicked: Clicked) -> None:
    with clicked.sessions() as s:
        issue = s.scalars(select(Issue)).one()
        links = list(issue.links or [])
    assert "https://chinaip.example.org/reports/alibaba-cbbc-brand-protection" in links
    assert f"{clicked.settings.list.base_url}/archive" in links  # the footer's
    html, text = clicked.html[ADDRESS], clicked.text[ADDRESS]
    assert "chinaip.example.org/reports/" not in html  # every item link is a redirect
    redirects = clicked.redirects(ADDRESS)
    assert len(set(redirects)) == len(links)
    assert all(f"{clicked.settings.list.base_url}{r}" in text for r in redirects if r)
    # Each redirect leads to its own link, for a GET and for a HEAD.
    for path in set(redirects):
        answer = clicked.client.get(path, follow_redirects=False)
        assert answer.status_code == 302
        assert answer.headers["location"] in links
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert clicked.client.head(path, follow_redirects=False).status_code == 302
    # The archive's copy links straight to the targets and counts nothing.
    page = clicked.client.get(f"/archive/{issue.id}")
    assert "/r/" not in page.text
    assert "chinaip.example.org/reports/alibaba-cbbc-brand-protection" in page.text


def test_each_variants_redirects_lead_to_its_own_items(
    site: Path, database_url: str, smtp_server: RecordingHandler
) -> None:
    """Members of other sections and languages get other copies of the issue, compiled apart;
    their /r/ links still number into the issue's one list, so each leads to their own item."""
    gen = _clicked(site, database_url, smtp_server, sections=True)
    clicked = next(gen)
    with clicked.sessions() as s:
        items = s.execute(select(Item.url, Item.section).where(Item.url != "")).all()
        chosen = {m.email: m.sections for m in s.scalars(select(Member))}
    assert len({section for _, section in items}) > 1
    copies = set()
    for email in clicked.html:
        sections = chosen[email]
        wanted = json.loads(sections) if sections else None
        mine = {url for url, section in items if wanted is None or section in wanted}
        others = {url for url, _ in items} - mine
        targets = set()
        for path in set(clicked.redirects(email)):
            answer = clicked.client.get(path, follow_redirects=False)
            assert answer.status_code == 302
            targets.add(answer.headers["location"])
        assert mine <= targets, email
        assert not targets & others, email
        copies.add(frozenset(targets))
    assert len(copies) > 1  # several variants went out, not one copy for all
    next(gen, None)


def test_a_persons_click_counts_once_and_leaves_no_row_naming_them(clicked: Clicked) -> None:
    path = clicked.redirects(ADDRESS)[1]
    assert clicked.client.get(path, follow_redirects=False).status_code == 302
    clicked.wait_for(1)  # held as evidence for the window
    assert clicked.rows(ClickHit) == 1
    clicked.clock.advance(31)
    clicked.settle()
    assert clicked.counts() == (1, 0)
    assert clicked.rows(ClickHit) == 0
    assert clicked.rows(MemberClick) == 0


def test_the_scanner_simulation_counts_no_click(clicked: Clicked) -> None:
    """A scanner fetches every link of a message (HEAD and GET, the hidden link too) within
    seconds: right after delivery, and for another member much later with no grace left."""
    with clicked.sessions() as s:
        delivered = s.scalar(select(Delivery.sent_at).limit(1))
    assert delivered is not None
    clicked.clock.now = delivered + dt.timedelta(seconds=2)
    first, later = ADDRESS, "wang.fang@example.org"
    for path in clicked.redirects(first):
        clicked.client.head(path, follow_redirects=False)
        clicked.client.get(path, follow_redirects=False)
        clicked.clock.advance(0.05)
    clicked.clock.advance(3600)
    for path in clicked.redirects(later):  # GETs only, but all at once
        clicked.client.get(path, follow_redirects=False)
        clicked.clock.advance(0.05)
    clicked.wait_for(len(clicked.redirects(first)) * 2 + len(clicked.redirects(later)))
    clicked.clock.advance(31)
    clicked.settle()
    people, scanners = clicked.counts()
    assert people == 0
    assert scanners == len(clicked.redirects(first)) * 2 + len(clicked.redirects(later))
    assert clicked.rows(ClickHit) == 0


def test_a_click_right_after_a_hidden_link_fetch_is_a_scanners(clicked: Clicked) -> None:
    base = clicked.settings.list.base_url
    trap = next(u for u in HREF.findall(clicked.html[ADDRESS]) if "/t/" in u)
    clicked.client.get(trap.replace(base, ""))
    clicked.client.get(clicked.redirects(ADDRESS)[0], follow_redirects=False)
    clicked.wait_for(1)
    clicked.clock.advance(31)
    clicked.settle()
    assert clicked.counts() == (0, 1)


@pytest.fixture
def per_member(site: Path, database_url: str, smtp_server: RecordingHandler) -> Iterator[Clicked]:
    yield from _clicked(site, database_url, smtp_server, per_member=True)


def test_with_per_member_tracking_a_persons_click_is_kept_by_member(per_member: Clicked) -> None:
    per_member.client.get(per_member.redirects(ADDRESS)[1], follow_redirects=False)
    per_member.wait_for(1)
    per_member.clock.advance(31)
    per_member.settle()
    assert per_member.counts() == (1, 0)
    assert per_member.rows(MemberClick) == 1


def test_a_link_the_issue_does_not_have_leads_nowhere(clicked: Clicked) -> None:
    signer = Signer((SECRET.encode(),))
    with clicked.sessions() as s:
        issue = s.scalars(select(Issue)).one()
        count = len(issue.links or [])
    beyond = signer.make(Kind.CLICK, issue.id, 1, count)
    assert clicked.client.get(f"/r/{beyond}", follow_redirects=False).status_code == 404
    elsewhere = signer.make(Kind.CLICK, issue.id + 1, 1, 0)
    assert clicked.client.get(f"/r/{elsewhere}", follow_redirects=False).status_code == 404
    vote = signer.make(Kind.VOTE, 1, 1, 1)  # genuine, but of another kind
    assert clicked.client.get(f"/r/{vote}", follow_redirects=False).status_code == 400
    assert clicked.rows(ClickHit) == 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_an_altered_redirect_token_redirects_nowhere_and_records_nothing(
    clicked: Clicked, data: st.DataObject
) -> None:
    genuine = clicked.redirects(ADDRESS)[0].removeprefix("/r/")
    position = data.draw(st.integers(0, len(genuine) - 1))
    replacement = data.draw(
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=3)
    )
    altered = genuine[:position] + replacement + genuine[position + 1 :]
    if altered == genuine or not altered:
        return
    answer = clicked.client.get(f"/r/{altered}", follow_redirects=False)
    assert answer.status_code in (400, 404)
    assert "location" not in answer.headers
    assert clicked.rows(ClickHit) == 0
