"""Scheduled issues: slots, min_items, and one issue per slot whoever fires it."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter import schedule
from newsletter.config import ScheduleSettings, Settings
from newsletter.content.sources import import_source
from newsletter.storage.models import Issue
from tests.conftest import SECRET
from tests.smtpd import RecordingHandler
from tests.steps import import_csv
from tests.test_cli import free_port


def test_slots_follow_crontab_weekdays_and_time_zones() -> None:
    weekly = ScheduleSettings(
        cron="0 8 * * mon", timezone="Asia/Shanghai", misfire_grace_seconds=7 * 86400
    )
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)  # a Wednesday
    assert schedule.last_slot("weekly", weekly, now) == dt.datetime(
        2026, 11, 23, 0, 0, tzinfo=dt.UTC
    )
    sunday = dataclasses.replace(weekly, cron="0 8 * * 0")  # crontab: 0 is Sunday
    assert schedule.last_slot("s", sunday, now) == dt.datetime(2026, 11, 22, 0, 0, tzinfo=dt.UTC)
    seconds = ScheduleSettings(cron="*/5 * * * * *", misfire_grace_seconds=60)
    assert schedule.last_slot("s", seconds, now + dt.timedelta(seconds=7)) == now + dt.timedelta(
        seconds=5
    )
    tight = dataclasses.replace(weekly, misfire_grace_seconds=3600)
    assert schedule.last_slot("weekly", tight, now) is None  # Monday's slot is past its grace


def load(sessions: sessionmaker[Session], site: Path) -> None:
    import_csv(sessions, site / "subscribers" / "example.csv")
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))


def test_a_slot_makes_one_issue_even_when_fired_twice_at_once(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> None:
    load(sessions, site)
    slot = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)

    async def both() -> list[schedule.SlotResult]:
        return list(
            await asyncio.gather(
                schedule.fire(settings, sessions, "weekly", slot),
                schedule.fire(settings, sessions, "weekly", slot),
            )
        )

    results = asyncio.run(both())
    assert sorted(r.made for r in results) == [False, True]
    with sessions() as s:
        (issue,) = s.scalars(select(Issue)).all()
        assert (issue.schedule, issue.slot_at, issue.status) == ("weekly", slot, "sent")
    received = smtp_server.by_recipient()
    assert len(received) == 5 and all(len(m) == 1 for m in received.values())
    again = asyncio.run(schedule.fire(settings, sessions, "weekly", slot))
    assert not again.made and "already sent" in again.reason
    assert smtp_server.count() == 5


def test_a_slot_made_between_the_look_and_the_release_is_joined(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    smtp_server: RecordingHandler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The race two cron runs hit: this run looks for the slot's issue (none yet), the other
    # makes it and takes the new items, and this run's release then finds nothing new.
    load(sessions, site)
    slot = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)
    first = asyncio.run(schedule.fire(settings, sessions, "weekly", slot))
    assert first.made
    real, calls = schedule.issues.slot, []

    def late(unit: Any, name: str, at: dt.datetime) -> Any:
        calls.append(at)
        if len(calls) == 1:  # the first look misses the issue, and counts the new items
            return schedule.issues.Slot(None, None, 8)  # the other run was about to take
        return real(unit, name, at)

    monkeypatch.setattr(schedule.issues, "slot", late)
    with sessions() as s:  # the issue is sent; pretend it is still going, to join it
        s.execute(update(Issue).values(status="sending"))
        s.commit()
    joined = asyncio.run(schedule.fire(settings, sessions, "weekly", slot))
    assert (joined.made, joined.reason, joined.issue_id) == (False, "joined", first.issue_id)
    assert len(calls) == 2
    assert all(len(m) == 1 for m in smtp_server.by_recipient().values())


def test_a_slot_compiles_its_issue_off_the_event_loop(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    smtp_server: RecordingHandler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `serve` runs the web app and the election in the loop that fires the slots: the
    # compile and the snapshot must not hold it. Here the release waits for a callback the
    # loop can only run if the release is not running on it.
    load(sessions, site)
    real = schedule.issues.release_next
    loop_ran = threading.Event()

    def release_next(*args: Any, **kwargs: Any) -> Any:
        assert loop_ran.wait(timeout=10), "the event loop was blocked by the release"
        return real(*args, **kwargs)

    monkeypatch.setattr(schedule.issues, "release_next", release_next)

    async def fire_and_tick() -> schedule.SlotResult:
        asyncio.get_running_loop().call_later(0.05, loop_ran.set)
        slot = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)
        return await schedule.fire(settings, sessions, "weekly", slot)

    result = asyncio.run(fire_and_tick())
    assert result.made and smtp_server.count() == 5


def test_fewer_new_items_than_min_items_makes_nothing(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> None:
    load(sessions, site)
    strict = dataclasses.replace(
        settings, schedule={"weekly": dataclasses.replace(settings.schedule["weekly"], min_items=9)}
    )
    result = asyncio.run(
        schedule.fire(strict, sessions, "weekly", dt.datetime(2026, 11, 23, tzinfo=dt.UTC))
    )
    assert result.issue_id is None and "8 new items, fewer than min_items = 9" in result.reason
    with sessions() as s:
        assert s.scalars(select(Issue)).all() == []
    assert smtp_server.messages == []


# --- the real processes -----------------------------------------------------------------


def scheduled_site(site: Path, database_url: str, smtp_port: int, cron: str) -> Path:
    config = site / "config.toml"
    text = config.read_text()
    text = text.replace("port = 8025", f"port = {smtp_port}")
    text = text.replace('url = "sqlite:///var/newsletter.db"', f'url = "{database_url}"')
    text = text.replace('cron = "0 8 * * mon"', f'cron = "{cron}"').replace(
        'timezone = "Asia/Shanghai"', 'timezone = "UTC"'
    )
    text = text.replace("port = 8000", f"port = {free_port()}")
    # Standbys try for the lead every 2 s (a SQLite lease lasts 6 s).
    text = text.replace("check_seconds = 5.0", "check_seconds = 2.0")
    config.write_text(text)
    return config


def newsletter(site: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SECRET_KEY"] = SECRET
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", *args],
        cwd=site,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return out


def test_serve_fires_a_seconds_schedule_and_then_waits_for_items(
    site: Path,
    database_url: str,
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: RecordingHandler,
) -> None:
    load(sessions, site)
    scheduled_site(site, database_url, smtp_server.port, "*/2 * * * * *")
    serve = newsletter(site, "serve")
    try:
        wait_until(lambda: smtp_server.count() == 5, 60)
        time.sleep(4.5)  # two more slots pass with no new items
    finally:
        out = stop(serve)
    assert "fewer than min_items" in out
    with sessions() as s:
        (issue,) = s.scalars(select(Issue)).all()
        assert issue.schedule == "weekly" and issue.slot_at is not None and issue.status == "sent"
    assert smtp_server.count() == 5


def test_a_slot_missed_while_down_fires_once_at_restart(
    site: Path,
    database_url: str,
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: RecordingHandler,
) -> None:
    load(sessions, site)
    slot = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)).replace(microsecond=0)
    scheduled_site(
        site, database_url, smtp_server.port, f"{slot.second} {slot.minute} {slot.hour} * * *"
    )
    serve = newsletter(site, "serve")
    wait_until(
        lambda: serve.stdout is not None and "next run" in (serve.stdout.readline() or ""), 30
    )
    stop(serve, signal.SIGKILL)  # killed before its slot
    wait_until(lambda: dt.datetime.now(dt.UTC) > slot + dt.timedelta(seconds=2), 30)
    assert smtp_server.count() == 0
    serve = newsletter(site, "serve")
    try:
        wait_until(lambda: smtp_server.count() == 5, 60)
        time.sleep(2)
    finally:
        stop(serve)
    with sessions() as s:
        (issue,) = s.scalars(select(Issue)).all()
        assert issue.slot_at == slot
    received = smtp_server.by_recipient()
    assert len(received) == 5 and all(len(m) == 1 for m in received.values())


@pytest.mark.parametrize("launcher", ["serve", "cron"])
def test_two_processes_on_one_slot_make_one_issue(
    launcher: str,
    site: Path,
    database_url: str,
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: RecordingHandler,
) -> None:
    load(sessions, site)
    smtp_server.delay_seconds = 0.05  # so the two really overlap
    if launcher == "serve":
        # Far enough ahead that both processes are up (and have stored the job) before it.
        slot = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=25)).replace(microsecond=0)
        scheduled_site(
            site, database_url, smtp_server.port, f"{slot.second} {slot.minute} {slot.hour} * * *"
        )
        procs = [
            newsletter(site, "serve", "--port", str(free_port())),
            newsletter(site, "serve", "--port", str(free_port())),
        ]
        try:
            wait_until(lambda: smtp_server.count() >= 5, 90)
            time.sleep(3)
        finally:
            outs = [stop(p) for p in procs]
        # Only the elected leader runs the scheduler (test_election.py and the SIGKILL test
        # below); two processes firing one slot at once: the "cron" case and the in-process test.
        assert sum(f"slot {slot.isoformat()}" in out for out in outs) == 1, outs
    else:
        scheduled_site(site, database_url, smtp_server.port, "* * * * *")
        procs = [newsletter(site, "send", "--scheduled", "weekly") for _ in range(2)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
    with sessions() as s:
        issues = s.scalars(select(Issue)).all()
    assert len(issues) == 1
    received = smtp_server.by_recipient()
    assert len(received) == 5 and all(len(m) == 1 for m in received.values())


class Watched:
    """A running `newsletter` process whose output is read as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


