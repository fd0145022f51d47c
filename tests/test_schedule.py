"""Scheduled issues: slots, min_items, and one issue per slot whoever fires it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter import schedule
from newsletter.config import ScheduleSettings, Settings
from newsletter.services import issues as service_issues
from newsletter.storage.models import Issue
from tests.conftest import SECRET
from tests.smtpd import RecordingHandler
from tests.steps import import_csv, import_source
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
    assert len(received) == 5
    assert all(len(m) == 1 for m in received.values())
    again = asyncio.run(schedule.fire(settings, sessions, "weekly", slot))
    assert not again.made
    assert "already sent" in again.reason
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
    real, calls = service_issues.slot, []

    def late(unit: Any, name: str, at: dt.datetime) -> Any:
        calls.append(at)
        if len(calls) == 1:  # the first look misses the issue, and counts the new items
            return service_issues.Slot(None, None, 8)  # the other run was about to take
        return real(unit, name, at)

    monkeypatch.setattr(service_issues, "slot", late)
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
    real = service_issues.release_next
    loop_ran = threading.Event()

    def release_next(*args: Any, **kwargs: Any) -> Any:
        assert loop_ran.wait(timeout=10), "the event loop was blocked by the release"
        return real(*args, **kwargs)

    monkeypatch.setattr(service_issues, "release_next", release_next)

    async def fire_and_tick() -> schedule.SlotResult:
        asyncio.get_running_loop().call_later(0.05, loop_ran.set)
        slot = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)
        return await schedule.fire(settings, sessions, "weekly", slot)

    result = asyncio.run(fire_and_tick())
    assert result.made
    assert smtp_server.count() == 5


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
    assert result.issue_id is None
    assert "8 new items, fewer than min_items = 9" in result.reason
    with sessions() as s:
        assert s.scalars(select(Issue)).all() == []
    assert smtp_server.messages == []


# --- the real processes -----------------------------------------------------------------
#
# These run `newsletter serve` (or `send --scheduled`) as real processes, but none waits for
# a slot picked ahead on the wall clock. Either a schedule fires every second and makes no
# issue until the test imports the items, or the test sets the stored job's next run in the
# past, as it is after the service was down at its slot. Every wait polls for what it waits
# for, with a deadline.


def scheduled_site(
    site: Path,
    database_url: str,
    smtp_port: int,
    cron: str,
    *,
    grace: int | None = None,
    check_seconds: float = 2.0,
) -> Path:
    config = site / "config.toml"
    text = config.read_text()
    text = text.replace("port = 8025", f"port = {smtp_port}")
    text = text.replace('url = "sqlite:///var/newsletter.db"', f'url = "{database_url}"')
    text = text.replace('cron = "0 8 * * mon"', f'cron = "{cron}"').replace(
        'timezone = "Asia/Shanghai"', 'timezone = "UTC"'
    )
    if grace is not None:
        text = text.replace("misfire_grace_seconds = 3600", f"misfire_grace_seconds = {grace}")
    text = text.replace("port = 8000", f"port = {free_port()}")
    # Standbys try for the lead this often (a SQLite lease lasts three times as long).
    text = text.replace("check_seconds = 5.0", f"check_seconds = {check_seconds}")
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


def wait_until(
    condition: Callable[[], object], timeout: float, about: Callable[[], str] = str
) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds, saying `about()`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s\n{about()}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    """Stop a process that nothing reads from as it runs; its whole output."""
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return out


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


def serve(site: Path) -> Watched:
    return Watched(newsletter(site, "serve", "--port", str(free_port())))


def outputs(*procs: Watched) -> Callable[[], str]:
    return lambda: "\n\n".join(f"--- pid {w.proc.pid}:\n{w.out}" for w in procs)


FIRING = "schedule weekly, slot "  # what the scheduler's job logs for every slot it fires
EMPTY = "fewer than min_items"  # ... and adds for a slot with too few new items
LEADER = "scheduler: leader (pid"
STANDBY = "scheduler: standby, another process holds the lock"
JOB = schedule.JOB_PREFIX + "weekly"


def stop_all(procs: list[Watched]) -> None:
    """Stop the standbys before the leader: a leader that stops hands the lead back at once,
    and a standby still running would take it over."""
    for w in sorted(procs, key=lambda w: LEADER in w.out):
        w.stop()


def statuses(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as s:
        return list(s.scalars(select(Issue.status).order_by(Issue.id)))


def fired(issue: Issue) -> str:
    """The line the job logs once it has delivered `issue`, its slot's issue."""
    assert issue.slot_at is not None
    return f"{FIRING}{issue.slot_at.isoformat()}: issue #{issue.id}"


