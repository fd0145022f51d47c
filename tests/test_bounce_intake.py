"""Bounce intake with real servers: Postfix's own DSNs to `bounces serve`, Dovecot for `bounces fetch`,
and a pipe for `bounces read`."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config
from newsletter.config import Settings
from newsletter.delivery.sink import ServerThread
from newsletter.storage import db
from newsletter.storage.models import BounceEvent, BounceKind, Delivery, Member, MemberStatus
from tests import mta, returns, steps
from tests.conftest import SECRET
from tests.smtpd import RecordingHandler

BOUNCE_DOMAIN = "bounces.example.org"  # aligned with From (example.org), as config.toml asks
DEAD, SLOW = "li.wei@example.org", "wang.fang@example.org"


def configure(site: Path, **values: str) -> None:
    """Set keys of the site's config.toml ("table.key": TOML value)."""
    path = site / "config.toml"
    text = path.read_text()
    for dotted, value in values.items():
        table, key = dotted.split(".")
        head = text.index(f"\n[{table}]\n")
        line = re.compile(rf"^{key} = .*$", re.M).search(text, head)
        assert line is not None, dotted
        text = text[: line.start()] + f"{key} = {value}" + text[line.end() :]
    path.write_text(text)


def load(site: Path, database_url: str) -> Settings:
    return config.load(
        site / "config.toml",
        env={config.SECRET_ENV: SECRET, config.DATABASE_URL_ENV: database_url},
        overrides={"delivery": {"linger_seconds": 0.0}},
    )


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({config.SECRET_ENV: SECRET, config.DATABASE_URL_ENV: database_url, "COLUMNS": "200"})
    env.update(extra)
    return env


@contextlib.contextmanager
def receiver(site: Path, database_url: str) -> Iterator[int]:
    """`newsletter bounces serve` as a process of its own, on a free port."""
    port = mta.free_port()
    configure(site, **{"bounces.port": str(port)})
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    engine.dispose()
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "bounces", "serve"],
        cwd=site,
        env=cli_env(database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        mta.wait_for_port(port, proc, site / "no-log")
        yield port
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
        print(out.decode(errors="replace"))  # shown when the test fails


def events(sessions: sessionmaker[Session]) -> dict[str, list[BounceEvent]]:
    with sessions() as s:
        rows = s.execute(
            select(Member.email, BounceEvent).join(Member, Member.id == BounceEvent.member_id)
        ).all()
        s.expunge_all()
    found: dict[str, list[BounceEvent]] = {}
    for address, event in rows:
        found.setdefault(address, []).append(event)
    return found


@pytest.mark.slow
def test_postfix_relays_an_issue_and_its_dsns_score_each_member(
    site: Path, database_url: str
) -> None:
    downstream = RecordingHandler()
    downstream.refuse[DEAD] = "550 5.1.1 <li.wei@example.org>: no such mailbox"
    downstream.faults[SLOW] = ["451"] * 10  # every try: Postfix gives up after its one try
    configure(
        site, **{"list.return_path": f'"bounces@{BOUNCE_DOMAIN}"', "bounces.threshold": "1.0"}
    )
    with (
        receiver(site, database_url) as bounce_port,
        ServerThread(downstream) as down,
        mta.postfix(down.port, {BOUNCE_DOMAIN: bounce_port}) as relay,
    ):
        downstream.port = down.port
        configure(site, **{"smtp.port": str(relay.port)})
        settings = load(site, database_url)
        sessions = db.open_database(settings.database_url)
        steps.import_csv(sessions, site / "subscribers" / "example.csv")
        steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
        (summary,) = asyncio.run(steps.send(settings, sessions))
        assert summary.counts == {"sent": 5}  # Postfix took every message
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and set(events(sessions)) != {DEAD, SLOW}:
            time.sleep(0.5)
        found = events(sessions)
        assert set(found) == {DEAD, SLOW}, relay.log

    delivered = set(downstream.by_recipient())
    with sessions() as s:
        members = {m.email: m for m in s.scalars(select(Member))}
        sent = {m.email for m in members.values() if m.status == MemberStatus.ACTIVE}
        rows = s.scalars(select(Delivery)).all()
        assert {r.status for r in rows} == {"sent"}
    # What the downstream server took, bounced no one; what it refused, bounced its member.
    assert delivered == sent - {DEAD, SLOW}
    (dead,) = found[DEAD]
    assert (dead.kind, dead.status, dead.score, dead.issue_id) == (BounceKind.HARD, "5.1.1", 1, 1)
    assert "550 5.1.1" in dead.diagnostic
    assert dead.source == "smtp"
    (slow,) = found[SLOW]
    assert (slow.kind, slow.status, slow.score) == (BounceKind.SOFT, "4.3.0", 0.5)
    assert (members[DEAD].status, members[DEAD].bounce_score) == (MemberStatus.BOUNCED, 1)
    assert members[DEAD].left_reason.startswith("bounce score 1 reached 1; last: hard 5.1.1")
    assert (members[SLOW].status, members[SLOW].bounce_score) == (MemberStatus.ACTIVE, 0.5)
    for address in delivered:
        assert members[address].bounce_score == 0
    sessions.kw["bind"].dispose()


def test_the_receiver_takes_mail_for_the_bounce_domain_only(site: Path, database_url: str) -> None:
    with (
        receiver(site, database_url) as port,
        smtplib.SMTP("127.0.0.1", port, timeout=10) as client,
    ):
        code, _ = client.ehlo()
        assert code == 250
        client.mail("")
        assert client.rcpt("someone@elsewhere.example")[0] == 550
        assert client.rcpt("bounces+1-1-aaaaaaaa@example.org")[0] == 250
        code, _ = client.data(returns.vacation(to="bounces@example.org", sender="a@b.example"))
        assert code == 250


def test_bounces_read_takes_one_message_from_a_pipe(
    site: Path, database_url: str, smtp_server: RecordingHandler
) -> None:
    settings = load(site, database_url)
    settings = config.load(
        site / "config.toml",
        env={config.SECRET_ENV: SECRET, config.DATABASE_URL_ENV: database_url},
        overrides={"delivery": {"linger_seconds": 0.0}, "smtp": {"port": smtp_server.port}},
    )
    sessions = db.open_database(settings.database_url)
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    asyncio.run(steps.send(settings, sessions))
    (message,) = smtp_server.by_recipient()[DEAD]
    raw = returns.dsn(to="bounces@example.org", recipient=DEAD)
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "bounces", "read", "--recipient", message.mail_from],
        cwd=site,
        env=cli_env(database_url),
        input=raw,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert b"pipe: applied: hard 5.1.1" in result.stdout
    assert [e.kind for e in events(sessions)[DEAD]] == [BounceKind.HARD]
    # Without the signed envelope recipient, the same report names no one.
    again = subprocess.run(
        [sys.executable, "-m", "newsletter", "bounces", "read"],
        cwd=site,
        env=cli_env(database_url),
        input=returns.dsn(to="bounces@example.org", recipient=SLOW),
        capture_output=True,
        timeout=60,
    )
    assert again.returncode == 0
    assert b"pipe: ignored" in again.stdout
    assert SLOW not in events(sessions)
    sessions.kw["bind"].dispose()


