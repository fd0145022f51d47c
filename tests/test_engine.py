"""The delivery engine against a real SMTP server that fails on purpose."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.delivery.engine import Summary
from newsletter.errors import NewsletterError
from newsletter.storage.models import Delivery, Issue, Member, utcnow
from tests import steps as publish
from tests.checks import check_message
from tests.smtpd import RecordingHandler
from tests.steps import import_csv, import_source


def add_members(sessions: sessionmaker[Session], tmp_path: Path, n: int) -> list[str]:
    emails = [f"member{i:05d}@example.org" for i in range(n)]
    path = tmp_path / f"members-{n}.csv"
    path.write_text("email,name\n" + "".join(f"{e},Member {i}\n" for i, e in enumerate(emails)))
    import_csv(sessions, path)
    return emails


def fast_retries(settings: Settings, **delivery: Any) -> Settings:
    """Backoff in milliseconds and a run that waits for its deferred rows. The reply timeout
    is short, but not so short that a loaded machine's slow reply reads as a lost one (the
    message would then be sent again: a duplicate the fault test rightly counts)."""
    values = {
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "linger_seconds": 30.0,
        "pause_after": 1000,
        **delivery,
    }
    return dataclasses.replace(
        settings,
        delivery=dataclasses.replace(settings.delivery, **values),
        smtp=dataclasses.replace(settings.smtp, timeout=2.5),
    )


def rows_by_email(sessions: sessionmaker[Session]) -> dict[str, Delivery]:
    with sessions() as s:
        return {email: d for d, email in s.execute(select(Delivery, Member.email).join(Member))}


def send_all(settings: Settings, sessions: sessionmaker[Session]) -> Any:
    return asyncio.run(publish.send(settings, sessions))[-1]


@pytest.mark.slow
@pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep", "pipelined"])
def test_faults_lose_nobody_and_mail_nobody_twice(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
    pipelining: bool,
) -> None:
    smtp_server.pipelining = pipelining  # the engine sends MAIL, RCPT and DATA in one write
    emails = add_members(sessions, tmp_path, 300)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    rng = random.Random(20171206)
    refused = set(rng.sample(emails, 12))
    for e in refused:
        smtp_server.refuse[e] = "550 5.1.1 No such user here"
    kinds = ["421", "451", "drop-rcpt", "drop-data", "stall"]
    for e in emails:
        if e not in refused and rng.random() < 0.35:
            smtp_server.faults[e] = [rng.choice(kinds) for _ in range(rng.randint(1, 2))]
    smtp_server.stall_seconds = 3.0  # past the client's 2.5 s timeout
    fast = fast_retries(settings)
    summary = send_all(fast, sessions)

    received = smtp_server.by_recipient()
    assert set(smtp_server.injected) == set(kinds)  # every kind of failure happened
    assert set(received) == set(emails) - refused  # nobody deliverable was lost
    assert all(len(m) == 1 for m in received.values())  # nobody was mailed twice
    rows = rows_by_email(sessions)
    for e in emails:
        if e in refused:
            assert (rows[e].status, rows[e].last_code) == ("bounced", 550)
        else:
            assert rows[e].status == "sent"
            assert rows[e].attempts == len(smtp_server.faults.get(e, [])) + 1, rows[e].last_message
    assert summary.counts == {"sent": len(received), "bounced": len(refused)}
    assert summary.status == "sent"


def test_unsubscribe_mid_send_is_honoured(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    emails = add_members(sessions, tmp_path, 400)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    smtp_server.delay_seconds = 0.02  # 4 connections → about 200 messages a second
    leaver: dict[str, str] = {}

    def unsubscribe_when_halfway() -> None:
        while smtp_server.count() < 150:
            time.sleep(0.005)
        # Someone a little ahead of the sender: already claimed, not yet sent.
        sent = set(smtp_server.by_recipient())
        target = next(e for e in emails[200:] if e not in sent)
        with sessions.begin() as s:
            s.execute(
                update(Member)
                .where(Member.email == target)
                .values(status="unsubscribed", unsubscribed_at=utcnow(), updated_at=utcnow())
            )
        leaver["email"] = target

    thread = threading.Thread(target=unsubscribe_when_halfway)
    thread.start()
    summary = send_all(settings, sessions)
    thread.join()
    received = smtp_server.by_recipient()
    assert leaver["email"] not in received
    assert rows_by_email(sessions)[leaver["email"]].status == "skipped"
    assert summary.counts == {"sent": 399, "skipped": 1}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens here once the socket is closed


def test_repeated_connection_failures_pause_the_issue_then_resume(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    add_members(sessions, tmp_path, 40)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    down = dataclasses.replace(
        fast_retries(settings, pause_after=5, linger_seconds=0.0),
        smtp=dataclasses.replace(settings.smtp, port=closed_port(), timeout=1.0),
    )
    summary = send_all(down, sessions)
    assert summary.status == "paused"
    assert "5 consecutive connection failures" in summary.pause_reason
    assert "Connect" in summary.pause_reason or "refused" in summary.pause_reason.lower()
    with sessions() as s:
        issue = s.scalars(select(Issue)).one()
        assert issue.status == "paused"
        assert issue.pause_reason == summary.pause_reason
    assert smtp_server.messages == []
    with pytest.raises(publish.IssuePaused, match="paused"):
        asyncio.run(publish.deliver(settings, sessions, issue))

    publish.resume(sessions, issue.id)
    # The deferred rows are due at once with millisecond backoff; the server is up again.
    summary = asyncio.run(publish.deliver(fast_retries(settings), sessions, issue))
    assert summary.status == "sent"
    assert summary.counts == {"sent": 40}
    assert all(len(m) == 1 for m in smtp_server.by_recipient().values())


def test_failover_to_the_next_relay(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    from newsletter.config import RelaySettings

    add_members(sessions, tmp_path, 20)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    conf = dataclasses.replace(
        settings.smtp, port=closed_port(), fallback=[RelaySettings("127.0.0.1", smtp_server.port)]
    )
    summary = send_all(dataclasses.replace(settings, smtp=conf), sessions)
    assert summary.counts == {"sent": 20}
    assert len(smtp_server.by_recipient()) == 20


def test_bounce_threshold_marks_the_member_and_stops_mail(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    add_members(sessions, tmp_path, 3)
    smtp_server.refuse["member00001@example.org"] = "550 5.1.1 gone"
    feed = site / "examples" / "seed-feed.xml"
    text = feed.read_text()
    for round_ in range(3):
        (tmp_path / f"f{round_}.xml").write_text(text.replace("chinaip-report-", f"r{round_}-"))
        import_source(sessions, str(tmp_path / f"f{round_}.xml"))
        send_all(settings, sessions)
    with sessions() as s:
        member = s.scalar(select(Member).where(Member.email == "member00001@example.org"))
        assert member is not None
        assert (member.status, member.bounce_count) == ("bounced", 2)
        rows = s.scalars(select(Delivery).where(Delivery.member_id == member.id)).all()
    assert [r.status for r in rows] == ["bounced", "bounced"]  # not even snapshotted the 3rd time
    assert len(smtp_server.messages) == 6


def test_retry_requeues_rows_that_failed_at_the_deadline(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    add_members(sessions, tmp_path, 5)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    smtp_server.faults["member00002@example.org"] = ["451"] * 100
    short = fast_retries(settings, retry_deadline_hours=0.3 / 3600)
    summary = send_all(short, sessions)
    assert summary.counts == {"sent": 4, "failed": 1}
    row = rows_by_email(sessions)["member00002@example.org"]
    assert row.status == "failed"
    assert row.last_code == 451
    assert "deadline" in row.last_message
    smtp_server.faults.clear()
    summary = asyncio.run(publish.retry(settings, sessions, summary.issue_id))
    assert summary.counts == {"sent": 5}
    assert len(smtp_server.by_recipient()["member00002@example.org"]) == 1


def test_dkim_signature_verifies_and_covers_list_unsubscribe(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> None:
    from newsletter.config import DkimSettings
    from tests.steps import import_csv as import_members

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (site / "dkim.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    signed = dataclasses.replace(settings, dkim=DkimSettings("example.org", "news2026", "dkim.pem"))
    import_members(sessions, site / "subscribers" / "example.csv")
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    send_all(signed, sessions)
    assert len(smtp_server.messages) == 5
    # example.csv's Chinese readers get a copy of their own: with two copies the signing
    # processes sign whole messages (content/variants.WHOLE), not one skeleton's slots.
    languages = {
        m.parse().get_body(preferencelist=("html",)).get_content().count('lang="zh-Hans"') > 0  # type: ignore[union-attr]
        for m in smtp_server.messages
    }
    assert languages == {True, False}

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"news2026._domainkey.example.org."
        return record

    for m in smtp_server.messages:
        assert dkim.verify(m.data, dnsfunc=dns)
        check_message(m.data)
        header = m.parse()["DKIM-Signature"]
        tags = dict(t.strip().split("=", 1) for t in str(header).split(";") if "=" in t)
        signed_headers = {h.strip().lower() for h in tags["h"].split(":")}
        assert {
            "list-unsubscribe",
            "list-unsubscribe-post",
            "from",
            "to",
            "subject",
        } <= signed_headers
        altered = m.data.replace(b"List-Unsubscribe: <http", b"List-Unsubscribe: <hxxp", 1)
        assert not dkim.verify(altered, dnsfunc=dns)


def release_slowly(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> publish.Prepared:
    """A 300-member issue, released, to a server slow enough to interrupt mid-send."""
    add_members(sessions, tmp_path, 300)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    smtp_server.delay_seconds = 0.01
    return publish.release_next(settings, sessions)


def deliver_until(
    settings: Settings,
    sessions: sessionmaker[Session],
    prepared: publish.Prepared,
    smtp_server: RecordingHandler,
    action: Any,
) -> Any:
    """Deliver the issue; once 50 messages are in, an editor's `action` (pause, cancel) hits it."""

    def act_when_started() -> None:
        while smtp_server.count() < 50:
            time.sleep(0.005)
        action(sessions, prepared.issue.id, actor="test")

    thread = threading.Thread(target=act_when_started)
    thread.start()
    try:
        return asyncio.run(publish.deliver(settings, sessions, prepared.issue))
    finally:
        thread.join()


