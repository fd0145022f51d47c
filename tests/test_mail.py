"""System mail survives a relay outage: queued with the action that asks for it, sent when it can."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.delivery.sink import ServerThread
from newsletter.storage import db
from newsletter.storage.models import MailStatus, Member, SignupRequest, SystemMail
from newsletter.web.app import create_app
from tests.conftest import make_settings
from tests.smtpd import RecordingHandler


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