def _imap(box: mta.Dovecot) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", box.port, timeout=10)
    client.login(box.user, box.password)
    return client


def _count(client: imaplib.IMAP4, folder: str) -> int:
    status, data = client.select(f'"{folder}"', readonly=True)
    assert status == "OK", data
    return int(data[0] or 0)


@pytest.mark.slow
def test_bounces_fetch_moves_what_it_understood_and_leaves_the_rest(
    site: Path, database_url: str, smtp_server: RecordingHandler
) -> None:
    settings = config.load(
        site / "config.toml",
        env={config.SECRET_ENV: SECRET, config.DATABASE_URL_ENV: database_url},
        overrides={"delivery": {"linger_seconds": 0.0}, "smtp": {"port": smtp_server.port}},
    )
    sessions = db.open_database(settings.database_url)
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    asyncio.run(steps.send(settings, sessions))
    sent = {a: m for a, (m,) in smtp_server.by_recipient().items()}
    mailbox = [
        returns.dsn(to=sent[DEAD].mail_from, recipient=DEAD),
        returns.arf(to="fbl@example.org", recipient=SLOW, original_from=sent[SLOW].mail_from),
        returns.vacation(to=sent[DEAD].mail_from, sender=DEAD),
        b"From: someone@example.com\r\nSubject: hello\r\n\r\nAre you there?\r\n",
    ]
    with mta.dovecot() as box:
        client = _imap(box)
        for raw in mailbox:
            status, _ = client.append("INBOX", None, None, raw)
            assert status == "OK"
        client.logout()
        configure(
            site,
            **{
                "bounces.imap_host": '"127.0.0.1"',
                "bounces.imap_port": str(box.port),
                "bounces.imap_security": '"none"',
                "bounces.imap_user": f'"{box.user}"',
            },
        )
        result = subprocess.run(
            [sys.executable, "-m", "newsletter", "bounces", "fetch"],
            cwd=site,
            env=cli_env(database_url, NEWSLETTER_IMAP_PASSWORD=box.password),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "4 read, 3 moved to Processed, 1 not understood (left in INBOX)" in result.stdout
        client = _imap(box)
        assert _count(client, "INBOX") == 1
        assert _count(client, "Processed") == 3
        assert _count(client, "INBOX") == 1
        status, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert status == "OK"
        first = data[0]
        assert isinstance(first, tuple)
        assert b"hello" in first[1]
        client.logout()
        # A second run finds only what it did not understand, and leaves it again.
        again = subprocess.run(
            [sys.executable, "-m", "newsletter", "bounces", "fetch"],
            cwd=site,
            env=cli_env(database_url, NEWSLETTER_IMAP_PASSWORD=box.password),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "1 read, 0 moved to Processed, 1 not understood" in again.stdout
    found = events(sessions)
    assert [e.kind for e in found[DEAD]] == [BounceKind.HARD]
    assert [e.kind for e in found[SLOW]] == [BounceKind.COMPLAINT]
    assert all(e.source == "imap" for es in found.values() for e in es)
    with sessions() as s:
        slow = s.scalar(select(Member).where(Member.email == SLOW))
        assert slow is not None
        assert (slow.status, slow.left_reason) == (MemberStatus.UNSUBSCRIBED, "complaint")
    sessions.kw["bind"].dispose()
