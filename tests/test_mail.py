"""System mail survives a relay outage: queued with the action that asks for it, sent when it can."""

from __future__ import annotations

import contextlib
import itertools
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config
from newsletter.config import Settings
from newsletter.delivery.sink import ServerThread
from newsletter.storage import db
from newsletter.storage.models import MailStatus, Member, SignupRequest, SystemMail
from newsletter.web.app import create_app
from tests import steps
from tests.conftest import SECRET, make_settings
from tests.smtpd import RecordingHandler
from tests.snapshot import added, snapshot, tables_of


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def mail_rows(sessions: sessionmaker[Session]) -> list[SystemMail]:
    with sessions() as s:
        return list(s.scalars(select(SystemMail)))


def test_a_signup_during_a_relay_outage_is_confirmed_once_the_relay_is_back(
    site: Path, database_url: str
) -> None:
    port = free_port()  # nothing listens there: the relay is down
    settings = make_settings(
        site,
        database_url,
        port,
        delivery={"retry_base_seconds": 0.05, "retry_max_seconds": 0.2},
        smtp={"timeout": 2.0},
    )
    sessions = db.open_database(settings.database_url)
    with TestClient(create_app(settings, sessions)) as client:
        page = client.post("/subscribe", data={"email": "patient@example.org", "name": "P"})
        assert page.status_code == 200
        assert "follows as soon as it can" in page.text
        assert "Check your inbox" in page.text
        # The mailer tries, the relay refuses the connection: the message waits, and nothing
        # says it was mailed.
        wait_until(lambda: any(m.attempts for m in mail_rows(sessions)), "a first attempt")
        (waiting,) = mail_rows(sessions)
        assert waiting.status in (MailStatus.DEFERRED, MailStatus.SENDING, MailStatus.QUEUED)
        assert waiting.sent_at is None
        assert waiting.to_address == "patient@example.org"
        with sessions() as s:
            (request,) = s.scalars(select(SignupRequest)).all()
            assert request.mailed == 0
            member = s.scalars(select(Member).where(Member.email == "patient@example.org")).one()
            assert member.status == "pending"
        # The relay comes back on the same port; the member does nothing more.
        handler = RecordingHandler()
        with ServerThread(handler, "127.0.0.1", port):
            wait_until(lambda: handler.count() == 1, "the confirmation")
            wait_until(
                lambda: mail_rows(sessions)[0].status == MailStatus.SENT, "the row marked sent"
            )
        (sent,) = handler.messages
        assert sent.rcpt_to == "patient@example.org"
        message = sent.parse()
        assert message["Message-ID"]
        assert message["Date"]
        assert message["Auto-Submitted"] == "auto-generated"
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        assert "/c/" in body.get_content()
        with sessions() as s:
            assert s.scalars(select(SignupRequest)).one().mailed == 1
    sessions.kw["bind"].dispose()


# --- every kind of outage, every kind of system mail ------------------------------------------

# How the relay fails until it is back: nothing listens ("down"), or tests/smtpd.py's faults,
# given at every attempt: 421 or 451 at RCPT, the connection dropped at RCPT or after DATA.
OUTAGES = ("down", "421", "451", "drop-rcpt", "drop-data")
API_TOKEN = "outage-api-token-0123456789abcdef"
# The tables a queued message, and the request that queued it, may add rows to. Anything else
# (the scheduler's lease, say) is not this test's business and is left out of the comparison.
KEPT = ("members", "signup_requests", "system_mail", "audit_log", "items", "issues")


@dataclass
class Outage:
    site: Path
    database_url: str
    sessions: sessionmaker[Session]
    serial: Iterator[int]


@pytest.fixture
def outage(site: Path, database_url: str) -> Iterator[Outage]:
    """A site with the sample items imported (what a test copy carries), shared by the cases."""
    sessions = db.open_database(make_settings(site, database_url).database_url)
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    yield Outage(site, database_url, sessions, itertools.count(1))
    sessions.kw["bind"].dispose()


def outage_settings(o: Outage, port: int) -> Settings:
    return config.load(
        o.site / "config.toml",
        env={config.SECRET_ENV: SECRET, config.API_TOKEN_ENV: API_TOKEN},
        overrides={
            "database": {"url": o.database_url},
            "smtp": {"port": port, "timeout": 2.0},
            "delivery": {
                "linger_seconds": 0.0,
                "retry_base_seconds": 0.05,
                "retry_max_seconds": 0.2,
            },
        },
    )


