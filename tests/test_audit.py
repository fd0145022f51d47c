"""Each action and its audit entry are stored together or not at all, whichever door it came by.

The database is made to refuse audit entries (a trigger, on SQLite and on PostgreSQL): every
use-case then fails and leaves everything as it was, because its entry is written in the same
transaction as the action. With the trigger gone, the same call stores both. The table of
use-cases below must name every function marked @use_case, so a new one cannot be added
without this proof.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter.cli.main import app as cli
from newsletter.config import Settings
from newsletter.content.sources import read_source
from newsletter.content.verp import Verp
from newsletter.delivery import dsn
from newsletter.services import (
    board,
    bounces,
    clicks,
    drafts,
    editors,
    erasure,
    evidence,
    issues,
    items,
    mail,
    members,
    membership,
    moderation,
    preferences,
    signin,
    surveys,
    votes,
)
from newsletter.services.unit import USE_CASES, Services
from newsletter.storage import db
from newsletter.web.app import create_app
from tests import returns, steps
from tests.conftest import SECRET
from tests.snapshot import snapshot
from tests.test_desk import TOKEN, desk_settings, log_in

REFUSED = "audit refused (test)"
AUTH_HEADERS = {"Authorization": f"Bearer {TOKEN}"}
SECRET_ENV = {"NEWSLETTER_SECRET_KEY": SECRET}


def refuse_audit(engine: Engine, on: bool) -> None:
    """A trigger that makes every insert into audit_log fail (or its removal)."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_audit"))
            if on:
                conn.execute(
                    text(
                        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
                        f"BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END"
                    )
                )
            return
        conn.execute(text("DROP TRIGGER IF EXISTS refuse_audit ON audit_log"))
        if on:
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger AS "
                    f"$$ BEGIN RAISE EXCEPTION '{REFUSED}'; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
                )
            )


class Site:
    """A site with members, items and one released issue with a survey, ready for actions."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], root: Path) -> None:
        self.settings, self.sessions, self.root = settings, sessions, root
        self.services = Services(settings, sessions)
        self.engine: Engine = sessions.kw["bind"]
        steps.import_csv(sessions, root / "subscribers" / "example.csv")
        steps.import_source(sessions, str(root / "examples" / "seed-feed.xml"))
        released = self.services.run("test", issues.release_next)
        self.issue_id = released.issue_id
        with sessions() as s:
            self.survey_id = int(s.execute(text("SELECT id FROM surveys")).scalar_one())
        self.extra_item(1)

    def extra_item(self, n: int) -> None:
        folder = self.root / f"posts{n}"
        folder.mkdir(exist_ok=True)
        (folder / f"extra{n}.md").write_text(f"---\ntitle: Extra {n}\n---\nBody {n}.\n")
        steps.import_source(self.sessions, str(folder))

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.services.run("test-door", fn, *args, **kwargs)

    def run_with_new_survey_key(self, fn: Callable[..., Any]) -> Any:
        """As `run`, on the site's settings with a new [survey] key in config.toml."""
        assert self.settings.survey is not None
        survey = dataclasses.replace(self.settings.survey, key="next-survey")
        changed = Services(dataclasses.replace(self.settings, survey=survey), self.sessions)
        return changed.run("test-door", fn)

    def audits(self, action: str) -> int:
        with self.sessions() as s:
            return int(
                s.execute(
                    text("SELECT count(*) FROM audit_log WHERE action = :a"), {"a": action}
                ).scalar_one()
            )


def _pending_vote(site: Site) -> None:
    """A click whose quiet period has passed, so that settling has something to count."""
    old = site.services.clock() - dt.timedelta(minutes=10)
    with site.sessions.begin() as s:
        s.execute(
            text(
                "INSERT INTO votes (survey_id, member_id, pending_option, pending_at, evidence) "
                "VALUES (:s, 2, 1, :at, 'pending')"
            ),
            {"s": site.survey_id, "at": old.replace(tzinfo=None)},
        )


def _old_hit(site: Site) -> None:
    old = site.services.clock() - dt.timedelta(days=2)
    with site.sessions.begin() as s:
        s.execute(
            text(
                "INSERT INTO link_hits (kind, method, member_id, at, ip, user_agent) "
                "VALUES ('view', 'GET', 1, :at, '', '')"
            ),
            {"at": old.replace(tzinfo=None)},
        )