FIRING = "schedule weekly, slot "  # what the scheduler's job logs for every slot it fires


def statuses(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as s:
        return list(s.scalars(select(Issue.status).order_by(Issue.id)))


def test_one_of_two_serve_processes_fires_and_the_other_takes_over_when_it_is_killed(
    site: Path,
    database_url: str,
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: RecordingHandler,
) -> None:
    load(sessions, site)
    scheduled_site(site, database_url, smtp_server.port, "*/2 * * * * *")
    procs = [Watched(newsletter(site, "serve", "--port", str(free_port()))) for _ in range(2)]
    try:
        wait_until(lambda: statuses(sessions) == ["sent"], 60)
        with sessions() as s:
            first = s.scalars(select(Issue)).one()
        assert first.slot_at is not None
        (leader,) = [w for w in procs if "scheduler: leader (pid" in w.out]
        (standby,) = [w for w in procs if w is not leader]
        fired_first = f"{FIRING}{first.slot_at.isoformat()}: issue #{first.id}"
        wait_until(lambda: fired_first in leader.out, 30)  # logged just after the last commit
        wait_until(lambda: "scheduler: standby, another process holds the lock" in standby.out, 30)
        assert FIRING not in standby.out, standby.out
        leader.stop(signal.SIGKILL)
        # New items for the next slot, only now: no slot of the dead leader's can use them.
        more = site / "more"
        more.mkdir()
        (more / "later.md").write_text(
            "---\ntitle: A later report\nsection: Comprehensive Reports\n---\nNews for the next slot.\n"
        )
        import_source(sessions, str(more))
        wait_until(lambda: statuses(sessions) == ["sent", "sent"], 60)
        with sessions() as s:
            second = s.scalars(select(Issue).order_by(Issue.id.desc())).first()
        assert second is not None and second.slot_at is not None
        assert second.slot_at > first.slot_at
        fired_second = f"{FIRING}{second.slot_at.isoformat()}: issue #{second.id}"
        wait_until(lambda: fired_second in standby.out, 30)
    finally:
        for w in procs:
            w.stop()
    before, took_over, after = standby.out.partition("scheduler: leader (pid")
    assert took_over and FIRING not in before  # the standby fired nothing until it led ...
    assert fired_second in after  # ... and then fired the next slot
    received = smtp_server.by_recipient()
    assert len(received) == 5
    for address, messages in received.items():
        # One message per slot: Message-ID is <issue.member.nonce@domain>.
        issues = sorted(int(re.findall(r"<(\d+)\.", m.parse()["Message-ID"])[0]) for m in messages)
        assert issues == [first.id, second.id], address
