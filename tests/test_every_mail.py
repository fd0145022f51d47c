"""Every kind of mail the project sends, captured from a real SMTP server and held to one standard.

KINDS is the list: a kind is a name and a function that makes the project send that mail
through its own doors (a send, a sign-up, a test copy) and returns what the server received.
A new kind of mail is one more line in KINDS (and its function).
"""

from __future__ import annotations

import asyncio
import email.generator
import email.policy
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.delivery.mailer import Mailer
from newsletter.services import board, issues, members, moderation, preferences, signin
from newsletter.storage import db
from newsletter.storage.models import Member
from tests import steps
from tests.checks import defects, parse
from tests.conftest import make_settings
from tests.dkimkeys import rsa_pem, txt_record
from tests.smtpd import Received, RecordingHandler


@dataclass
class Site:
    settings: Settings
    sessions: sessionmaker[Session]
    smtp: RecordingHandler
    folder: Path

    def drain(self) -> None:
        """What `serve`'s mailer does when woken: send every queued system message."""
        drained = asyncio.run(Mailer(self.settings, self.sessions).drain())
        assert drained.failed == drained.deferred == 0, drained.reasons

    def received_since(self, start: int) -> list[Received]:
        return self.smtp.messages[start:]


def send_issue(site: Site) -> list[Received]:
    start = site.smtp.count()
    steps.import_csv(site.sessions, site.folder / "subscribers" / "example.csv")
    steps.import_source(site.sessions, str(site.folder / "examples" / "seed-feed.xml"))
    asyncio.run(steps.send(site.settings, site.sessions))
    return site.received_since(start)


def sign_up(site: Site) -> list[Received]:
    start = site.smtp.count()
    services = steps.services(site.settings, site.sessions)
    signup = services.run(
        "web", members.subscribe, "new.reader@example.org", "王芳", ip="192.0.2.7"
    )
    assert signup.mail_id is not None
    site.drain()
    return site.received_since(start)


def send_test_copy(site: Site) -> list[Received]:
    start = site.smtp.count()
    steps.import_source(site.sessions, str(site.folder / "examples" / "seed-feed.xml"))
    issues.send_test(steps.services(site.settings, site.sessions), "test", "editor@example.org")
    site.drain()
    return site.received_since(start)


def change_address(site: Site) -> list[Received]:
    start = site.smtp.count()
    steps.import_csv(site.sessions, site.folder / "subscribers" / "example.csv")
    services = steps.services(site.settings, site.sessions)
    services.run("member:1", preferences.change_address, 1, "new.home@example.net")
    site.drain()
    return site.received_since(start)


def ask_to_sign_in(site: Site) -> list[Received]:
    """王芳, who reads Chinese, asks for a link to the members' board."""
    start = site.smtp.count()
    steps.import_csv(site.sessions, site.folder / "subscribers" / "example.csv")
    services = steps.services(site.settings, site.sessions)
    asked = services.run("web", signin.request_link, "wang.fang@example.org", ip="192.0.2.7")
    assert asked.mail_id is not None
    site.drain()
    return site.received_since(start)


def reply_on_the_board(site: Site) -> list[Received]:
    """Li Wei replies to 王芳's thread (each first post approved by an editor): she is told,
    in Chinese, with a List-Unsubscribe that stops reply notices."""
    start = site.smtp.count()
    steps.import_csv(site.sessions, site.folder / "subscribers" / "example.csv")
    services = steps.services(site.settings, site.sessions)
    with site.sessions() as session:
        ids = {email: id_ for email, id_ in session.execute(select(Member.email, Member.id))}
    wang, li = ids["wang.fang@example.org"], ids["li.wei@example.org"]
    services.run(f"member:{wang}", board.post, wang, 0, "Who has filed in Shenzhen?", ip="")
    thread = services.read(moderation.queue).waiting[0].id
    services.run("cli:editor", moderation.approve, thread)
    services.run(
        f"member:{li}", board.post, li, 0, "We did, last **May**.", parent_id=thread, ip=""
    )
    reply = services.read(moderation.queue).waiting[0].id
    services.run("cli:editor", moderation.approve, reply)
    site.drain()
    received = site.received_since(start)
    assert [parse(m.data)["List-Unsubscribe-Post"] for m in received] == [
        "List-Unsubscribe=One-Click"
    ]
    return received


# Each kind of mail the project sends. A kind added elsewhere is one more line here, with the
# function that makes the project send it.
KINDS: dict[str, Callable[[Site], list[Received]]] = {
    "issue": send_issue,
    "confirmation": sign_up,
    "test send": send_test_copy,
    "address change": change_address,
    "board sign-in": ask_to_sign_in,
    "reply notice": reply_on_the_board,
}


SELECTOR = "news2026"


