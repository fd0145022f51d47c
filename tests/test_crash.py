"""SIGKILL a `newsletter send` at random points and resume it: nobody missed, duplicates bounded."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter.storage import db
from newsletter.storage.models import Delivery, DeliveryStatus
from tests.conftest import SECRET, make_settings
from tests.smtpd import RecordingHandler
from tests.steps import import_csv, import_source

MEMBERS = 5000
IN_FLIGHT = 50
# (language, sections) of member i % 4: the whole issue or one section, in English or Chinese.
CHOICES = [("", ""), ("zh_Hans", ""), ("en", "Comprehensive Reports"), ("zh_Hans", "People watch")]


def start_send(site: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SECRET_KEY"] = SECRET
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send"],
        cwd=site,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(
    site: Path, tmp_path: Path, smtp_server: RecordingHandler, database_url: str
) -> None:
    config = site / "config.toml"
    text = config.read_text()
    text = text.replace("port = 8025", f"port = {smtp_server.port}")
    text = text.replace('url = "sqlite:///var/newsletter.db"', f'url = "{database_url}"')
    text = text.replace("in_flight = 200", f"in_flight = {IN_FLIGHT}").replace(
        "commit_every = 50", "commit_every = 10"
    )
    assert f"in_flight = {IN_FLIGHT}" in text
    config.write_text(text)
    settings = make_settings(site, database_url, smtp_server.port)
    sessions = db.open_database(settings.database_url)
    csv = tmp_path / "members.csv"
    # Members over four variants, so the kills land in the middle of several copies.
    csv.write_text(
        "email,name,language,sections\n"
        + "".join(
            f"m{i:05d}@example.org,M {i},{CHOICES[i % 4][0]},{CHOICES[i % 4][1]}\n"
            for i in range(MEMBERS)
        )
    )
    import_csv(sessions, csv)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    import_source(sessions, str(site / "examples" / "sections"))

    rng = random.Random(int(os.environ.get("CRASH_SEED", "5")))
    kill_points = sorted(rng.sample(range(100, MEMBERS - 200), 5))
    duplicates_per_kill: list[int] = []
    for target in kill_points:
        before = set(smtp_server.by_recipient())
        count_before = smtp_server.count()
        proc = start_send(site)
        while smtp_server.count() < target and proc.poll() is None:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        time.sleep(0.2)  # let the server finish with the dead connections
        new = smtp_server.messages[count_before:]
        duplicates_per_kill.append(sum(1 for m in new if m.rcpt_to in before))

    count_before = smtp_server.count()
    before = set(smtp_server.by_recipient())
    final = start_send(site)
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr.decode()
    new = smtp_server.messages[count_before:]
    duplicates_per_kill.append(sum(1 for m in new if m.rcpt_to in before))

    received = smtp_server.by_recipient()
    assert len(received) == MEMBERS  # no member missed
    duplicates = sum(len(m) - 1 for m in received.values())
    # Each resume re-sends at most what the killed process had claimed and not recorded.
    assert duplicates_per_kill[0] == 0
    print("duplicates after each kill:", duplicates_per_kill[1:])
    assert all(d <= IN_FLIGHT for d in duplicates_per_kill[1:]), duplicates_per_kill
    assert duplicates == sum(duplicates_per_kill)
    with sessions() as s:
        statuses = dict(
            s.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
        )
    assert statuses == {"sent": MEMBERS}
    sessions.kw["bind"].dispose()
    # Every copy, a resent one too, is the member's own variant.
    for rcpt, messages in received.items():
        language, sections = CHOICES[int(rcpt[1:6]) % 4]
        for message in messages:
            msg = message.parse()
            text = msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
            html = msg.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
            assert ('<html lang="zh-Hans">' in html) == (language == "zh_Hans")
            assert ("== People watch ==" in text) == (sections != "Comprehensive Reports")
            assert ("== Comprehensive Reports ==" in text) == (sections != "People watch")


def test_sigterm_stops_cleanly_says_so_and_resumes(
    site: Path, tmp_path: Path, smtp_server: RecordingHandler, database_url: str
) -> None:
    config = site / "config.toml"
    text = config.read_text().replace("port = 8025", f"port = {smtp_server.port}")
    config.write_text(
        text.replace('url = "sqlite:///var/newsletter.db"', f'url = "{database_url}"')
    )
    settings = make_settings(site, database_url, smtp_server.port)
    sessions = db.open_database(settings.database_url)
    members = 400
    csv = tmp_path / "members.csv"
    csv.write_text(
        "email,name\n" + "".join(f"t{i:04d}@example.org,T {i}\n" for i in range(members))
    )
    import_csv(sessions, csv)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    smtp_server.delay_seconds = 0.02  # slow enough to be stopped half-way

    proc = start_send(site)
    while smtp_server.count() < 50 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert "stopped by a signal" in stderr.decode()
    stopped_at = smtp_server.count()
    assert stopped_at < members
    with sessions() as s:
        statuses = dict(
            s.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
        )
    assert "sending" not in statuses  # nothing left claimed: the rest went back to the queue
    assert statuses.get(DeliveryStatus.SENT) == stopped_at

    smtp_server.delay_seconds = 0.0
    final = start_send(site)
    _, stderr = final.communicate(timeout=120)
    assert final.returncode == 0, stderr.decode()
    received = smtp_server.by_recipient()
    assert len(received) == members
    assert all(len(m) == 1 for m in received.values())  # a clean stop duplicates nobody
    sessions.kw["bind"].dispose()