def _pending_click(site: Site) -> None:
    """A fetch of an issue's link whose window has passed, so that settling decides it."""
    old = site.services.clock() - dt.timedelta(minutes=10)
    with site.sessions.begin() as s:
        s.execute(
            text(
                "INSERT INTO click_hits (issue_id, member_id, link, method, at, decided) "
                "VALUES (:i, 1, 0, 'GET', :at, :no)"
            ),
            {"i": site.issue_id, "at": old.replace(tzinfo=None), "no": False},
        )


def _bounce(site: Site) -> Any:
    verp = Verp(site.settings.list.return_path, site.services.signer)
    raw = returns.dsn(to=verp.address(site.issue_id, 1), recipient="li.wei@example.org")
    return site.run(bounces.apply, dsn.read(raw), source="test")


def _paused(site: Site) -> None:
    site.run(issues.pause, site.issue_id)


def _failed_row(site: Site) -> None:
    with site.sessions.begin() as s:
        s.execute(text("UPDATE deliveries SET status = 'failed' WHERE member_id = 1"))


def _unsubscribed(site: Site) -> None:
    site.run(members.unsubscribe, 1, via="test")


def _due_send(site: Site) -> None:
    """A scheduled send that fell due a minute ago."""
    due = (site.services.clock() - dt.timedelta(minutes=1)).replace(tzinfo=None)
    with site.sessions.begin() as s:
        s.execute(text("UPDATE drafts SET send_at = :at WHERE id = 1"), {"at": due})


def _pending_member(site: Site) -> None:
    with site.sessions.begin() as s:
        s.execute(text("UPDATE members SET status = 'pending' WHERE id = 3"))


def _posted(site: Site) -> None:
    """Member 1's first post on the board (held for approval)."""
    site.run(board.post, 1, 0, "A first message", ip="192.0.2.1")


def _shown(site: Site) -> None:
    _posted(site)
    site.run(moderation.approve, 1)


def _signin_link(site: Site) -> None:
    site.run(signin.request_link, "li.wei@example.org", ip="192.0.2.1")


def _address_nonce(site: Site) -> int:
    """The nonce of member 1's change of address waiting for confirmation."""
    with site.sessions() as s:
        return int(s.execute(text("SELECT new_email_nonce FROM members WHERE id = 1")).scalar_one())


