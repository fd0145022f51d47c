"""Scheduler election: one leader among the `serve` processes on a database, and a successor.

The real processes (two `newsletter serve`, one SIGKILLed) are in test_schedule.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from newsletter import schedule
from newsletter.config import SchedulerSettings, Settings
from newsletter.storage import db, election
from newsletter.storage.election import AdvisoryLockElector, LeaseElector
from tests.conftest import PG_DSN
from tests.test_schedule import wait_until

# Advisory locks are PostgreSQL's.
ONLY_POSTGRES = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def migrated(database_url: str) -> str:
    """The database, with the schema (scheduler_lease among it) in place."""
    sessions = db.open_database(database_url)
    sessions.kw["bind"].dispose()
    return database_url


def test_one_elector_wins_and_the_other_takes_over_when_it_closes(migrated: str) -> None:
    first = election.for_database(migrated, check_seconds=60)
    second = election.for_database(migrated, check_seconds=60)
    expected = AdvisoryLockElector if migrated.startswith("postgresql") else LeaseElector
    assert isinstance(first, expected)
    assert isinstance(second, expected)
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        assert first.confirm()
        assert first.try_acquire()  # the leader stays the leader
        assert not second.try_acquire()
        first.close()
        assert second.try_acquire()
        assert second.confirm()
        again = election.for_database(migrated, check_seconds=60)
        try:
            assert not again.try_acquire()
        finally:
            again.close()
    finally:
        first.close()
        second.close()


def test_a_lapsed_lease_goes_to_another_process(migrated: str) -> None:
    # LeaseElector is SQLite's elector, but it works on any database.
    stalled = LeaseElector(migrated, lease_seconds=0.2)
    other = LeaseElector(migrated, lease_seconds=600)
    try:
        assert stalled.try_acquire()
        stalled.drop()  # as if it stopped renewing (killed, or frozen)
        wait_until(other.try_acquire, 30)
        assert not stalled.confirm()  # back again, it finds it has lost the lead
        assert not stalled.try_acquire()
        stalled.close()  # and its close does not free the other's lease
        assert other.confirm()
        third = LeaseElector(migrated, lease_seconds=1)
        try:
            assert not third.try_acquire()
        finally:
            third.close()
    finally:
        stalled.close()
        other.close()


@ONLY_POSTGRES
def test_a_broken_lock_connection_frees_the_lock_and_the_leader_notices(migrated: str) -> None:
    leader = AdvisoryLockElector(migrated)
    standby = AdvisoryLockElector(migrated)
    try:
        assert leader.try_acquire()
        assert leader.conn is not None
        backend = leader.conn.scalar(text("SELECT pg_backend_pid()"))
        assert not standby.try_acquire()
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        wait_until(standby.try_acquire, 30)
        with pytest.raises(DBAPIError):  # SQLAlchemy's wrapper of whatever the driver raises
            leader.confirm()
        assert not leader.confirm()  # and from then on it knows
    finally:
        leader.close()
        standby.close()


@ONLY_POSTGRES
def test_sites_in_separate_schemas_elect_separately(migrated: str) -> None:
    other_schema = migrated.replace("search_path%3Dt_", "search_path%3Du_")
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{other_schema.rsplit("%3D", 1)[1]}"')
    here, there = AdvisoryLockElector(migrated), AdvisoryLockElector(other_schema)
    try:
        assert here.try_acquire()
        assert there.try_acquire()
        assert here.key != there.key
    finally:
        here.close()
        there.close()
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{other_schema.rsplit("%3D", 1)[1]}" CASCADE')


# --- the loop in `serve`: lead, stand by, step down -----------------------------------------


class Changes:
    """What a scenario waits on: told of every elector call and scheduler start and stop (from
    the elector's thread or the event loop), it wakes `until` to look at its condition again."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def tell(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.event.set)

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(30):
            while not condition():
                await self.event.wait()
                self.event.clear()


def no_one() -> None:
    pass


@dataclasses.dataclass
class Scripted:
    """An elector whose answers a test sets, to drive `run_elected`."""

    lead_free: bool = False
    still_leading: bool = True
    unreachable: bool = False  # try_acquire raises
    broken: bool = False  # confirm raises
    calls: list[str] = dataclasses.field(default_factory=list)
    description: str = "scripted"
    tell: Callable[[], None] = no_one  # after each call

    def record(self, call: str) -> None:
        self.calls.append(call)
        self.tell()

    def try_acquire(self) -> bool:
        self.record("try_acquire")
        if self.unreachable:
            raise ConnectionError("connection refused")
        return self.lead_free

    def confirm(self) -> bool:
        self.record("confirm")
        if self.broken:
            raise ConnectionError("the lock's connection is gone")
        return self.still_leading

    def drop(self) -> None:
        self.record("drop")

    def close(self) -> None:
        self.record("close")


class FakeScheduler:
    def __init__(self, started: list[FakeScheduler], tell: Callable[[], None]) -> None:
        self.running, self.tell = True, tell
        started.append(self)
        tell()

    def get_jobs(self) -> list[Any]:
        return []

    def shutdown(self, wait: bool = True) -> None:
        self.running = False
        self.tell()


def test_the_scheduler_runs_only_while_this_process_leads(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[FakeScheduler] = []
    fast = dataclasses.replace(settings, scheduler=SchedulerSettings(check_seconds=0.01))
    elector = Scripted()
    caplog.set_level(logging.INFO, logger="newsletter.schedule")

    async def scenario() -> None:
        changes = Changes()
        elector.tell = changes.tell
        monkeypatch.setattr(
            schedule, "start", lambda _settings: FakeScheduler(started, changes.tell)
        )
        until = changes.until
        task = asyncio.create_task(schedule.run_elected(fast, elector))
        await until(lambda: elector.calls.count("try_acquire") >= 3)
        assert started == []  # a standby runs no scheduler
        elector.lead_free = True
        await until(lambda: len(started) == 1 and "confirm" in elector.calls)
        elector.still_leading = False  # another process took over
        await until(lambda: not started[0].running)
        assert len(started) == 1  # and this one stands by again
        elector.still_leading, elector.broken = True, True  # the lock's connection broke
        await until(lambda: len(started) == 2)
        await until(lambda: not started[1].running)
        elector.lead_free = False
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert elector.calls[-1] == "close"  # the lead is handed back when serve stops
    assert all(not s.running for s in started)
    log = caplog.text
    assert log.count("scheduler: standby, another process holds the lock") >= 1
    assert log.count("scheduler: leader (pid") == 2
    assert "no longer the leader (another process took over)" in log
    assert "no longer the leader (the check failed: ConnectionError" in log


def test_an_unreachable_database_is_no_lead(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[FakeScheduler] = []
    fast = dataclasses.replace(settings, scheduler=SchedulerSettings(check_seconds=0.01))
    elector = Scripted(lead_free=True, unreachable=True)

    async def scenario() -> None:
        changes = Changes()
        elector.tell = changes.tell
        monkeypatch.setattr(
            schedule, "start", lambda _settings: FakeScheduler(started, changes.tell)
        )
        task = asyncio.create_task(schedule.run_elected(fast, elector))
        await changes.until(lambda: elector.calls.count("try_acquire") >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert started == []
    assert "scheduler: cannot take part in the election: ConnectionError" in caplog.text
