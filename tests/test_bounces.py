"""What comes back: signed VERP, DSNs, complaints, auto-replies, scoring and suppression."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content.verp import Verp, VerpMatch
from newsletter.services import bounces
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.storage.models import (
    BounceEvent,
    BounceKind,
    Delivery,
    DeliveryStatus,
    Member,
    MemberStatus,
)
from newsletter.tokens import Signer
from tests import returns, steps
from tests.smtpd import RecordingHandler

SECRET = b"test-secret-key-0123456789abcdef"
T0 = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def days(self, n: float) -> None:
        self.now += dt.timedelta(days=n)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def services(settings: Settings, sessions: sessionmaker[Session], clock: Clock) -> Services:
    return Services(settings, sessions, clock=clock)


@pytest.fixture
def sent(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    smtp_server: RecordingHandler,
) -> dict[str, tuple[str, str]]:
    """One issue sent to the sample members: per address, its VERP sender and Message-ID."""
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    asyncio.run(steps.send(settings, sessions))
    return {
        address: (m.mail_from, str(m.parse()["Message-ID"]))
        for address, (m,) in smtp_server.by_recipient().items()
    }


def member(sessions: sessionmaker[Session], address: str) -> Member:
    with sessions() as s:
        found = s.scalar(select(Member).where(Member.email == address))
        assert found is not None
        s.expunge(found)
        return found


def events(sessions: sessionmaker[Session], address: str) -> list[BounceEvent]:
    with sessions() as s:
        found = list(
            s.scalars(
                select(BounceEvent)
                .join(Member, Member.id == BounceEvent.member_id)
                .where(Member.email == address)
                .order_by(BounceEvent.id)
            )
        )
        s.expunge_all()
        return found


ADDRESS = "li.wei@example.org"


# --- signed VERP -----------------------------------------------------------------------------


def test_a_verp_address_reads_back_as_its_issue_and_member_in_any_case() -> None:
    verp = Verp("bounces@example.org", Signer((SECRET,)))
    address = verp.address(12, 345)
    local, _domain = address.split("@")
    assert local.startswith("bounces+12-345-")
    assert len(local.rsplit("-", 1)[1]) == 8
    assert verp.read(address) == VerpMatch(12, 345)
    assert verp.read(address.upper()) == VerpMatch(12, 345)  # hosts that fold the case
    assert verp.read(f"<{address}>") == VerpMatch(12, 345)
    # A rotated key still reads what the old one signed.
    rotated = Verp("bounces@example.org", Signer((b"a-new-key-0123456789abcdef", SECRET)))
    assert rotated.read(address) == VerpMatch(12, 345)


forged_detail = st.tuples(
    st.integers(1, 10**12),
    st.integers(1, 10**12),
    st.text("abcdefghijklmnopqrstuvwxyz234567", min_size=0, max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(detail=forged_detail, other=st.text(max_size=40))
def test_no_forged_or_unsigned_verp_address_names_anyone(
    detail: tuple[int, int, str], other: str
) -> None:
    verp = Verp("bounces@example.org", Signer((SECRET,)))
    issue, member_id, tag = detail
    genuine = verp.address(issue, member_id)
    for address in (
        f"bounces+{issue}-{member_id}-{tag}@example.org",
        f"bounces+{issue}-{member_id}@example.org",  # unsigned, as before tags
        f"bounces+{other}@example.org",
        other,
    ):
        found = verp.read(address)
        if isinstance(found, VerpMatch):
            assert address.lower() == genuine.lower()
            assert found == VerpMatch(issue, member_id)


# --- applying reports ------------------------------------------------------------------------


def take(services: Services, raw: bytes, *envelope: str) -> bounces.Applied:
    return bounces.take(services, raw, source="test", envelope_to=envelope)


def test_a_hard_bounce_scores_one_a_day_and_suppresses_at_the_threshold(
    services: Services,
    sessions: sessionmaker[Session],
    sent: dict[str, tuple[str, str]],
    clock: Clock,
) -> None:
    verp, message_id = sent[ADDRESS]
    threshold = services.settings.bounces.threshold  # 5 in the sample site
    for day in range(int(threshold)):
        for _ in range(2):  # a second bounce the same day adds nothing
            raw = returns.dsn(to=verp, recipient=ADDRESS, message_id=message_id)
            applied = take(services, raw, verp)
            assert applied.outcome == "applied", applied
        assert member(sessions, ADDRESS).bounce_score == day + 1
        assert member(sessions, ADDRESS).status == (
            MemberStatus.BOUNCED if day + 1 >= threshold else MemberStatus.ACTIVE
        )
        clock.days(1)
    gone = member(sessions, ADDRESS)
    assert gone.status == MemberStatus.BOUNCED
    assert gone.left_reason.startswith("bounce score 5 reached 5; last: hard 5.1.1")
    history = events(sessions, ADDRESS)
    assert [e.score for e in history] == [1.0, 0.0] * int(threshold)
    assert {e.issue_id for e in history} == {1}
    # Nobody else was touched.
    assert member(sessions, "wang.fang@example.org").bounce_score == 0


def test_a_soft_bounce_scores_half_and_a_delay_nothing(
    services: Services,
    sessions: sessionmaker[Session],
    sent: dict[str, tuple[str, str]],
    clock: Clock,
) -> None:
    verp, message_id = sent[ADDRESS]
    delayed = returns.dsn(
        to=verp, recipient=ADDRESS, action="delayed", status="4.4.1", message_id=message_id
    )
    assert take(services, delayed, verp).kinds == (BounceKind.WARNING,)
    assert member(sessions, ADDRESS).bounce_score == 0
    expired = returns.dsn(
        to=verp, recipient=ADDRESS, status="4.3.0", diagnostic="smtp; 451 4.3.0 try later"
    )
    assert take(services, expired, verp).kinds == (BounceKind.SOFT,)
    assert member(sessions, ADDRESS).bounce_score == 0.5
    assert [e.kind for e in events(sessions, ADDRESS)] == [BounceKind.WARNING, BounceKind.SOFT]


def test_the_score_lapses_after_the_quiet_period(
    services: Services,
    sessions: sessionmaker[Session],
    sent: dict[str, tuple[str, str]],
    clock: Clock,
) -> None:
    verp, _ = sent[ADDRESS]
    for _ in range(3):
        take(services, returns.dsn(to=verp, recipient=ADDRESS), verp)
        clock.days(1)
    assert member(sessions, ADDRESS).bounce_score == 3
    clock.days(services.settings.bounces.quiet_days + 1)
    history = services.read(bounces.history, member(sessions, ADDRESS).id)
    assert history is not None
    assert history.score == 0
    take(services, returns.dsn(to=verp, recipient=ADDRESS), verp)
    assert member(sessions, ADDRESS).bounce_score == 1  # started again


def test_the_same_dsn_delivered_twice_counts_once(
    services: Services,
    sessions: sessionmaker[Session],
    sent: dict[str, tuple[str, str]],
    clock: Clock,
) -> None:
    verp, _ = sent[ADDRESS]
    raw = returns.dsn(to=verp, recipient=ADDRESS, report_id="<once@relay.example.net>")
    assert take(services, raw, verp).outcome == "applied"
    clock.days(1)  # a day later, so only the duplicate rule can refuse it
    again = take(services, raw, verp)
    assert again.outcome == "duplicate"
    assert member(sessions, ADDRESS).bounce_score == 1
    assert len(events(sessions, ADDRESS)) == 1
    # Without a Message-ID, the same body is the same report.
    bare = b"\n".join(
        line for line in raw.split(b"\n") if not line.lower().startswith(b"message-id: <once")
    )
    clock.days(1)
    assert take(services, bare, verp).outcome == "applied"
    clock.days(1)
    assert take(services, b"Received: by another.example.net\n" + bare, verp).outcome == "duplicate"
    assert member(sessions, ADDRESS).bounce_score == 2


def test_an_arf_complaint_unsubscribes_its_member_at_once(
    services: Services, sessions: sessionmaker[Session], sent: dict[str, tuple[str, str]]
) -> None:
    verp, message_id = sent[ADDRESS]
    # Feedback loops write to their own address; the report carries the original sender.
    raw = returns.arf(
        to="fbl@example.org", recipient=ADDRESS, original_from=verp, message_id=message_id
    )
    applied = take(services, raw, "fbl@example.org")
    assert applied.outcome == "applied"
    assert applied.suppressed
    gone = member(sessions, ADDRESS)
    assert gone.status == MemberStatus.UNSUBSCRIBED
    assert gone.left_reason == "complaint"
    assert [e.kind for e in events(sessions, ADDRESS)] == [BounceKind.COMPLAINT]


@pytest.mark.parametrize("style", ["rfc3834", "x-autoreply", "precedence"])
def test_an_out_of_office_reply_changes_nothing(
    services: Services,
    sessions: sessionmaker[Session],
    sent: dict[str, tuple[str, str]],
    style: str,
) -> None:
    verp, _ = sent[ADDRESS]
    applied = take(services, returns.vacation(to=verp, sender=ADDRESS, style=style), verp)
    assert applied.outcome == "autoreply"
    found = member(sessions, ADDRESS)
    assert (found.status, found.bounce_score) == (MemberStatus.ACTIVE, 0)
    assert events(sessions, ADDRESS) == []


def test_a_non_standard_bounce_is_read_by_flufl_bounce(
    services: Services, sessions: sessionmaker[Session], sent: dict[str, tuple[str, str]]
) -> None:
    verp, _ = sent[ADDRESS]
    applied = take(services, returns.qmail(to=verp, recipient=ADDRESS), verp)
    assert applied.kinds == (BounceKind.HARD,)
    assert member(sessions, ADDRESS).bounce_score == 1


def test_when_the_verp_address_was_lost_the_signed_message_id_names_the_member(
    services: Services, sessions: sessionmaker[Session], sent: dict[str, tuple[str, str]]
) -> None:
    _, message_id = sent[ADDRESS]
    raw = returns.dsn(
        to="bounces@example.org", recipient=ADDRESS, message_id=message_id, headers_only=True
    )
    applied = take(services, raw, "bounces@example.org")
    assert applied.outcome == "applied"
    assert applied.member_id == member(sessions, ADDRESS).id
    # An issue Message-ID without its tag, or with another member's number, names no one.
    issue, member_id, nonce = message_id.strip("<>").split("@")[0].split(".")[:3]
    for forged in (
        f"<{issue}.{member_id}.{nonce}@example.org>",
        message_id.replace(f".{member_id}.", ".2."),
    ):
        raw = returns.dsn(to="bounces@example.org", recipient=ADDRESS, message_id=forged)
        assert take(services, raw, "bounces@example.org").outcome == "ignored"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(detail=forged_detail, kind=st.sampled_from(["dsn", "arf"]))
def test_a_forged_or_unsigned_report_suppresses_no_one(
    services: Services,
    sessions: sessionmaker[Session],
    sent: dict[str, tuple[str, str]],
    detail: tuple[int, int, str],
    kind: str,
) -> None:
    issue, _, tag = detail
    target = member(sessions, ADDRESS)
    genuine = Verp("bounces@example.org", services.signer).address(issue, target.id)
    forged = f"bounces+{issue}-{target.id}{'-' + tag if tag else ''}@example.org"
    if forged.lower() == genuine.lower():
        return
    raw = (
        returns.dsn(to=forged, recipient=ADDRESS, report_id=f"<{tag}.{issue}@x>")
        if kind == "dsn"
        else returns.arf(to=forged, recipient=ADDRESS, original_from=forged)
    )
    applied = take(services, raw, forged)
    assert applied.outcome == "ignored"
    after = member(sessions, ADDRESS)
    assert (after.status, after.bounce_score, after.left_reason) == (MemberStatus.ACTIVE, 0, "")
    assert events(sessions, ADDRESS) == []


def test_a_complaint_stops_the_members_unsent_rows(
    services: Services, sessions: sessionmaker[Session], sent: dict[str, tuple[str, str]]
) -> None:
    verp, _ = sent[ADDRESS]
    target = member(sessions, ADDRESS)
    with sessions.begin() as s:  # as if the member's message had not gone out yet
        s.execute(
            update(Delivery)
            .where(Delivery.member_id == target.id)
            .values(status=DeliveryStatus.QUEUED)
        )
    take(services, returns.arf(to="fbl@example.org", recipient=ADDRESS, original_from=verp))
    with sessions() as s:
        row = s.scalar(select(Delivery).where(Delivery.member_id == target.id))
        assert row is not None
        assert row.status == DeliveryStatus.SKIPPED


def test_the_migration_adds_and_drops_the_bounce_tables(database_url: str) -> None:
    engine = db.make_engine(database_url)
    config = db._alembic_config(engine)
    command.upgrade(config, "0010")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO members (email, name, status, attributes, created_at, "
                "updated_at, bounce_count) VALUES ('a@example.org', '', 'active', '{}', "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00', 0)"
            )
        )
    command.upgrade(config, "0013_bounces")
    with engine.begin() as conn:
        row = conn.execute(text("SELECT bounce_score, left_reason FROM members")).one()
        assert tuple(row) == (0, "")
        conn.execute(
            text("INSERT INTO click_counts (issue_id, link, people, scanners) VALUES (1, 0, 2, 3)")
        )
    command.downgrade(config, "0010")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT email FROM members")).scalar() == "a@example.org"
        tables = set(inspect(conn).get_table_names())
        assert not tables & {"bounce_events", "click_hits", "click_counts", "member_clicks"}
    engine.dispose()
