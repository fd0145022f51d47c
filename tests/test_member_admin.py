"""Members kept by publishers, on SQLite and PostgreSQL: the exports of Mailchimp, Substack,
Buttondown and listmonk imported after their mapping, the delimiter detected, erasure (what
goes, what stays, the suppression list against imports, the subscribe form and editors), the
formula-safe export, the `subscribers` commands, and migration 0011."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter.cli.main import app
from newsletter.config import Settings
from newsletter.errors import NewsletterError
from newsletter.services import erasure, issues, members, membership, sending, surveys, votes
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.storage.models import (
    AuditEntry,
    Delivery,
    LinkHit,
    LinkHitCount,
    Member,
    MemberStatus,
    SignupRequest,
    Suppression,
    SystemMail,
    Vote,
)
from tests import steps
from tests.conftest import SECRET
from tests.smtpd import RecordingHandler

DATA = Path(__file__).parent / "data"
ACTOR = "test"


@pytest.fixture
def services(settings: Settings, sessions: sessionmaker[Session]) -> Services:
    return Services(settings, sessions)


def people(sessions: sessionmaker[Session]) -> dict[str, tuple[str, str, dict[str, str]]]:
    with sessions() as s:
        return {m.email: (m.name, str(m.status), m.attributes) for m in s.scalars(select(Member))}


def audits(sessions: sessionmaker[Session], action: str) -> list[tuple[str, int | None, str]]:
    with sessions() as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.action == action))
        return [(a.actor, a.member_id, a.detail) for a in rows]


# --- the exports of other services -------------------------------------------------------------


def test_the_exports_of_four_services_import_with_their_columns(
    services: Services, sessions: sessionmaker[Session]
) -> None:
    """Each file is recognised, its columns mapped to our fields (names joined, statuses
    translated, tracking columns left out, JSON attributes spread), and imported."""
    found = {}
    for name in (
        "mailchimp_subscribed.csv",
        "mailchimp_unsubscribed.csv",
        "mailchimp_cleaned.csv",
        "substack_email_list.csv",
        "buttondown_subscribers.csv",
        "listmonk_subscribers.tsv",
    ):
        data = (DATA / name).read_bytes()
        found[name] = members.preview(data).layout
        report = services.run(ACTOR, members.import_members, data, source=name)
        assert report.errors == [], (name, report.errors)
    assert {n: (lay.source, lay.delimiter) for n, lay in found.items()} == {
        "mailchimp_subscribed.csv": ("Mailchimp", ","),
        "mailchimp_unsubscribed.csv": ("Mailchimp", ","),
        "mailchimp_cleaned.csv": ("Mailchimp", ";"),  # semicolons, detected
        "substack_email_list.csv": ("Substack", ","),
        "buttondown_subscribers.csv": ("Buttondown", ","),
        "listmonk_subscribers.tsv": ("listmonk", "\t"),
    }
    mailchimp = dict(
        zip(
            found["mailchimp_subscribed.csv"].columns,
            found["mailchimp_subscribed.csv"].fields,
            strict=True,
        )
    )
    assert mailchimp["Email Address"] == "email"
    assert mailchimp["First Name"] == "first_name"
    assert mailchimp["OPTIN_IP"] == "skip"  # tracking data is not kept unless asked
    assert mailchimp["TAGS"] == "attribute"
    assert people(sessions) == {
        "mc.one@example.org": (
            "Mei Chen",
            "active",
            {
                "address": "1 Example Road, Beijing",
                "phone number": "+86 10 5555 0101",
                "birthday": "03/14",
                "tags": '"Patents","Firms"',
            },
        ),
        "mc.two@example.org": ("Tom Baker", "active", {"notes": "met at the fair"}),
        "mc.gone@example.org": ("Ann Left", "unsubscribed", {}),
        "mc.bounced@example.org": ("Bo Unce", "bounced", {}),
        "ss.free@example.org": ("", "active", {"active_subscription": "false", "plan": "other"}),
        "ss.paid@example.org": (
            "",
            "active",
            {"active_subscription": "true", "plan": "yearly", "expiry": "2026-01-01T00:00:00.000Z"},
        ),
        "ss.off@example.org": (
            "",
            "unsubscribed",
            {"active_subscription": "false", "plan": "other"},
        ),
        "bd.regular@example.org": (
            "",
            "active",
            {
                "notes": "reads every issue",
                "company": "Example IP",
                "seats": "3",
                "tags": "patents",
                "source": "import",
            },
        ),
        "bd.gone@example.org": ("", "unsubscribed", {"source": "api"}),
        "bd.bounce@example.org": ("", "bounced", {"source": "form"}),
        "bd.new@example.org": ("", "pending", {"source": "form"}),
        "lm.one@example.org": ("Lin Mo", "active", {"city": "Shanghai", "tier": '{"level": 2}'}),
        "lm.block@example.org": ("Block Ed", "unsubscribed", {}),
    }
    # Importing the subscribed file again re-subscribes nobody who left meanwhile.
    services.run(ACTOR, membership.unsubscribe_member, 1, reason="asked by mail")
    again = services.run(
        ACTOR,
        members.import_members,
        (DATA / "mailchimp_subscribed.csv").read_bytes(),
        source="again",
    )
    assert again.kept_unsubscribed == 1
    assert people(sessions)["mc.one@example.org"][1] == "unsubscribed"


def test_a_mapping_chosen_by_the_editor_replaces_the_proposal(
    services: Services, sessions: sessionmaker[Session]
) -> None:
    data = "Kontakt;Anzeigename;Abgemeldet\nk@example.org;Kay;\nq@example.org;Quinn;2024-01-01\n"
    with pytest.raises(NewsletterError, match="no 'email' column"):
        services.run(ACTOR, members.import_members, data, source="de.csv")
    chosen = {"Kontakt": "email", "Anzeigename": "name", "Abgemeldet": "unsubscribed_when_set"}
    report = services.run(ACTOR, members.import_members, data, source="de.csv", overrides=chosen)
    assert (report.added, report.unsubscribed, report.errors) == (2, 1, [])
    assert people(sessions) == {
        "k@example.org": ("Kay", "active", {}),
        "q@example.org": ("Quinn", "unsubscribed", {}),
    }
    with pytest.raises(NewsletterError, match="the file has no column 'Mail'"):
        members.preview(data, {"Mail": "email"})
    with pytest.raises(NewsletterError, match="'mail' is not a field"):
        members.preview(data, {"Kontakt": "mail"})
    with pytest.raises(NewsletterError, match="are all mapped to email"):
        members.preview(data, {"Kontakt": "email", "Anzeigename": "email"})
    (entry,) = audits(sessions, "import-members")
    assert "de.csv (a plain list, semicolon-separated): 2 rows, 2 added" in entry[2]


# --- erasure -----------------------------------------------------------------------------------


def _member(sessions: sessionmaker[Session], email: str) -> Member:
    with sessions() as s:
        found = s.scalar(select(Member).where(Member.email == email))
        assert found is not None
        return found


def _totals(sessions: sessionmaker[Session], issue_id: int, survey_id: int) -> tuple[Any, ...]:
    with sessions() as s:
        deliveries = s.execute(
            select(Delivery.status, func.count())
            .where(Delivery.issue_id == issue_id)
            .group_by(Delivery.status)
        ).all()
        counted = s.execute(
            select(Vote.option, func.count())
            .where(Vote.survey_id == survey_id, Vote.option.is_not(None))
            .group_by(Vote.option)
        ).all()
        hits = (s.scalar(select(func.count()).select_from(LinkHit)) or 0) + (
            s.scalar(select(func.coalesce(func.sum(LinkHitCount.hits), 0))) or 0
        )
    return sorted(map(tuple, deliveries)), sorted(map(tuple, counted)), hits


def test_erasing_deletes_personal_data_keeps_counts_and_refuses_the_address_for_good(
    settings: Settings,
    sessions: sessionmaker[Session],
    services: Services,
    site: Path,
    smtp_server: RecordingHandler,
) -> None:
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    victim = _member(sessions, "wang.fang@example.org")
    smtp_server.refuse["wang.fang@example.org"] = "550 5.1.1 <wang.fang@example.org>: no such user"
    released = services.run(ACTOR, issues.release_next)
    asyncio.run(sending.deliver(services, released.issue_id))
    with sessions() as s:
        survey_id = int(s.execute(text("SELECT id FROM surveys")).scalar_one())
    services.run(
        ACTOR,
        votes.click,
        survey_id,
        victim.id,
        1,
        method="POST",
        person=True,
        ip="198.51.100.7",
        user_agent="Phone",
    )
    services.run(ACTOR, votes.click, survey_id, 1, 2, method="POST", person=True)
    # A sign-up from the form and its confirmation, for the same address.
    services.run("web", members.subscribe, "wang.fang@example.org", "王芳", ip="203.0.113.9")
    services.run(ACTOR, membership.edit_member, victim.id, attributes={"city": "Suzhou"})
    before = _totals(sessions, released.issue_id, survey_id)
    with sessions() as s:
        assert (
            s.scalar(
                select(func.count())
                .select_from(SystemMail)
                .where(SystemMail.to_address == victim.email)
            )
            == 0
        )  # active: no mail
        s.execute(
            text("UPDATE members SET status = 'unsubscribed' WHERE id = :m"), {"m": victim.id}
        )
        s.commit()
    services.run("web", members.subscribe, "wang.fang@example.org", "王芳", ip="203.0.113.9")

    done = services.run(
        "ed", erasure.erase_member, victim.id, reason="asked by mail from wang.fang@example.org"
    )
    assert (done.votes_kept, done.mail_deleted, done.signups_deleted) == (1, 1, 2)
    assert done.hits_folded >= 1
    assert _totals(sessions, released.issue_id, survey_id) == before  # every count whole
    with sessions() as s:
        row = s.get(Member, victim.id)
        assert row is not None
        assert (row.email, row.name, row.attributes, row.status) == (
            f"erased:{victim.id}",
            "",
            {},
            MemberStatus.ERASED,
        )
        assert (
            s.scalar(select(func.count()).select_from(Vote).where(Vote.member_id == victim.id)) == 0
        )
        assert (
            s.scalar(
                select(func.count()).select_from(LinkHit).where(LinkHit.member_id == victim.id)
            )
            == 0
        )
        assert s.scalar(select(func.count()).select_from(SignupRequest)) == 0
        assert (
            s.scalar(
                select(func.count())
                .select_from(SystemMail)
                .where(SystemMail.member_id == victim.id)
            )
            == 0
        )
        (reply,) = s.scalars(select(Delivery.last_message).where(Delivery.member_id == victim.id))
        assert reply == "5.1.1 <[erased]>: no such user"
        # Nothing in the whole database still names the address, the name or the networks.
        dump = repr(
            [
                list(map(tuple, s.execute(text(f"SELECT * FROM {t}"))))
                for t in (
                    "members",
                    "audit_log",
                    "deliveries",
                    "link_hits",
                    "votes",
                    "system_mail",
                    "signup_requests",
                    "suppressions",
                )
            ]
        )
        for secret in ("wang.fang@example.org", "王芳", "198.51.100.7", "203.0.113.9", "Suzhou"):
            assert secret not in dump, secret
        (entry,) = s.scalars(select(Suppression))
        # Keyed: not the plain SHA-256 anyone could compute from a list of addresses.
        assert entry.digest != hashlib.sha256(b"wang.fang@example.org").hexdigest()
    (erased,) = audits(sessions, "erase-member")
    assert erased[:2] == ("ed", victim.id)
    assert "asked by mail from [erased]" in erased[2]
    assert "1 counted votes kept without the member" in erased[2]

    # The address never comes back: an import, the form, an editor.
    report = services.run(
        ACTOR,
        members.import_members,
        "email,name\nWang.Fang@Example.org,Wang\nnew@example.org,New\n",
        source="back.csv",
    )
    assert [str(e) for e in report.errors] == [
        "line 2: wang.fang@example.org was erased at the member's request: it is on the "
        "suppression list and cannot be added again"
    ]
    assert report.added == 1
    signup = services.run("web", members.subscribe, "wang.fang@example.org", "", ip="192.0.2.1")
    assert signup.mail_id is None
    with pytest.raises(membership.Conflict, match="suppression list"):
        services.run("ed", membership.add_member, "WANG.FANG@example.org")
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(SignupRequest)) == 0
        assert (
            s.scalar(
                select(func.count())
                .select_from(Member)
                .where(Member.email == "wang.fang@example.org")
            )
            == 0
        )
    with pytest.raises(membership.Conflict, match="already erased"):
        services.run("ed", erasure.erase_member, victim.id, reason="again")
    # The votes CSV keeps the counted vote, with no address.
    rows = list(csv.reader(io.StringIO(services.run(ACTOR, surveys.votes_csv, survey_id).text)))
    assert sorted(r[0] for r in rows[1:]) == ["", "li.wei@example.org"]


def test_the_suppression_list_holds_through_a_key_rotation(
    settings: Settings, sessions: sessionmaker[Session], services: Services
) -> None:
    added = services.run(ACTOR, membership.add_member, "rot@example.org")
    services.run(ACTOR, erasure.erase_member, added.id, reason="asked")
    new_key = b"a-new-secret-key-0123456789abcdef"
    rotated = Services(
        dataclasses.replace(settings, secret_keys=(new_key, SECRET.encode())), sessions
    )
    with pytest.raises(membership.Conflict, match="suppression list"):
        rotated.run(ACTOR, membership.add_member, "rot@example.org")
    assert rotated.read(erasure.report) == erasure.SuppressionReport(1, 0)
    dropped = Services(dataclasses.replace(settings, secret_keys=(new_key,)), sessions)
    assert dropped.read(erasure.report) == erasure.SuppressionReport(1, 1)  # said, not hidden


# --- the export --------------------------------------------------------------------------------


def test_the_export_is_safe_in_a_spreadsheet_and_imports_back(
    services: Services, sessions: sessionmaker[Session], tmp_path: Path, database_url: str
) -> None:
    hostile = '=HYPERLINK("http://x.example","click")'
    services.run(
        ACTOR,
        membership.add_member,
        "-a@example.org",
        "+Plus Sign",
        {"note": hostile, "at": "@SUM(A1)"},
    )
    services.run(ACTOR, membership.add_member, "b@example.org", "Bee", {"status": "vip"})
    done = services.run(ACTOR, membership.export_members)
    assert done.members == 2
    rows = list(csv.reader(io.StringIO(done.text)))
    assert rows[0] == [
        "email",
        "name",
        "status",
        "created_at",
        "unsubscribed_at",
        "at",
        "note",
        "attribute status",
    ]
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), cell
    assert rows[1][:3] == ["'-a@example.org", "'+Plus Sign", "active"]
    assert rows[1][5:7] == ["'@SUM(A1)", "'" + hostile]
    # Read back by the import, the apostrophes come off: the same members, unchanged.
    before = people(sessions)
    again = services.run(ACTOR, members.import_members, done.text, source="export.csv")
    assert again.errors == []
    assert again.unchanged == 2
    assert people(sessions) == before
    assert [a[2] for a in audits(sessions, "export-members")] == ["2 members exported as CSV"]


# --- the commands ------------------------------------------------------------------------------


def test_subscribers_commands_manage_members_and_are_audited(
    site: Path, database_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    env = {
        "NEWSLETTER_DATABASE_URL": database_url,
        "NEWSLETTER_SECRET_KEY": SECRET,
        "COLUMNS": "200",
    }

    def cli(*args: str) -> Any:
        return CliRunner().invoke(
            app, ["--config", str(site / "config.toml"), "subscribers", *args], env=env
        )

    semicolons = tmp_path / "list.csv"
    semicolons.write_text(
        "E-Mail;Vorname;Firma\ncli@example.org;Cleo;ACME\ngone@example.org;Gus;\n", encoding="utf-8"
    )
    dry = cli("import", str(semicolons), "--map", "Vorname=name", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "a plain list, semicolon-separated" in dry.output
    assert "Vorname → name" in dry.output
    assert people(sessions) == {}
    done = cli("import", str(semicolons), "--map", "Vorname=name")
    assert done.exit_code == 0, done.output
    assert people(sessions)["cli@example.org"] == ("Cleo", "active", {"firma": "ACME"})
    assert cli("add", "new@example.org", "--name", "Nu", "--attr", "city=Xi'an").exit_code == 0
    edited = cli("edit", "new@example.org", "--name", "New", "--attr", "city=", "--attr", "desk=3")
    assert edited.exit_code == 0, edited.output
    assert people(sessions)["new@example.org"] == ("New", "active", {"desk": "3"})
    assert cli("unsubscribe", "cli@example.org", "--reason", "phoned").exit_code == 0
    refused = cli("unsubscribe", "cli@example.org", "--reason", "phoned")
    assert refused.exit_code == 1
    erased = cli("erase", "gone@example.org", "--reason", "GDPR request 12", "--yes")
    assert erased.exit_code == 0, erased.output
    out = tmp_path / "out.csv"
    exported = cli("export", "--output", str(out))
    assert exported.exit_code == 0, exported.output
    assert (
        out.read_text(encoding="utf-8").splitlines()[0]
        == "email,name,status,created_at,unsubscribed_at,desk,firma"
    )
    back = cli("import", str(semicolons), "--map", "Vorname=name")
    assert back.exit_code == 1
    assert "line 3: gone@example.org was erased at the member's request" in back.stderr
    listed = cli("list", "--status", "erased")
    assert "erased:" in listed.output
    with sessions() as s:
        found = [
            (a.action, a.actor.startswith("cli:"))
            for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]
    assert found == [
        ("import-members", True),
        ("add-member", True),
        ("edit-member", True),
        ("unsubscribe-member", True),
        ("erase-member", True),
        ("export-members", True),
        ("import-members", True),
    ]


# --- migration 0011 ----------------------------------------------------------------------------


def test_the_migration_adds_the_suppression_list_and_unlinked_votes(database_url: str) -> None:
    engine = db.make_engine(database_url)
    config = db._alembic_config(engine)
    command.upgrade(config, "0010")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO members (id, email, name, status, attributes, created_at, updated_at, bounce_count) VALUES (1, 'a@example.org', '', 'active', '{}', '2026-01-01', '2026-01-01', 0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO surveys (id, key, question, status, source, created_at) VALUES (1, 'k', 'Q?', 'open', 'config', '2026-01-01')"
            )
        )
        conn.execute(
            text("INSERT INTO votes (survey_id, member_id, option, evidence) VALUES (1, 1, 2, '')")
        )
    command.upgrade(config, "0011_members")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO suppressions (digest, key_id, created_at) VALUES ('ab', 'cd', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO votes (survey_id, member_id, option, evidence) VALUES (1, NULL, 1, '')"
            )
        )
    command.downgrade(config, "0010")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT member_id, option FROM votes")).all() == [(1, 2)]
        tables = engine.dialect.get_table_names(conn)
        assert "suppressions" not in tables
    engine.dispose()