# Each use-case: (what to prepare, the call, the audit action it writes).
CASES: dict[str, tuple[Callable[[Site], None] | None, Callable[[Site], Any], str]] = {
    "members.import_members": (
        None,
        lambda s: s.run(members.import_members, "email\nnew@example.org\n", source="t.csv"),
        "import-members",
    ),
    "members.unsubscribe": (None, lambda s: s.run(members.unsubscribe, 1, via="t"), "unsubscribe"),
    "members.resubscribe": (
        _unsubscribed,
        lambda s: s.run(members.resubscribe, 1, via="t"),
        "resubscribe",
    ),
    "members.confirm": (_pending_member, lambda s: s.run(members.confirm, 3), "confirm"),
    "members.subscribe": (
        None,
        lambda s: s.run(members.subscribe, "new@example.org", "", ip="192.0.2.1"),
        "subscribe",
    ),
    "members.unsubscribe_link": (
        None,
        lambda s: s.run(members.unsubscribe_link, 1, s.issue_id, method="POST", one_click=True),
        "unsubscribe",
    ),
    "preferences.save": (
        None,
        lambda s: s.run(preferences.save, 1, sections=None, language="zh_Hans", survey=False),
        "preferences",
    ),
    "preferences.pause": (None, lambda s: s.run(preferences.pause, 1, 2), "pause-member"),
    "preferences.change_address": (
        None,
        lambda s: s.run(preferences.change_address, 1, "new.one@example.net"),
        "change-address-asked",
    ),
    "preferences.confirm_address": (
        lambda s: s.run(preferences.change_address, 1, "new.two@example.net"),
        lambda s: s.run(preferences.confirm_address, 1, _address_nonce(s)),
        "change-address",
    ),
    "preferences.leave": (
        None,
        lambda s: s.run(preferences.leave, 1, confirmed=True),
        "unsubscribe",
    ),
    "votes.click": (
        None,
        lambda s: s.run(votes.click, s.survey_id, 1, 2, method="POST", person=True),
        "vote",
    ),
    "votes.person": (
        lambda s: s.run(votes.click, s.survey_id, 4, 2, method="GET"),
        lambda s: s.run(votes.person, s.survey_id, 4, 2),
        "vote",
    ),
    "votes.settle": (_pending_vote, lambda s: s.run(votes.settle), "settle-votes"),
    "surveys.close_survey": (None, lambda s: s.run(surveys.close_survey, None), "close-survey"),
    "surveys.create_survey": (
        None,
        lambda s: s.run(surveys.create_survey, "Which section first?", ["People", "Firms"]),
        "create-survey",
    ),
    "surveys.open_survey": (
        lambda s: s.run(surveys.close_survey, s.survey_id),
        lambda s: s.run(surveys.open_survey, s.survey_id),
        "open-survey",
    ),
    "surveys.sync_config": (
        None,
        lambda s: s.run_with_new_survey_key(surveys.sync_config),
        "close-survey",
    ),
    "issues.release_next": (None, lambda s: s.run(issues.release_next), "release"),
    "issues.pause": (None, lambda s: s.run(issues.pause, s.issue_id), "pause"),
    "issues.resume": (_paused, lambda s: s.run(issues.resume, s.issue_id), "resume"),
    "issues.cancel": (None, lambda s: s.run(issues.cancel, s.issue_id), "cancel"),
    "issues.requeue_failed": (
        _failed_row,
        lambda s: s.run(issues.requeue_failed, s.issue_id),
        "retry",
    ),
    "mail.queue_test_copy": (
        None,
        lambda s: s.run(
            mail.queue_test_copy,
            s.services.read(issues.stored, s.issue_id),
            s.issue_id,
            "proof@example.org",
        ),
        "test-send",
    ),
    "items.add": (
        None,
        lambda s: s.run(items.add, *read_source(str(s.root / "examples" / "seed-feed.xml"))),
        "import-items",
    ),
    "items.remove": (None, lambda s: s.run(items.remove, "md:extra1"), "remove-item"),
    "items.hold": (None, lambda s: s.run(items.hold, "md:extra1"), "hold-item"),
    "editors.login": (None, lambda s: s.run(editors.login, "ed", address="192.0.2.1"), "login"),
    "evidence.fold": (_old_hit, lambda s: s.run(evidence.fold), "fold-hits"),
    "bounces.apply": (None, _bounce, "bounce"),
    "clicks.settle": (_pending_click, lambda s: s.run(clicks.settle), "settle-clicks"),
    "drafts.save": (None, lambda s: s.run(drafts.save, note_md="A *note*."), "edit-draft"),
    "drafts.schedule": (
        None,
        lambda s: s.run(drafts.schedule, s.services.clock() + dt.timedelta(hours=1)),
        "schedule",
    ),
    "issues.release_scheduled": (
        _due_send,
        lambda s: s.run(issues.release_scheduled),
        "release",
    ),
    "items.write": (
        None,
        lambda s: s.run(items.write, items.ItemDraft("Written", "Some *text*.")),
        "write-item",
    ),
    "items.edit": (
        None,
        lambda s: s.run(items.edit, "md:extra1", items.ItemDraft("Edited", "New text.")),
        "edit-item",
    ),
    "items.reorder": (None, lambda s: s.run(items.reorder, ["md:extra1"]), "reorder-items"),
    "board.post": (None, _posted, "board-post"),
    "board.edit": (_posted, lambda s: s.run(board.edit, 1, 0, 1, "Changed"), "board-edit"),
    "board.delete": (_posted, lambda s: s.run(board.delete, 1, 0, 1), "board-delete"),
    "board.report": (_shown, lambda s: s.run(board.report, 2, 0, 1, "spam"), "board-report"),
    "moderation.approve": (_posted, lambda s: s.run(moderation.approve, 1), "board-approve"),
    "moderation.hide": (_posted, lambda s: s.run(moderation.hide, 1), "board-hide"),
    "moderation.remove": (_posted, lambda s: s.run(moderation.remove, 1), "board-remove"),
    "moderation.block": (None, lambda s: s.run(moderation.block, 1, "Spam"), "board-block"),
    "moderation.unblock": (
        lambda s: s.run(moderation.block, 1, "Spam"),
        lambda s: s.run(moderation.unblock, 1),
        "board-unblock",
    ),
    "signin.request_link": (None, _signin_link, "signin-link"),
    "signin.sign_in": (
        _signin_link,
        lambda s: s.run(signin.sign_in, 1, signin_id=1, person=True),
        "sign-in",
    ),
    "signin.sign_out_everywhere": (
        None,
        lambda s: s.run(signin.sign_out_everywhere, 1, 0),
        "sign-out-everywhere",
    ),
    "signin.set_notices": (
        None,
        lambda s: s.run(signin.set_notices, 1, False, via="t"),
        "board-notices",
    ),
    "membership.add_member": (
        None,
        lambda s: s.run(membership.add_member, "added@example.org", "Added"),
        "add-member",
    ),
    "membership.edit_member": (
        None,
        lambda s: s.run(membership.edit_member, 1, name="Renamed", attributes={"city": "Xi'an"}),
        "edit-member",
    ),
    "membership.unsubscribe_member": (
        None,
        lambda s: s.run(membership.unsubscribe_member, 1, reason="asked by phone"),
        "unsubscribe-member",
    ),
    "membership.export_members": (
        None,
        lambda s: s.run(membership.export_members),
        "export-members",
    ),
    "erasure.erase_member": (
        None,
        lambda s: s.run(erasure.erase_member, 2, reason="asked by mail"),
        "erase-member",
    ),
}