def the_row(sessions: sessionmaker[Session], mail_id: int) -> SystemMail:
    with sessions() as s:
        return s.scalars(select(SystemMail).where(SystemMail.id == mail_id)).one()


def mailed(sessions: sessionmaker[Session], mail_id: int) -> int | None:
    """The sign-up's `mailed` flag for a confirmation; None for mail that is no sign-up's."""
    with sessions() as s:
        row = s.scalars(select(SystemMail).where(SystemMail.id == mail_id)).one()
        if row.signup_id is None:
            return None
        request = s.scalars(select(SignupRequest).where(SignupRequest.id == row.signup_id))
        return request.one().mailed


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(kind="confirm", how="down", failures=1, local="patient")  # the issue's
@example(kind="test", how="451", failures=2, local="editor")
@example(kind="confirm", how="drop-data", failures=2, local="o.brien")
@given(
    kind=st.sampled_from(("confirm", "test")),
    how=st.sampled_from(OUTAGES),
    failures=st.integers(1, 3),
    local=st.from_regex(r"\A[a-z][a-z0-9]{0,8}(\.[a-z0-9]{1,6})?\Z"),
)
def test_system_mail_waits_out_any_outage(
    outage: Outage, kind: str, how: str, failures: int, local: str
) -> None:
    """A confirmation (POST /subscribe) or a test copy (POST /api/issues/test) asked for while
    the relay fails: the member sees the calm page and the API a JSON answer, the message is
    tried again and again without being marked sent (nor the sign-up mailed), and once the
    relay is back it arrives, once, with nobody doing anything; nothing but the request's own
    rows was stored."""
    n = next(outage.serial)
    address = f"{local}.{n}@example.org"
    port = free_port()
    handler = RecordingHandler()
    sessions = outage.sessions
    tables = [t for t in tables_of(sessions) if t.name in KEPT]
    before = snapshot(sessions, tables)
    with contextlib.ExitStack() as stack:
        if how != "down":
            handler.faults[address] = [how] * 10_000  # until cleared below
            stack.enter_context(ServerThread(handler, "127.0.0.1", port))
        app = create_app(outage_settings(outage, port), sessions)
        client = stack.enter_context(TestClient(app, client=(f"203.0.113.{n % 250}", 4000 + n)))
        if kind == "confirm":
            page = client.post("/subscribe", data={"email": address, "name": "Reader"})
            assert page.status_code in (200, 202)
            assert page.headers["content-type"].startswith("text/html")
            assert "follows as soon as it can" in page.text
            with sessions() as s:
                (mail_id,) = s.scalars(
                    select(SystemMail.id).where(SystemMail.to_address == address)
                ).all()
        else:
            answer = client.post(
                "/api/issues/test",
                json={"to": address},
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            )
            assert answer.status_code in (200, 202), answer.text
            assert answer.json()["status"] in ("queued", "deferred", "sending"), answer.json()
            with sessions() as s:
                (mail_id,) = s.scalars(
                    select(SystemMail.id).where(SystemMail.to_address == address)
                ).all()
        # The relay fails `failures` times at least; all the while nothing says "sent".
        wait_until(lambda: the_row(sessions, mail_id).attempts >= failures, "failed attempts")
        waiting = the_row(sessions, mail_id)
        assert waiting.status in (MailStatus.DEFERRED, MailStatus.SENDING, MailStatus.QUEUED)
        assert waiting.sent_at is None
        assert mailed(sessions, mail_id) in (0, None)
        assert handler.count() == 0
        # The relay is back; nobody does anything.
        if how == "down":
            stack.enter_context(ServerThread(handler, "127.0.0.1", port))
        else:
            handler.faults.clear()
        wait_until(lambda: handler.count() == 1, "the message")
        wait_until(lambda: the_row(sessions, mail_id).status == MailStatus.SENT, "marked sent")
    (received,) = handler.messages
    assert received.rcpt_to == address
    message = received.parse()
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    if kind == "confirm":
        assert "/c/" in body.get_content()
        assert mailed(sessions, mail_id) == 1
    else:
        assert str(message["Subject"]).startswith("[TEST] ")
    assert the_row(sessions, mail_id).attempts > failures
    new = added(before, snapshot(sessions, tables))
    assert len(new["system_mail"]) == 1
    expected = {"system_mail", "audit_log"} | (
        {"members", "signup_requests"} if kind == "confirm" else set()
    )
    assert set(new) == expected, set(new)