def only_issue(sessions: sessionmaker[Session]) -> Issue:
    with sessions() as s:
        return s.scalars(select(Issue)).one()


def test_serve_fires_a_seconds_schedule_and_then_waits_for_items(
    site: Path,
    database_url: str,
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: RecordingHandler,
) -> None:
    load(sessions, site)
    scheduled_site(site, database_url, smtp_server.port, "* * * * * *")
    proc = serve(site)
    try:
        wait_until(lambda: statuses(sessions) == ["sent"], 60, outputs(proc))
        issue = only_issue(sessions)
        wait_until(lambda: fired(issue) in proc.out, 30, outputs(proc))
        # The next slot comes with no new items, and makes nothing.
        wait_until(lambda: EMPTY in proc.out.partition(fired(issue))[2], 30, outputs(proc))
    finally:
        proc.stop()
    assert issue.schedule == "weekly"
    assert statuses(sessions) == ["sent"]
    assert smtp_server.count() == 5


def next_runs(proc: Watched) -> list[dt.datetime]:
    """The next run of the weekly job, as the scheduler logs it when it starts."""
    found = re.findall(rf"{JOB}: next run (\S+ \S+)", proc.out)
    return [dt.datetime.fromisoformat(t) for t in found]


@contextlib.contextmanager
def job_table(database_url: str) -> Iterator[SQLAlchemyJobStore]:
    """The scheduler's job table, through a job store of the test's own and no scheduler: a
    stopping BackgroundScheduler still looks at due jobs once, and moves their next run on."""
    store = SQLAlchemyJobStore(url=database_url, tablename="apscheduler_jobs")
    try:
        yield store
    finally:
        store.shutdown()


def test_a_slot_missed_while_down_fires_once_at_restart(
    site: Path,
    database_url: str,
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: RecordingHandler,
) -> None:
    load(sessions, site)
    # A daily slot that came six hours ago, within its twelve hours' grace; the next one is
    # eighteen hours away, so no slot comes due while the test runs.
    missed = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=6)).replace(second=0, microsecond=0)
    following = missed + dt.timedelta(days=1)
    cron = f"{missed.minute} {missed.hour} * * *"
    scheduled_site(site, database_url, smtp_server.port, cron, grace=12 * 3600)

    first = serve(site)
    try:
        wait_until(lambda: next_runs(first), 60, outputs(first))  # the job is stored
    finally:
        first.stop()
    # A new job waits for its next slot: it does not fire one from before it existed.
    assert next_runs(first) == [following]
    assert FIRING not in first.out
    assert smtp_server.count() == 0
    # As if that run had been before the slot and the service then down until now: the job's
    # stored next run is the slot, which passed with no scheduler running.
    with job_table(database_url) as jobs:
        job = jobs.lookup_job(JOB)
        assert job is not None
        job.next_run_time = missed
        jobs.update_job(job)

    second = serve(site)
    try:
        wait_until(
            lambda: f"{FIRING}{missed.isoformat()}: issue #" in second.out, 60, outputs(second)
        )
    finally:
        second.stop()
    assert next_runs(second) == [missed]
    assert second.out.count(FIRING) == 1, second.out
    with job_table(database_url) as jobs:
        job = jobs.lookup_job(JOB)
        assert job is not None
        assert job.next_run_time == following

    third = serve(site)  # restarted again: the slot is done with
    try:
        wait_until(lambda: next_runs(third), 60, outputs(third))
    finally:
        third.stop()
    assert next_runs(third) == [following]
    assert FIRING not in third.out

    issue = only_issue(sessions)
    assert (issue.slot_at, issue.status) == (missed, "sent")
    received = smtp_server.by_recipient()
    assert len(received) == 5
    assert all(len(m) == 1 for m in received.values())


