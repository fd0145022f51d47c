"""The command line's small things: help that names every command, refusals that name what is
allowed, a password from a pipe, db upgrade saying what it did, issue send --processes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from newsletter.cli.main import app
from newsletter.services import editors
from newsletter.storage.models import MemberStatus
from tests.smtpd import RecordingHandler
from tests.test_cli import run, use_port

runner = CliRunner()


def test_the_issue_group_help_describes_every_command() -> None:
    done = runner.invoke(app, ["issue", "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0
    intro = done.output.split("Options:")[0]
    commands = re.findall(r"^  (\w+)  ", done.output.split("Commands:")[1], re.M)
    assert set(commands) == {
        "preview", "list", "show", "status", "test", "send", "pause", "resume", "cancel"
    }  # fmt: skip
    for command in commands:
        word = "follow" if command == "status" else command  # "follow (status) the issues"
        assert re.search(rf"\b{word}\b", intro), (command, intro)
    send_help = runner.invoke(app, ["issue", "send", "--help"]).output
    assert "--processes" in send_help


@settings(max_examples=60, deadline=None)
@given(status=st.text(max_size=20).filter(lambda s: s not in set(MemberStatus)))
def test_subscribers_list_refuses_an_unknown_status_naming_the_allowed(status: str) -> None:
    done = runner.invoke(app, ["subscribers", "list", "--status", status])
    assert done.exit_code == 2
    assert "--status" in done.output
    assert f"use one of {', '.join(MemberStatus)}" in done.output


@settings(max_examples=30, deadline=None)
@given(
    password=st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
        min_size=12,
        max_size=40,
    ),
    ending=st.sampled_from(["\n", "\r\n", ""]),
)
def test_hash_password_reads_the_first_line_of_a_pipe(password: str, ending: str) -> None:
    done = runner.invoke(
        app, ["editor", "hash-password", "--stdin"], input=password + ending + "second line\n"
    )
    assert done.exit_code == 0, done.output
    (line,) = done.output.splitlines()
    found = re.fullmatch(r'password_hash = "(scrypt\$[^"]+)"', line)
    assert found, line
    if ending:  # without a line ending, the "second line" is part of the first
        assert editors.verify_password(password, found.group(1))


@pytest.mark.parametrize("given_input", ["", "\n", "short\n"])
def test_hash_password_refuses_an_empty_or_short_password_from_a_pipe(given_input: str) -> None:
    done = runner.invoke(app, ["editor", "hash-password", "--stdin"], input=given_input)
    assert done.exit_code == 1
    assert "password_hash" not in done.output


def test_db_upgrade_says_it_created_the_database_then_that_it_is_current(site: Path) -> None:
    first = run(site, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"created the database sqlite:///\S+ \(schema \w+\)\n", first.stdout)
    again = run(site, "db", "upgrade")
    assert re.fullmatch(r"the database sqlite:///\S+ is current \(schema \w+\)\n", again.stdout)


@pytest.mark.slow
def test_issue_send_takes_processes_like_send(site: Path, smtp_server: RecordingHandler) -> None:
    use_port(site, smtp_server.port)
    env = {"NEWSLETTER_SECRET_KEY": "k" * 32}
    run(site, "items", "import", "examples/seed-feed.xml", env=env)
    run(site, "subscribers", "import", "subscribers/example.csv", env=env)
    sent = run(site, "issue", "send", "--processes", "2", env=env)
    assert sent.returncode == 0, sent.stderr
    assert len(smtp_server.messages) == 5
    assert len({m.rcpt_to for m in smtp_server.messages}) == 5  # each member once