@pytest.fixture
def mail_site(site: Path, database_url: str, smtp_server: RecordingHandler) -> Iterator[Site]:
    """The sample site, signing with DKIM as example.org (its From domain)."""
    (site / "dkim.pem").write_bytes(rsa_pem(2048))
    dkim_table = {"domain": "example.org", "selector": SELECTOR, "key_file": "dkim.pem"}
    settings = make_settings(site, database_url, smtp_server.port, dkim=dkim_table)
    sessions = db.open_database(settings.database_url)
    yield Site(settings, sessions, smtp_server, site)
    sessions.kw["bind"].dispose()


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_of_mail_is_complete_and_in_the_sites_style(mail_site: Site, kind: str) -> None:
    received = KINDS[kind](mail_site)
    assert received, f"no {kind} was sent"
    ids = set()
    for message in received:
        msg = parse(message.data)
        assert defects(msg) == []
        for name in ("From", "To", "Subject", "Date", "Message-ID"):
            assert len(msg.get_all(name, [])) == 1, f"{kind}: {name}"
        # RFC 5322 §3.6.4: a Message-ID on the From domain.
        assert str(msg["Message-ID"]).endswith("@example.org>")
        ids.add(str(msg["Message-ID"]))
        assert msg.get_content_type() == "multipart/alternative"
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        assert isinstance(text, EmailMessage)
        assert isinstance(html, EmailMessage)
        # The site's masthead, whichever kind of mail it is.
        assert "#8b1e1e" in html.get_content()
        lst = mail_site.settings.list
        names = {lst.name, *(lst.name_in(code) for code in lst.translations)}
        assert any(name in html.get_content() for name in names)  # in the member's language
        if kind != "issue" and kind != "test send":
            # RFC 3834: made by a program; vacation responders and auto-repliers stay quiet.
            assert msg["Auto-Submitted"] == "auto-generated"
    assert len(ids) == len(received)


def verifies(data: bytes) -> bool:
    """dkimpy's verdict, with the selector's TXT record as DNS would give it."""

    def dns(name: bytes, timeout: float = 5) -> bytes:
        assert name == f"{SELECTOR}._domainkey.example.org.".encode()
        return txt_record(rsa_pem(2048))

    result: bool = dkim.verify(data, dnsfunc=dns)
    return result


def insert_above_first(data: bytes, field: bytes) -> bytes:
    """The message with `field` added right above the first field of the same name (or at
    the end of the header block): where a forger puts the copy a client will show."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    name = field.split(b":", 1)[0].lower() + b":"
    at = next((i for i, line in enumerate(lines) if line.lower().startswith(name)), len(lines))
    lines.insert(at, field)
    return b"\r\n".join(lines) + sep + body


FORGED = [
    b"From: Your Bank <news@example.org>",
    b"Subject: Your account is locked",
    b"List-Unsubscribe: <https://evil.example/u/x>",
]


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_of_mail_is_signed_so_that_added_fields_break_it(
    mail_site: Site, kind: str
) -> None:
    received = KINDS[kind](mail_site)
    assert received
    for message in received:
        msg = parse(message.data)
        assert msg["DKIM-Signature"] is not None, kind
        assert verifies(message.data), kind
        for field in FORGED:
            forged = insert_above_first(message.data, field)
            name, _, value = field.decode().partition(": ")
            assert str(parse(forged)[name]) == value  # what a client would show
            assert not verifies(forged), f"{kind}: {field!r} added above the first still verifies"
        # A field a relay adds (and nobody shows as the sender's) leaves it valid.
        assert verifies(b"Received: from relay.example by mx.example\r\n" + message.data)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_of_mail_is_7bit_with_short_lines_and_survives_a_7bit_relay(
    mail_site: Site, kind: str
) -> None:
    # The relay offers no 8BITMIME (and refuses BODY=8BITMIME and 8bit data), as an old hop
    # may: what it took and passes on must still verify.
    mail_site.smtp.eight_bit = False
    received = KINDS[kind](mail_site)
    assert received
    for message in received:
        data = message.data
        assert data.isascii(), kind
        head, _, _ = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            assert len(line) <= 78, f"{kind}: header line of {len(line)}: {line[:60]!r}"
        msg = parse(data)
        for part in msg.walk():
            if part.is_multipart():
                continue
            assert part.get("Content-Transfer-Encoding") == "quoted-printable", kind
            encoded = part.get_payload(decode=False)
            assert isinstance(encoded, str)
            for body_line in encoded.splitlines():
                assert len(body_line) <= 76, f"{kind}: a body line of {len(body_line)}"
        assert verifies(data), kind
        # A relay that re-encodes for 7bit transport (RFC 6152 §3) has nothing to change:
        # the copy it makes still verifies.
        assert verifies(as_7bit(data)), kind


def as_7bit(data: bytes) -> bytes:
    """What a relay without 8BITMIME makes of a message: every part made 7bit, headers refolded."""
    out = io.BytesIO()
    policy = email.policy.SMTP.clone(cte_type="7bit")
    email.generator.BytesGenerator(out, policy=policy).flatten(parse(data))
    return out.getvalue()