@pytest.mark.parametrize("launcher", ["serve", "cron"])
def test_two_processes_on_one_slot_make_one_issue(
    launcher: str,
    site: Path,
    database_url: str,
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: RecordingHandler,
) -> None:
    import_csv(sessions, site / "subscribers" / "example.csv")
    smtp_server.delay_seconds = 0.05  # so the two really overlap
    if launcher == "serve":
        # A slot every second, each making nothing until the items are there; they come only
        # once both processes are up and one of them leads.
        scheduled_site(site, database_url, smtp_server.port, "* * * * * *")
        procs = [serve(site), serve(site)]
        about = outputs(*procs)
        try:
            wait_until(lambda: all(LEADER in w.out or STANDBY in w.out for w in procs), 60, about)
            leaders = [w for w in procs if LEADER in w.out]
            assert len(leaders) == 1, about()
            (leader,) = leaders
            (standby,) = [w for w in procs if w is not leader]
            import_source(sessions, str(site / "examples" / "seed-feed.xml"))
            wait_until(lambda: statuses(sessions) == ["sent"], 60, about)
            issue = only_issue(sessions)
            wait_until(lambda: fired(issue) in leader.out, 30, about)
            # The slots after it make nothing more.
            wait_until(lambda: EMPTY in leader.out.partition(fired(issue))[2], 30, about)
        finally:
            stop_all(procs)
        # Only the elected leader runs the scheduler (test_election.py and the SIGKILL test
        # below); two processes firing one slot at once: the "cron" case and the in-process test.
        assert FIRING not in standby.out, standby.out
        assert LEADER not in standby.out, standby.out
        assert issue.slot_at is not None
        assert sum(f"slot {issue.slot_at.isoformat()}" in w.out for w in procs) == 1
    else:
        import_source(sessions, str(site / "examples" / "seed-feed.xml"))
        scheduled_site(site, database_url, smtp_server.port, "* * * * *")
        cron = [newsletter(site, "send", "--scheduled", "weekly") for _ in range(2)]
        outs = [p.communicate(timeout=120)[0] for p in cron]
        assert all(p.returncode == 0 for p in cron), outs
    with sessions() as s:
        issues = s.scalars(select(Issue)).all()
    assert len(issues) == 1
    received = smtp_server.by_recipient()
    assert len(received) == 5
    assert all(len(m) == 1 for m in received.values())


def test_one_of_two_serve_processes_fires_and_the_other_takes_over_when_it_is_killed(
    site: Path,
    database_url: str,
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: RecordingHandler,
) -> None:
    load(sessions, site)
    scheduled_site(site, database_url, smtp_server.port, "* * * * * *", check_seconds=1.0)
    procs = [serve(site), serve(site)]
    about = outputs(*procs)
    try:
        wait_until(lambda: statuses(sessions) == ["sent"], 60, about)
        first = only_issue(sessions)
        (leader,) = [w for w in procs if LEADER in w.out]
        (standby,) = [w for w in procs if w is not leader]
        wait_until(lambda: fired(first) in leader.out, 30, about)  # logged after the last commit
        wait_until(lambda: STANDBY in standby.out, 30, about)
        assert FIRING not in standby.out, standby.out
        leader.stop(signal.SIGKILL)
        # New items for the next slot, only now: no slot of the dead leader's can use them.
        more = site / "more"
        more.mkdir()
        (more / "later.md").write_text(
            "---\ntitle: A later report\nsection: Comprehensive Reports\n---\nNews for the next slot.\n"
        )
        import_source(sessions, str(more))
        wait_until(lambda: statuses(sessions) == ["sent", "sent"], 60, about)
        with sessions() as s:
            second = s.scalars(select(Issue).order_by(Issue.id.desc())).first()
        assert second is not None
        assert second.slot_at is not None
        assert first.slot_at is not None
        assert second.slot_at > first.slot_at
        wait_until(lambda: fired(second) in standby.out, 30, about)
    finally:
        stop_all(procs)
    before, took_over, after = standby.out.partition(LEADER)
    assert took_over
    assert FIRING not in before  # the standby fired nothing until it led ...
    assert fired(second) in after  # ... and then fired the next slot
    received = smtp_server.by_recipient()
    assert len(received) == 5
    for address, messages in received.items():
        # One message per slot: Message-ID is <issue.member.nonce@domain>.
        issues = sorted(int(re.findall(r"<(\d+)\.", m.parse()["Message-ID"])[0]) for m in messages)
        assert issues == [first.id, second.id], address
