"""`newsletter items hold / release / remove / list` (issue 11): a bad item never blocks the next issue.

Generated sets of new items, each left alone, held, held then released, released without being
held, removed, or held then removed, through the command line (Typer's CliRunner on the real
app); then the next issue is released. A held item is not in it and stays new, a released one
goes out, a removed one is gone. GUIDs that name nothing, and items that went out, are refused
with exit 1 naming them; `items list` marks held items. One subprocess shows what a user sees.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from newsletter.cli.main import app
from newsletter.config import Settings
from newsletter.errors import IssueTooLarge, NothingToSend
from newsletter.services.items import ItemGoneOut, NoSuchItem
from newsletter.storage import items as item_rows
from newsletter.storage.models import IssueItem, Item
from tests import steps
from tests.conftest import SECRET
from tests.snapshot import snapshot

# One site for all the cases of a test; each case adds items of its own (fresh GUIDs).
CASES = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ACTIONS = ("keep", "hold", "hold-release", "release", "remove", "hold-remove")
HELD_AFTER = {"hold"}
GONE = {"remove", "hold-remove"}


@dataclass
class Shop:
    settings: Settings
    sessions: sessionmaker[Session]
    root: Path
    env: dict[str, str]
    runner: CliRunner
    made: int = 0

    def cli(self, *args: str) -> Result:
        return self.runner.invoke(
            app, ["--config", str(self.root / "config.toml"), *args], env=self.env
        )

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    def refused(self, *args: str) -> str:
        """Exit 1 with the service's refusal: the message `main` prints after 'error: '."""
        result = self.cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert isinstance(result.exception, NoSuchItem | ItemGoneOut), result.exception
        return str(result.exception)

    def items(self, new_only: bool = False) -> dict[str, bool]:
        """GUID → held, from the database."""
        with self.sessions() as s:
            return {i.guid: i.held for i in item_rows.all_items(s, new_only=new_only)}

    def carried(self, issue_id: int) -> list[str]:
        with self.sessions() as s:
            return list(
                s.scalars(
                    select(Item.guid)
                    .join(IssueItem, IssueItem.item_id == Item.id)
                    .where(IssueItem.issue_id == issue_id)
                )
            )


@pytest.fixture
def shop(site: Path, settings: Settings, sessions: sessionmaker[Session]) -> Shop:
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    env = {
        "NEWSLETTER_DATABASE_URL": settings.database_url,
        "NEWSLETTER_SECRET_KEY": SECRET,
        "COLUMNS": "300",  # every table row on one line
    }
    return Shop(settings, sessions, site, env, CliRunner())


def write_items(shop: Shop, count: int, body: str = "") -> list[str]:
    """`count` Markdown items in a new folder, imported with `items import`; their GUIDs."""
    shop.made += 1
    folder = shop.root / f"batch{shop.made}"
    folder.mkdir()
    guids = []
    for j in range(count):
        stem = f"b{shop.made}i{j}"
        (folder / f"{stem}.md").write_text(
            f"---\ntitle: Batch {shop.made} item {j}\n---\nText of {stem}.\n{body}\n"
        )
        guids.append(f"md:{stem}")
    out = shop.ok("items", "import", str(folder))
    assert f"{count} new" in out
    return guids


def list_rows(output: str, guids: list[str]) -> dict[str, str]:
    """The `items list` line of each GUID that has one."""
    rows = {}
    for line in output.splitlines():
        for guid in guids:
            if re.search(rf"(?<![\w:]){re.escape(guid)}(?![\w])", line):
                rows[guid] = line
    return rows


def apply(shop: Shop, guid: str, action: str) -> None:
    if action.startswith("hold"):
        assert "held item" in shop.ok("items", "hold", guid)
    if action.endswith("release"):
        assert "released item" in shop.ok("items", "release", guid)
    if action.endswith("remove"):
        assert "removed item" in shop.ok("items", "remove", guid)


unknown_guids = st.one_of(
    st.text(max_size=30),
    st.sampled_from(("md:nope", "-x", "--help", "0", "9999999999", " md:b1i0", "MD:B1I0")),
)


