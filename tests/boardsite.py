"""A site for the board's tests: members, an app on an injected clock, and members who sign in
the way people do (asking for a link, then pressing the button on its page)."""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.services import members
from newsletter.services.unit import Actor, Role, Services
from newsletter.storage import db
from newsletter.storage.models import (
    AuditEntry,
    BoardMessage,
    Member,
    SystemMail,
    utcnow,
)
from newsletter.web.app import create_app
from tests.smtpd import RecordingHandler
from tests.test_desk import EDITOR, desk_settings

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
EDITOR_ACTOR = Actor(EDITOR, Role.PUBLISHER)
REPO = Path(__file__).resolve().parent.parent
# The sample members (subscribers/example.csv), by address.
LI, WANG, JOHN, MARIA, CHEN = (
    "li.wei@example.org",
    "wang.fang@example.org",
    "john.smith@example.org",
    "maria.garcia@example.org",
    "chen.jie@example.org",
)
FORMER = "former.member@example.org"


class Clock:
    def __init__(self) -> None:
        self.now = utcnow().replace(microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def parse(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def html_of(msg: EmailMessage) -> str:
    body = msg.get_body(preferencelist=("html",))
    assert body is not None
    return str(body.get_content())


@dataclass
class Reader:
    """One person's browser: their own cookies."""

    client: TestClient
    email: str = ""

    def csrf(self, path: str = "/board") -> str:
        found = CSRF.search(self.client.get(path).text)
        assert found, f"no form on {path}"
        return found.group(1)

    def post(self, body: str, path: str = "/board", **extra: str) -> httpx.Response:
        data = {"csrf": self.csrf(), "body": body, **extra}
        return self.client.post(path, data=data, follow_redirects=False)


@dataclass
class Board:
    settings: Settings
    sessions: sessionmaker[Session]
    clock: Clock
    app: Any
    services: Services  # the app's own: its changes drop the app's caches
    readers: list[Reader] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.settings.list.base_url.rstrip("/")

    def path(self, url: str) -> str:
        return url.removeprefix(self.base)

    def reader(self) -> Reader:
        made = Reader(TestClient(self.app, raise_server_exceptions=False))
        self.readers.append(made)
        return made

    def mails(self, kind: str, to: str | None = None) -> list[EmailMessage]:
        with self.sessions() as s:
            query = select(SystemMail.message).where(SystemMail.kind == kind)
            if to is not None:
                query = query.where(SystemMail.to_address == to)
            return [parse(raw) for raw in s.scalars(query.order_by(SystemMail.id))]

    def signin_link(self, email: str) -> str:
        """Ask for a sign-in link as a person would; the path in the queued mail."""
        asking = self.reader()
        answer = asking.client.post("/signin", data={"email": email})
        assert answer.status_code == 200, answer.text
        mails = self.mails("signin", email)
        assert mails, f"no sign-in mail for {email}"
        found = re.search(r"https?://\S+/s/[A-Za-z0-9_-]+", text_of(mails[-1]))
        assert found
        return self.path(found.group(0))

    def sign_in(self, email: str) -> Reader:
        """A member signed in with an emailed link and the page's button."""
        link = self.signin_link(email)
        made = self.reader()
        made.email = email
        page = made.client.get(link)
        assert 'name="person"' in page.text  # the page with the button, in any language
        done = made.client.post(link, data={"person": "1"}, follow_redirects=False)
        assert done.status_code == 303, done.text
        return made

    def member_id(self, email: str) -> int:
        with self.sessions() as s:
            found = s.scalar(select(Member.id).where(Member.email == email))
            assert found is not None
            return int(found)

    def messages(self) -> list[BoardMessage]:
        with self.sessions() as s:
            return list(s.scalars(select(BoardMessage).order_by(BoardMessage.id)))

    def audits(self, action: str) -> int:
        with self.sessions() as s:
            return int(
                s.scalar(
                    select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)
                )
                or 0
            )

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A use-case as an editor (a publisher), through the app's own services."""
        return self.services.run(EDITOR_ACTOR, fn, *args, **kwargs)

    def close(self) -> None:
        self.app.state.gateway.close()


def make_board(
    site: Path, database_url: str, smtp_port: int, *, languages: bool = False, **board: Any
) -> tuple[Settings, sessionmaker[Session]]:
    """The sample members on a board; without `languages`, every one reads the list's
    language (English), so the tests read English pages and mail."""
    settings = desk_settings(site, database_url, smtp_port)
    if board:
        import dataclasses

        settings = dataclasses.replace(settings, board=dataclasses.replace(settings.board, **board))
    sessions = db.open_database(settings.database_url)
    services = Services(settings, sessions)
    source = REPO / "subscribers" / "example.csv"
    if not languages:
        with source.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            row["language"] = ""
        source = site / "members-in-english.csv"
        with source.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    members.import_file(services, source, actor="test")
    return settings, sessions


@pytest.fixture
def board_site(
    site: Path, database_url: str, smtp_server: RecordingHandler, request: pytest.FixtureRequest
) -> Iterator[Board]:
    """The sample site's members on a board (the test's `board_config` marker sets [board]
    keys; `board_config(languages=True)` keeps the members' own languages, as the sample
    has them: 王芳 and 陈杰 read Chinese), an editor, and the app on a clock of the test's
    own; nothing is mailed (the queued mail is read from the database)."""
    marker = request.node.get_closest_marker("board_config")
    overrides = dict(marker.kwargs) if marker else {}
    settings, sessions = make_board(site, database_url, smtp_server.port, **overrides)
    clock = Clock()
    app = create_app(settings, sessions, clock=clock, background=False)
    made = Board(settings, sessions, clock, app, app.state.services)
    yield made
    made.close()
    sessions.kw["bind"].dispose()
