"""Scheduled issues: cron slots from config.toml, one issue per (schedule, slot) whoever fires it.

`newsletter serve` runs an APScheduler 3 AsyncIOScheduler in its event loop, with its jobs
in a SQLAlchemyJobStore in the project's database, so a slot missed while the service was
down fires once at start-up if it is still within the schedule's misfire grace.
`newsletter send --scheduled NAME` does the same work from cron or a systemd timer. Either
way the database decides: an issue records its schedule and slot, and the pair is unique.

With several `serve` processes on one database (several machines), `run_elected` lets only
the elected leader run the scheduler (see election.py); the others stand by, and one of
them takes over when the leader dies, firing a slot missed meanwhile if within grace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config
from newsletter.config import ScheduleSettings, Settings
from newsletter.delivery.engine import Summary
from newsletter.errors import ConfigError, NewsletterError, NothingToSend
from newsletter.services import issues, sending
from newsletter.services.unit import Services
from newsletter.storage import db, election
from newsletter.storage.models import IssueStatus, utcnow

log = logging.getLogger("newsletter.schedule")
T = TypeVar("T")
JOB_PREFIX = "schedule:"
_CRON_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def trigger(name: str, sched: ScheduleSettings) -> CronTrigger:
    """The schedule's CronTrigger. Weekday numbers follow crontab (0 or 7 = Sunday); APScheduler
    3 counts from Monday, so numbers are turned into names first."""
    fields = sched.cron.split()
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, weekday = fields
    weekday = re.sub(r"\d+", lambda m: _CRON_DAYS[int(m.group()) % 7], weekday)
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=weekday,
            timezone=sched.timezone,
        )
    except (ValueError, LookupError) as exc:
        raise ConfigError(f"schedule.{name}", f"bad cron or timezone: {exc}") from None


def last_slot(name: str, sched: ScheduleSettings, now: dt.datetime) -> dt.datetime | None:
    """The latest fire time at or before `now` and within the misfire grace, in UTC."""
    cron = trigger(name, sched)
    start = now - dt.timedelta(seconds=sched.misfire_grace_seconds)
    fire = cron.get_next_fire_time(None, start)
    last = None
    while fire is not None and fire <= now:
        last = fire
        fire = cron.get_next_fire_time(fire, fire + dt.timedelta(microseconds=1))
    return None if last is None else last.astimezone(dt.UTC)


@dataclass
class SlotResult:
    schedule: str
    slot: dt.datetime
    issue_id: int | None
    made: bool
    reason: str
    summary: Summary | None = None


async def fire(
    settings: Settings, sessions: sessionmaker[Session], name: str, slot: dt.datetime
) -> SlotResult:
    """Make (or join) the issue of one slot and deliver it. Safe to call from any number of
    processes for the same slot: one issue is made, and the ledger mails each member once."""
    sched = settings.schedule[name]
    services = Services(settings, sessions)
    # Reads, the compile (premailer) and the audience snapshot run in threads: off the event
    # loop, which `serve` shares with the web app and the scheduler election's keepalive.
    state = await asyncio.to_thread(services.read, issues.slot, name, slot)
    issue_id, status, made = state.issue_id, state.status, False
    if issue_id is None:
        if state.new_items < sched.min_items:
            reason = (
                f"{state.new_items} new items, fewer than min_items = {sched.min_items}: "
                "no issue made"
            )
            log.info("schedule %s, slot %s: %s", name, slot.isoformat(), reason)
            return SlotResult(name, slot, None, False, reason)
        try:
            released = await sending.release(
                services,
                f"scheduler:{name}",
                schedule=name,
                slot_at=slot,
                with_survey=sched.survey == "open",
            )
            issue_id, status, made = released.issue_id, IssueStatus.SENDING, True
        except (IntegrityError, NothingToSend):
            # Another process made this slot's issue first (its insert won, or it had
            # already taken the new items when this one looked): deliver it together.
            state = await asyncio.to_thread(services.read, issues.slot, name, slot)
            if state.issue_id is None:
                raise
            issue_id, status = state.issue_id, state.status
    if status != IssueStatus.SENDING:
        reason = f"issue #{issue_id} of this slot is already {status}"
        return SlotResult(name, slot, issue_id, False, reason)
    summary = await sending.deliver(services, issue_id)
    log.info("schedule %s, slot %s: issue #%s %s", name, slot.isoformat(), issue_id, summary.counts)
    return SlotResult(name, slot, issue_id, made, "made" if made else "joined", summary)


async def run_slot(config_path: str, name: str) -> None:
    """The scheduler's job (importable by reference, as the job store needs): fire the slot
    that is due now."""
    settings = config.load(Path(config_path))
    if name not in settings.schedule:
        log.warning("schedule %s is no longer in %s; nothing to do", name, config_path)
        return
    sessions = _sessions_for(settings.database_url)
    slot = last_slot(name, settings.schedule[name], utcnow())
    if slot is None:
        log.info("schedule %s: no slot within the misfire grace", name)
        return
    try:
        await fire(settings, sessions, name, slot)
    except NewsletterError as exc:
        log.error("schedule %s, slot %s: %s", name, slot.isoformat(), exc)


_SESSIONS: dict[str, sessionmaker[Session]] = {}


def _sessions_for(url: str) -> sessionmaker[Session]:
    # One engine per database for the scheduler's jobs in this process.
    if url not in _SESSIONS:
        _SESSIONS[url] = db.open_database(url)
    return _SESSIONS[url]


def start(settings: Settings) -> AsyncIOScheduler:
    """Start the scheduler in the running event loop, its jobs matching config.toml.

    A job whose schedule is unchanged keeps its stored next run time, so a slot missed
    while no scheduler ran is detected (and fired once if within grace); a changed schedule
    replaces its job; a schedule removed from config.toml removes its job.
    """
    scheduler = AsyncIOScheduler(
        jobstores={
            "default": SQLAlchemyJobStore(url=settings.database_url, tablename="apscheduler_jobs")
        },
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone=dt.UTC,
    )
    scheduler.start(paused=True)
    wanted: dict[str, dict[str, Any]] = {}
    for name, sched in settings.schedule.items():
        wanted[JOB_PREFIX + name] = {
            "func": "newsletter.schedule:run_slot",
            "trigger": trigger(name, sched),
            "kwargs": {"config_path": str(settings.config_path), "name": name},
            "misfire_grace_time": sched.misfire_grace_seconds,
            "coalesce": True,
            "max_instances": 1,
            "name": f"newsletter schedule {name}",
        }
    for job in scheduler.get_jobs():
        if job.id.startswith(JOB_PREFIX) and job.id not in wanted:
            log.info("removing %s: no longer in config.toml", job.id)
            job.remove()
    for job_id, spec in wanted.items():
        job = scheduler.get_job(job_id)
        same = (
            job is not None
            and str(job.trigger) == str(spec["trigger"])
            and job.kwargs == spec["kwargs"]
            and job.misfire_grace_time == spec["misfire_grace_time"]
        )
        if not same:
            scheduler.add_job(id=job_id, replace_existing=True, **spec)
            log.info("scheduled %s: %s", job_id, spec["trigger"])
    scheduler.resume()
    return scheduler


async def run_elected(settings: Settings, elector: election.Elector | None = None) -> None:
    """Run the scheduler while this process is the elected leader and stand by while another
    process is, until cancelled; then hand the lead back at once, if held.

    Every `scheduler.check_seconds` a standby tries to take the lead and the leader checks
    that it still holds it. A leader that loses its hold (the lock's connection broke, the
    lease went to another process) shuts its scheduler down and stands by again.
    """
    interval = settings.scheduler.check_seconds
    elector = elector or election.for_database(settings.database_url, interval)
    candidate = _Candidate(settings, elector, timeout=max(2 * interval, 1.0))
    try:
        while True:
            if candidate.jobs is None:
                await candidate.stand()
            else:
                await candidate.check(candidate.jobs)
            await asyncio.sleep(interval)
    finally:
        await candidate.retire()


class _Candidate:
    """One process in the election: its elector, and its scheduler while it is the leader."""

    def __init__(self, settings: Settings, elector: election.Elector, timeout: float) -> None:
        self.settings = settings
        self.elector = elector
        # One thread for the elector's blocking calls, so they never overlap; a call that hangs
        # (a dead network) is given up on after `timeout` and counts as a failure.
        self.thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="newsletter-election"
        )
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.jobs: AsyncIOScheduler | None = None
        self.said_standby = False

    async def call(self, fn: Callable[[], T]) -> T:
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns (or raises) the call's
        # outcome when a cancel arrives as the call ends, and the cancel is lost; serve's stop
        # would then go unheard while the loop went round.
        async with asyncio.timeout(self.timeout):
            return await self.loop.run_in_executor(self.thread, fn)

    async def stand(self) -> None:
        """A standby's turn: try to take the lead, and start the scheduler if it is won."""
        try:
            won = await self.call(self.elector.try_acquire)
        except Exception as exc:  # noqa: BLE001 - the database is out of reach: try again later
            log.warning("scheduler: cannot take part in the election: %r", exc)
            self.thread.submit(self.elector.drop)
            won = self.said_standby = False
        if won:
            log.info("scheduler: leader (pid %d, %s)", os.getpid(), self.elector.description)
            self.said_standby = False
            await self._lead()
        elif not self.said_standby:
            log.info(
                "scheduler: standby, another process holds the lock (pid %d, %s)",
                os.getpid(),
                self.elector.description,
            )
            self.said_standby = True

    async def _lead(self) -> None:
        try:
            self.jobs = start(self.settings)
        except Exception:
            log.exception("scheduler: cannot start; handing the lead back")
            await self.hand_back()
        else:
            for job in self.jobs.get_jobs():
                log.info("%s: next run %s", job.id, job.next_run_time)

    async def check(self, jobs: AsyncIOScheduler) -> None:
        """A leader's turn: make sure the lead is still held; if not, stop and stand by."""
        try:
            held, why = await self.call(self.elector.confirm), "another process took over"
        except Exception as exc:  # noqa: BLE001 - any failure to confirm means the lead is lost
            held, why = False, f"the check failed: {exc!r}"
        if not held:
            log.warning("scheduler: no longer the leader (%s); standing by", why)
            jobs.shutdown(wait=False)
            self.jobs = None
            self.thread.submit(self.elector.drop)

    async def hand_back(self) -> None:
        try:
            await self.call(self.elector.close)
        except Exception as exc:  # noqa: BLE001 - best effort, on the way out: log and go on
            log.warning("scheduler: could not hand the lead back: %r", exc)

    async def retire(self) -> None:
        """Stop the scheduler, if running, and hand the lead back at once, if held."""
        if self.jobs is not None:
            self.jobs.shutdown(wait=False)
        await self.hand_back()
        self.thread.shutdown(wait=False)