def unknown_are_refused(shop: Shop, unknown: list[str], known: dict[str, bool]) -> None:
    before = snapshot(shop.sessions)
    for guid in unknown:
        if guid in known or (guid.isdigit() and len(guid) < 10):
            continue  # it names an item after all
        for command in ("hold", "release", "remove"):
            message = shop.refused("items", command, "--", guid)
            assert repr(guid) in message
            assert "no item has the GUID" in message
    assert shop.items() == known
    assert snapshot(shop.sessions) == before  # a refusal changes nothing, audit log included


def held_are_marked(
    shop: Shop, guids: list[str], actions: list[str], known: dict[str, bool]
) -> None:
    """`items list` marks held items, and lists no removed one."""
    rows = list_rows(shop.ok("items", "list"), guids)
    for guid, action in zip(guids, actions, strict=True):
        if action in GONE:
            assert guid not in rows
            assert guid not in known
        else:
            assert ("(held)" in rows[guid]) is (action in HELD_AFTER), rows[guid]


@settings(CASES, max_examples=6)
@given(
    actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=5),
    unknown=st.lists(unknown_guids, max_size=2),
)
@example(actions=["hold", "hold-release", "remove", "keep"], unknown=["md:nope", "-x"])
@example(actions=["hold", "remove"], unknown=[""])  # nothing left to send
def test_held_released_and_removed_items(
    shop: Shop, actions: list[str], unknown: list[str]
) -> None:
    guids = write_items(shop, len(actions))
    for guid, action in zip(guids, actions, strict=True):
        apply(shop, guid, action)
    known = shop.items()
    unknown_are_refused(shop, unknown, known)
    held_are_marked(shop, guids, actions, known)
    going = [g for g, a in zip(guids, actions, strict=True) if a not in HELD_AFTER | GONE]
    held = [g for g, a in zip(guids, actions, strict=True) if a in HELD_AFTER]
    if not going:
        with pytest.raises(NothingToSend):
            steps.release_next(shop.settings, shop.sessions)
        return
    issue_id = steps.release_next(shop.settings, shop.sessions).issue.id
    assert sorted(shop.carried(issue_id)) == sorted(going)
    new = shop.items(new_only=True)
    for guid in held:
        assert new.get(guid) is True  # still new, still held
    for guid in going:
        assert guid not in new

    # What went out stays as members received it: no hold, release or removal.
    before = snapshot(shop.sessions)
    for guid in {going[0], going[-1]}:
        for command, doing in (("hold", "held"), ("release", "released"), ("remove", "removed")):
            message = shop.refused("items", command, guid)
            assert message == (f"item {guid!r} went out in issue #{issue_id}: it cannot be {doing}")
    assert snapshot(shop.sessions) == before
    listed = list_rows(shop.ok("items", "list", "--new"), guids)
    assert sorted(listed) == sorted(held)
    assert all("(held)" in listed[g] for g in held)


def test_an_issue_too_large_goes_out_once_an_item_is_held(shop: Shop) -> None:
    """Two large items make an issue over issue.size_limit: refused, and nothing is stored;
    held, one of them waits and the other goes out; removed, the waiting one is gone."""
    guids = write_items(shop, 2, body="lorem ipsum dolor sit amet " * 2000)  # ~54 KB each
    with pytest.raises(IssueTooLarge):
        steps.release_next(shop.settings, shop.sessions)
    assert sorted(shop.items(new_only=True)) == sorted(guids)
    shop.ok("items", "hold", guids[0])
    issue_id = steps.release_next(shop.settings, shop.sessions).issue.id
    assert shop.carried(issue_id) == [guids[1]]
    assert shop.items(new_only=True) == {guids[0]: True}
    shop.ok("items", "remove", guids[0])
    assert guids[0] not in shop.items()
    with pytest.raises(NothingToSend):
        steps.release_next(shop.settings, shop.sessions)


def test_the_command_names_what_it_refuses(shop: Shop) -> None:
    """As a user meets it: `python -m newsletter` prints one line naming the item, exit 1."""
    (guid,) = write_items(shop, 1)
    issue_id = steps.release_next(shop.settings, shop.sessions).issue.id
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(shop.env)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "newsletter", *args],
            cwd=shop.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    missing = run("items", "hold", "md:no-such-item")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "error: no item has the GUID or number 'md:no-such-item' (see `newsletter items list`)"
    )
    gone = run("items", "remove", guid)
    assert gone.returncode == 1
    assert gone.stderr.strip() == (
        f"error: item {guid!r} went out in issue #{issue_id}: it cannot be removed"
    )
