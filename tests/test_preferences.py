"""Members' own choices through the service layer and over HTTP: pause, change of address, the page's form."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.services import preferences, sending
from newsletter.services.unit import Services
from newsletter.storage.models import Delivery, Member, SystemMail, utcnow
from newsletter.tokens import Kind, Signer
from newsletter.web.app import create_app
from tests import steps
from tests.smtpd import RecordingHandler

ACTOR = "test"


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@dataclass
class World:
    settings: Settings
    sessions: sessionmaker[Session]
    services: Services
    clock: Clock
    smtp: RecordingHandler

    def member_id(self, email_address: str) -> int:
        with self.sessions() as s:
            found = s.scalar(select(Member.id).where(Member.email == email_address))
            assert found is not None
            return found

    def send(self) -> None:
        asyncio.run(sending.send(self.services, actor=ACTOR))

    def received(self) -> dict[str, int]:
        return {rcpt: len(msgs) for rcpt, msgs in self.smtp.by_recipient().items()}

    def add_item(self, n: int, section: str = "Comprehensive Reports") -> None:
        folder = self.settings.site_dir / f"more{n}"
        folder.mkdir()
        (folder / f"item{n}.md").write_text(
            f"---\ntitle: Later item {n}\nsection: {section}\n---\nBody {n}.\n"
        )
        steps.import_source(self.sessions, str(folder))


@pytest.fixture
def world(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> World:
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    clock = Clock()
    return World(settings, sessions, Services(settings, sessions, clock=clock), clock, smtp_server)


def test_a_paused_member_gets_nothing_until_the_pause_ends(world: World) -> None:
    john = world.member_id("john.smith@example.org")
    prefs = world.services.run(f"member:{john}", preferences.pause, john, 2)
    assert prefs.paused(world.clock.now)
    world.send()
    assert "john.smith@example.org" not in world.received()
    assert len(world.received()) == 4
    with world.sessions() as s:
        row = s.scalars(select(Delivery).where(Delivery.member_id == john)).one()
        assert (row.status, row.last_message) == ("skipped", "paused by the member")
    # Thirteen days on: still paused.
    world.clock.advance(days=13)
    world.add_item(1)
    world.send()
    assert "john.smith@example.org" not in world.received()
    # The pause has ended (14 days): the next issue comes to him.
    world.clock.advance(days=2)
    world.add_item(2)
    world.send()
    assert world.received()["john.smith@example.org"] == 1
    with pytest.raises(preferences.PreferenceError, match="2, 4 or 8 weeks"):
        world.services.run(f"member:{john}", preferences.pause, john, 3)


def _address_link(world: World, to: str) -> str:
    with world.sessions() as s:
        mail = s.scalars(select(SystemMail).where(SystemMail.to_address == to)).one()
        assert mail.kind == "address"
        msg = email.message_from_bytes(mail.message, policy=email.policy.default)
    assert msg.defects == []
    text = msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    found = re.search(r"https?://\S+/a/[A-Za-z0-9_-]+", text)
    assert found is not None
    return found.group(0)


def test_an_address_changes_only_when_the_new_address_confirms(world: World) -> None:
    li = world.member_id("li.wei@example.org")
    actor = f"member:{li}"
    world.services.run(actor, preferences.change_address, li, "Li.Wei@New.Example.org")
    link = _address_link(world, "li.wei@new.example.org")
    _, token = link.rsplit("/", 1)
    member_id, nonce = world.services.signer.check(token, Kind.ADDRESS)
    # Unconfirmed: the issue goes to the old address, and only there.
    world.send()
    assert world.received().get("li.wei@example.org") == 1
    assert "li.wei@new.example.org" not in world.received()
    change = world.services.read(preferences.address_change, member_id, nonce)
    assert (change.state, change.old, change.new) == (
        "waiting",
        "li.wei@example.org",
        "li.wei@new.example.org",
    )
    # A newer request replaces it: the first link no longer works.
    world.services.run(actor, preferences.change_address, li, "li@third.example.org")
    stale = world.services.run(actor, preferences.confirm_address, member_id, nonce)
    assert stale.state == "stale"
    link = _address_link(world, "li@third.example.org")
    member_id, nonce = world.services.signer.check(link.rsplit("/", 1)[1], Kind.ADDRESS)
    done = world.services.run(actor, preferences.confirm_address, member_id, nonce)
    assert done.state == "done"
    world.add_item(1)
    world.send()
    assert world.received().get("li.wei@example.org") == 1  # nothing more to the old one
    assert world.received().get("li@third.example.org") == 1
    assert "li.wei@new.example.org" not in world.received()


def test_an_address_another_member_has_is_not_taken(world: World) -> None:
    li = world.member_id("li.wei@example.org")
    world.services.run(f"member:{li}", preferences.change_address, li, "chen.jie@example.org")
    link = _address_link(world, "chen.jie@example.org")
    member_id, nonce = world.services.signer.check(link.rsplit("/", 1)[1], Kind.ADDRESS)
    taken = world.services.run(f"member:{li}", preferences.confirm_address, member_id, nonce)
    assert taken.state == "taken"
    with world.sessions() as s:
        assert s.get(Member, li).email == "li.wei@example.org"  # type: ignore[union-attr]


def test_address_changes_are_limited_a_day(world: World) -> None:
    li = world.member_id("li.wei@example.org")
    for n in range(preferences.ADDRESS_MAILS_PER_DAY):
        world.services.run(f"member:{li}", preferences.change_address, li, f"n{n}@example.net")
    with pytest.raises(preferences.PreferenceError, match="too many"):
        world.services.run(f"member:{li}", preferences.change_address, li, "more@example.net")
    world.clock.advance(days=1, seconds=1)
    world.services.run(f"member:{li}", preferences.change_address, li, "more@example.net")


# --- the page over HTTP ------------------------------------------------------------------------


@dataclass
class Page:
    world: World
    client: TestClient
    member_id: int
    path: str

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', self.client.get(self.path).text)
        assert found is not None
        return found.group(1)

    def choices(self) -> tuple[Any, ...]:
        with self.world.sessions() as s:
            m = s.get(Member, self.member_id)
            assert m is not None
            return (m.email, m.status, m.language, m.sections, m.survey, m.paused_until,
                    m.new_email, m.variant_key)  # fmt: skip


@pytest.fixture
def page(world: World) -> Iterator[Page]:
    member_id = world.member_id("john.smith@example.org")
    path = world.services.links.preferences(member_id, 0).replace(world.settings.list.base_url, "")
    with TestClient(create_app(world.settings, world.sessions, clock=world.clock)) as client:
        yield Page(world, client, member_id, path)


def test_the_page_shows_and_its_form_changes(page: Page) -> None:
    before = page.choices()
    shown = page.client.get(page.path)
    assert shown.status_code == 200
    assert "Your preferences" in shown.text
    assert page.client.head(page.path).status_code == 200
    assert page.choices() == before  # GET and HEAD change nothing
    csrf = page.csrf()
    saved = page.client.post(
        page.path,
        data={
            "csrf": csrf,
            "action": "save",
            "section:1": "People watch",
            "language": "zh_Hans",
            "survey": "",
        },
    )
    assert saved.status_code == 200, saved.text
    _, _, language, sections, survey, *_ = page.choices()
    assert (language, sections, survey) == ("zh_Hans", '["People watch"]', False)
    # The page answers in the language just chosen.
    assert '<html lang="zh-Hans">' in saved.text
    assert "您的选择已保存" in saved.text


@pytest.mark.parametrize(
    ("headers", "fields", "status"),
    [
        ({}, {"action": "save", "language": "en"}, 403),  # no form token
        ({"Origin": "https://evil.example"}, {"action": "save", "language": "en"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, {"action": "unsubscribe"}, 403),
        ({}, {"language": "en"}, 400),  # no button: a script's form.submit()
        ({}, {"action": "save", "language": "xx"}, 400),
        ({}, {"action": "save", "language": "en", "section:1": "Nope"}, 400),
        ({}, {"action": "pause", "weeks": "3"}, 400),
        ({}, {"action": "address", "email": "not an address"}, 400),
    ],
)
def test_forms_that_are_not_accepted_change_nothing(
    page: Page, headers: dict[str, str], fields: dict[str, str], status: int
) -> None:
    before = page.choices()
    if status != 403:
        fields = {**fields, "csrf": page.csrf()}
    answer = page.client.post(page.path, data=fields, headers=headers)
    assert answer.status_code == status
    assert page.choices() == before


def test_unsubscribe_from_the_page(page: Page) -> None:
    answer = page.client.post(page.path, data={"csrf": page.csrf(), "action": "unsubscribe"})
    assert answer.status_code == 200
    assert page.choices()[1] == "unsubscribed"


@hsettings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(min_value=0, max_value=40),
    junk=st.text(alphabet="ABCxyz019-_~*+/= ", min_size=0, max_size=4),
    kind=st.sampled_from(["p", "a"]),
)
def test_forged_or_altered_tokens_do_nothing(page: Page, cut: int, junk: str, kind: str) -> None:
    before = page.choices()
    token = page.path.rsplit("/", 1)[1]
    if kind == "a":
        token = Signer(page.world.settings.require_secret()).make(Kind.ADDRESS, page.member_id, 7)
    forged = token[:cut] + junk + token[cut + len(junk) :]
    if forged.rstrip("/") == token:
        return  # the same link (a trailing slash is redirected to it)
    for method in ("GET", "POST"):
        answer = page.client.request(
            method, f"/{kind}/{forged}", data={"action": "save", "language": "en"}
        )
        assert answer.status_code in (400, 404, 405)
    assert page.choices() == before


@hsettings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    language=st.text(max_size=12),
    sections=st.lists(st.text(max_size=30), max_size=5),
    survey=st.sampled_from(["", "1", "yes"]),
)
def test_any_form_input_stores_only_valid_choices(
    page: Page, language: str, sections: list[str], survey: str
) -> None:
    fields = {"csrf": page.csrf(), "action": "save", "language": language, "survey": survey}
    fields.update({f"section:{i}": s for i, s in enumerate(sections)})
    before = page.choices()
    answer = page.client.post(page.path, data=fields)
    assert answer.status_code in (200, 400)
    after = page.choices()
    if answer.status_code == 400:
        assert after == before
        assert 'role="alert"' in answer.text
    else:
        assert after[2] in ("en", "zh_Hans")


def test_the_migration_gives_stored_members_no_choices_and_goes_back(database_url: str) -> None:
    """0014_prefs on a database with members and a sent issue: every member has the default
    variant and the rows the issue's own copy; going back drops choices and variants."""
    from alembic import command
    from sqlalchemy import text

    from newsletter.storage import db

    engine = db.make_engine(database_url)
    config = db._alembic_config(engine)
    command.upgrade(config, "0010")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO members (email, name, status, attributes, created_at, updated_at, "
                "bounce_count) VALUES ('a@example.org', 'A', 'active', '{}', "
                "'2026-01-01 08:00:00', '2026-01-01 08:00:00', 0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO issues (subject, status, html, text, nonce, created_at, "
                "pause_reason) VALUES ('S', 'sent', '<p>x</p>', 'x', 'n', '2026-01-01 08:00:00', '')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (issue_id, member_id, status, attempts, last_message, "
                "message_id, created_at) VALUES (1, 1, 'sent', 1, '', '<m>', '2026-01-01 08:00:00')"
            )
        )
    command.upgrade(config, "0014_prefs")
    with engine.begin() as conn:
        member = conn.execute(
            text("SELECT variant_key, language, sections, survey, paused_until FROM members")
        ).one()
        assert tuple(member) == ("default", None, None, True, None)
        assert conn.execute(text("SELECT variant_id FROM deliveries")).scalar() is None
        conn.execute(
            text(
                "INSERT INTO issue_variants (issue_id, key, language, sections, survey, subject, "
                "html, text) VALUES (1, 'v1', 'zh_Hans', '[]', false, 'S', 'h', 't')"
            )
        )
    command.downgrade(config, "0010")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT email FROM members")).scalar() == "a@example.org"
        assert conn.execute(text("SELECT count(*) FROM deliveries")).scalar() == 1
        assert "issue_variants" not in db_tables(conn)
    engine.dispose()


def db_tables(conn: Any) -> set[str]:
    from sqlalchemy import inspect

    return set(inspect(conn).get_table_names())


def test_the_archive_shows_a_member_their_own_copy_and_anyone_the_whole_issue(
    world: World,
) -> None:
    steps.import_source(world.sessions, str(world.settings.site_dir / "examples" / "sections"))
    world.send()
    wang = world.member_id("wang.fang@example.org")  # Chinese; Comprehensive Reports, People watch
    view = world.services.links.view(1, wang).replace(world.settings.list.base_url, "")
    with TestClient(create_app(world.settings, world.sessions, clock=world.clock)) as client:
        own = client.get(view).text
        public = client.get("/archive/1").text
        forged = client.get(view[:-2] + ("AA" if not view.endswith("AA") else "BB")).text
    assert '<html lang="zh-Hans">' in own
    assert "People watch" in own
    assert "Inquiry and Assessment" not in own
    assert '<html lang="en">' in public
    assert "Inquiry and Assessment" in public
    assert "People watch" in public
    assert forged == public  # a bad token: the public copy
