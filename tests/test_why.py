"""Saying why deliveries wait: send, worker and issue status name the relay's trouble, grouped."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.delivery.reasons import Why, reason
from newsletter.services import issues
from tests import steps
from tests.smtpd import RecordingHandler
from tests.test_cli import free_port
from tests.test_init import OPTIONS, cli_env, uncomment

MEMBERS = "email,name\nada@example.org,Ada\nbo@example.org,Bo\ncy@example.org,Cy\n"


def neutral_site(tmp_path: Path, relay_port: int) -> Path:
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "newsletter",
            "init",
            "site",
            *OPTIONS,
            "http://127.0.0.1:8000",
            "--relay",
            f"127.0.0.1:{relay_port}",
        ],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "site"
    path = folder / "config.toml"
    # A send that does not wait for its deferred rows to fall due (the default lingers 120 s).
    path.write_text(path.read_text().replace("linger_seconds = 120.0", "linger_seconds = 0.0"))
    (folder / "subscribers" / "members.csv").write_text(MEMBERS)
    (folder / "posts").mkdir()
    (folder / "posts" / "one.md").write_text("---\ntitle: One\n---\nThe first item.\n")
    return folder


def cli(folder: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        cwd=folder,
        env=cli_env(NEWSLETTER_DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_send_with_the_relay_refusing_connections_says_why_and_exits_1(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()  # nothing listens there: every connection is refused
    folder = neutral_site(tmp_path, port)
    for args in (
        ["subscribers", "import", "subscribers/members.csv"],
        ["items", "import", "posts"],
    ):
        assert cli(folder, database_url, *args).returncode == 0

    sent = cli(folder, database_url, "send")
    assert sent.returncode == 1, sent.stdout + sent.stderr
    out = sent.stdout
    # The bar counts what was delivered: none of three, never 100%.
    assert re.search(r"issue #1: 0 delivered, 3 waiting \(relay unreachable; next try", out), out
    assert re.search(r"\s0/3\s+0%", out), out
    assert "100%" not in out
    # Why, with the relay's address and the error, once per reason.
    line = f"3  relay unreachable: 127.0.0.1:{port}: SMTPConnectError: Error connecting to 127.0.0.1 on port {port}"
    assert line in out, out
    assert "Connect call failed" in out or "Connection refused" in out
    assert sent.stderr.startswith("nothing was delivered: relay unreachable: 127.0.0.1:")

    status = cli(folder, database_url, "issue", "status", "1")
    assert status.returncode == 0, status.stderr
    assert "3 waiting, by reason:" in status.stdout
    assert line in status.stdout
    assert re.search(r"next try \d\d:\d\d:\d\d UTC", status.stdout)

    # A worker round finds nothing due yet, and says why the rows wait.
    worker = cli(folder, database_url, "worker", "--once")
    assert worker.returncode == 0, worker.stderr
    assert line in worker.stdout


def test_waiting_rows_are_grouped_by_reason(
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: RecordingHandler,
    tmp_path: Path,
) -> None:
    csv = tmp_path / "members.csv"
    csv.write_text(MEMBERS + "di@example.org,Di\n")
    steps.import_csv(sessions, csv)
    steps.import_source(sessions, str(Path(steps.REPO / "examples" / "seed-feed.xml")))
    smtp_server.refuse = {
        "ada@example.org": "450 4.7.1 Rate limit exceeded, slow down",
        "bo@example.org": "450 4.7.1 Rate limit exceeded, slow down",
        "cy@example.org": "451 4.3.0 Mailbox temporarily unavailable",
    }
    started = dt.datetime.now(dt.UTC)
    (summary,) = asyncio.run(steps.send(settings, sessions))
    assert summary.counts == {"sent": 1, "deferred": 3}
    groups = steps.services(settings, sessions).read(issues.waiting, summary.issue_id)
    found = [(g.reason.why, g.reason.detail, g.count) for g in groups]
    assert found == [
        (Why.RATE_LIMITED, "450 4.7.1 Rate limit exceeded, slow down", 2),
        (Why.REFUSING, "451 4.3.0 Mailbox temporarily unavailable", 1),
    ]
    for group in groups:
        assert group.next_from is not None
        assert group.next_until is not None
        assert started < group.next_from <= group.next_until < started + dt.timedelta(hours=1)


@pytest.mark.parametrize(
    ("code", "text", "why"),
    [
        (
            None,
            "NoRelayAvailable: no relay accepted a connection: 127.0.0.1:25: SMTPConnectError: "
            "Error connecting to 127.0.0.1 on port 25: [Errno 111] Connect call failed",
            Why.UNREACHABLE,
        ),
        (None, "SMTPServerDisconnected: Connection lost", Why.UNREACHABLE),
        (None, "SMTPReadTimeoutError: Timed out waiting for server response", Why.UNREACHABLE),
        (
            None,
            "NoRelayAvailable: no relay accepted a connection: smtp.example.org:587: "
            "SMTPAuthenticationError: (535, '5.7.8 Authentication credentials invalid')",
            Why.REFUSING,
        ),
        (
            None,
            "NoRelayAvailable: no relay accepted a connection: smtp.example.org:25: "
            "SMTPConnectResponseError: (421, '4.7.0 Too many connections, try again later')",
            Why.RATE_LIMITED,
        ),
        (421, "4.7.28 Our system has detected an unusual rate of mail", Why.RATE_LIMITED),
        (451, "4.3.0 Temporary lookup failure", Why.REFUSING),
        (552, "5.2.2 Mailbox full", Why.REFUSING),
        (None, "", Why.NOT_TRIED),
    ],
)
def test_a_reason_is_read_from_the_last_code_and_text(
    code: int | None, text: str, why: Why
) -> None:
    found = reason(code, text)
    assert found.why == why
    assert "no relay accepted" not in found.detail  # said once, by the reason's name
    if code is not None:
        assert str(found).startswith(f"{why}: {code} ")
    assert reason(code, text, "sending").why == Why.SENDING


def test_a_scheduled_send_with_the_relay_down_exits_1_like_send(
    tmp_path: Path, database_url: str
) -> None:
    folder = neutral_site(tmp_path, free_port())
    path = folder / "config.toml"
    text = path.read_text()
    # The commented weekly schedule, uncommented to fire every minute.
    text = uncomment(text, "schedule.weekly")
    text = text.replace('cron = "0 8 * * mon"', 'cron = "* * * * *"')
    path.write_text(text)
    for args in (
        ["subscribers", "import", "subscribers/members.csv"],
        ["items", "import", "posts"],
    ):
        assert cli(folder, database_url, *args).returncode == 0
    done = cli(folder, database_url, "send", "--scheduled", "weekly")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3  relay unreachable: 127.0.0.1:" in done.stdout
    assert done.stderr.startswith("nothing was delivered")