def test_pause_mid_send_then_resume_mails_everyone_once(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    from tests import steps as desk

    prepared = release_slowly(settings, sessions, site, tmp_path, smtp_server)
    issue_id = prepared.issue.id
    summary = deliver_until(settings, sessions, prepared, smtp_server, desk.pause)
    assert summary.status == "paused"
    stopped_at = smtp_server.count()
    assert 50 <= stopped_at < 300
    time.sleep(0.3)
    assert smtp_server.count() == stopped_at  # nothing goes out while paused
    desk.resume(sessions, issue_id, actor="test")
    summary = asyncio.run(
        publish.deliver(settings, sessions, publish.get_issue(sessions, issue_id))
    )
    assert summary.status == "sent"
    assert summary.counts == {"sent": 300}
    received = smtp_server.by_recipient()
    assert len(received) == 300
    assert all(len(m) == 1 for m in received.values())


def test_cancel_mid_send_stops_and_says_how_many_went(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    from tests import steps as desk

    prepared = release_slowly(settings, sessions, site, tmp_path, smtp_server)
    deliver_until(settings, sessions, prepared, smtp_server, desk.cancel)
    sent = smtp_server.count()
    time.sleep(0.3)
    assert smtp_server.count() == sent < 300
    info = desk.issue_info(sessions, prepared.issue.id)
    assert info.status == "cancelled"
    assert info.counts == {"sent": sent, "cancelled": 300 - sent}
    assert (
        info.summary
        == f"issue #{prepared.issue.id} is cancelled: {sent} of 300 sent, {300 - sent} not sent (cancelled)"
    )
    with pytest.raises(NewsletterError, match="cancelled"):
        asyncio.run(
            publish.deliver(settings, sessions, publish.get_issue(sessions, prepared.issue.id))
        )


def test_two_senders_on_one_issue_share_the_relays_quota(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    # Two engines (as two `newsletter worker` processes would) on one issue, 8 messages a
    # second per relay: the server must never see more than the quota allows in any second.
    # With a bucket per sender the two would send 8 + 8 at once and 16 a second after.
    rate = 8
    add_members(sessions, tmp_path, 40)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    limited = dataclasses.replace(
        settings,
        smtp=dataclasses.replace(settings.smtp, rate_per_second=rate),
        delivery=dataclasses.replace(settings.delivery, in_flight=4),  # both get rows to send
    )
    prepared = publish.release_next(limited, sessions)

    async def both() -> list[Summary]:
        return await asyncio.gather(
            *(publish.deliver(limited, sessions, prepared.issue) for _ in range(2))
        )

    summaries = asyncio.run(both())
    assert sum(s.attempted for s in summaries) == 40
    assert all(s.attempted > 0 for s in summaries)  # both really sent
    arrivals = sorted(m.at for m in smtp_server.messages)
    assert len(arrivals) == 40
    # A full bucket (8) plus what refills over the window (8 in one second), plus one
    # for rounding at the window's edges: 17 at most in any one-second window.
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= 2 * rate + 1


def test_a_live_sender_renews_its_leases_so_no_one_takes_its_rows(
    settings: Settings, sessions: sessionmaker[Session], site: Path, tmp_path: Path
) -> None:
    from newsletter.storage.ledger import Ledger

    add_members(sessions, tmp_path, 6)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    issue_id = publish.release_next(settings, sessions).issue.id
    slow = Ledger(sessions, issue_id, "host:1:slow", lease_seconds=0.5, bounce_threshold=2)
    other = Ledger(sessions, issue_id, "host:2:other", lease_seconds=0.5, bounce_threshold=2)
    jobs, _ = slow.claim(4)
    assert len(jobs) == 4
    time.sleep(0.3)
    assert slow.renew() == 4  # before the lease ran out: it is extended from now
    time.sleep(0.3)  # past the first lease, within the renewed one
    taken, _ = other.claim(10)
    assert {j.delivery_id for j in taken}.isdisjoint(j.delivery_id for j in jobs)
    assert len(taken) == 2  # only the rows nobody held
    time.sleep(0.6)  # no renewal: the slow sender is taken for dead
    again, _ = other.claim(10)  # (its own two, unrenewed too, come back with them)
    assert {j.delivery_id for j in jobs} <= {j.delivery_id for j in again}
    assert slow.renew() == 0  # they are no longer its rows