def test_the_table_names_every_use_case() -> None:
    assert sorted(CASES) == sorted(USE_CASES)


@pytest.fixture
def ready(settings: Settings, sessions: sessionmaker[Session], site: Path) -> Iterator[Site]:
    made = Site(settings, sessions, site)
    yield made
    refuse_audit(made.engine, False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_action_and_its_audit_entry_are_stored_together(ready: Site, name: str) -> None:
    site = ready
    prepare, act, action = CASES[name]
    if prepare is not None:
        prepare(site)
    before = snapshot(site.sessions)
    refuse_audit(site.engine, True)
    with pytest.raises(Exception, match=re.escape(REFUSED)):
        act(site)
    refuse_audit(site.engine, False)
    assert snapshot(site.sessions) == before  # neither the action nor its entry
    audited = site.audits(action)
    act(site)
    assert site.audits(action) == audited + 1  # both
    assert snapshot(site.sessions) != before


# --- the same through the doors ----------------------------------------------------------------


@pytest.fixture
def desk_site(site: Path, database_url: str, smtp_server: Any) -> Iterator[Site]:
    settings = desk_settings(site, database_url, smtp_server.port)
    sessions = db.open_database(settings.database_url)
    made = Site(settings, sessions, site)
    yield made
    refuse_audit(made.engine, False)
    sessions.kw["bind"].dispose()


def test_doors_store_nothing_when_the_audit_entry_fails(desk_site: Site) -> None:
    """The CLI, the desk, the API and the member pages each call the same use-case: with the
    audit refused, none of them changes anything, and each says so in its own way."""
    site = desk_site
    app = create_app(site.settings, site.sessions, background=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        csrf = log_in(client)
        unsubscribe = site.services.links.unsubscribe(2, site.issue_id)
        path = unsubscribe.removeprefix(site.settings.list.base_url.rstrip("/"))
        before = snapshot(site.sessions)
        refuse_audit(site.engine, True)
        desk = client.post(f"/desk/issues/{site.issue_id}/pause", data={"csrf": csrf})
        api = client.post(f"/api/issues/{site.issue_id}/pause", headers=AUTH_HEADERS)
        member = client.post(path, data={"action": "unsubscribe"})
        runner = CliRunner()
        command = runner.invoke(
            cli,
            ["--config", str(site.settings.config_path), "issue", "pause", str(site.issue_id)],
            env={"NEWSLETTER_DATABASE_URL": site.settings.database_url, **SECRET_ENV},
        )
        refuse_audit(site.engine, False)
        assert snapshot(site.sessions) == before
        assert desk.status_code == 500
        assert "Something went wrong" in desk.text
        assert api.status_code == 500
        assert api.json() == {"error": "internal error; the server log has the details"}
        assert member.status_code == 500
        assert "Nothing you sent was lost" in member.text
        assert command.exit_code != 0
