"""No door does database or compile work on the event loop: a heartbeat keeps beating through it.

The database is made slow on purpose: another connection holds SQLite's write lock for
LOCK_SECONDS while a request that writes is served. A handler that writes on the event loop
blocks the loop for as long (every page, the scheduler's keepalive with it); one that crosses
the boundary into a worker thread (services/boundary.py) leaves the loop free, and the
heartbeat, a callback due every 20 ms, keeps running on time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2 as httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.storage import db
from newsletter.web.app import create_app
from tests import steps
from tests.smtpd import RecordingHandler
from tests.test_desk import CSRF, EDITOR, PASSWORD, TOKEN, desk_settings

LOCK_SECONDS = 0.6
BEAT = 0.02
# A loop free to run its callbacks is late by scheduling noise only; one blocked by a write
# waiting on the lock is late by the lock's remaining time. Half the lock tells them apart.
LATE = LOCK_SECONDS / 2


def hold_write_lock(path: str, held: threading.Event, release: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # the write lock: other writers wait (busy_timeout)
    held.set()
    release.wait(10)
    conn.execute("ROLLBACK")
    conn.close()


async def latest_beat(db_path: str, request: Callable[[], Awaitable[httpx.Response]]) -> float:
    """How late the heartbeat ran at worst while `request` was served under a held lock."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    stop = False

    async def heartbeat() -> None:
        nonlocal worst
        expected = loop.time() + BEAT
        while not stop:
            await asyncio.sleep(BEAT)
            now = loop.time()
            worst = max(worst, now - expected)
            expected = now + BEAT

    beating = asyncio.create_task(heartbeat())
    held, release = threading.Event(), threading.Event()
    locker = threading.Thread(target=hold_write_lock, args=(db_path, held, release))
    locker.start()
    await loop.run_in_executor(None, held.wait, 10)
    timer = threading.Timer(LOCK_SECONDS, release.set)
    timer.start()
    try:
        response = await request()
        assert response.status_code < 500, response.text
        # The request may have returned at once (its work in the background): beat on until
        # the lock is gone, so a write the work does later on the loop is seen too.
        await loop.run_in_executor(None, release.wait, 10)
        await asyncio.sleep(0.2)
    finally:
        release.set()
        timer.cancel()
        locker.join()
        stop = True
        await beating
    return worst


@pytest.fixture
def served(
    site: Path, tmp_path: Path, smtp_server: RecordingHandler
) -> tuple[Settings, sessionmaker[Session], str]:
    db_path = str(tmp_path / "slow.db")
    settings = desk_settings(site, f"sqlite:///{db_path}", smtp_server.port)
    sessions = db.open_database(settings.database_url)
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    return settings, sessions, db_path


def member_links(settings: Settings, sessions: sessionmaker[Session]) -> tuple[str, str]:
    """One member's vote and unsubscribe paths, from an issue released for the purpose."""
    prepared = steps.release_next(settings, sessions)
    services = steps.services(settings, sessions)
    issue = prepared.issue.id
    vote = services.links.vote(prepared.issue.survey_id or 0, 1, 2)
    unsubscribe = services.links.unsubscribe(1, issue)
    base = settings.list.base_url.rstrip("/")
    return vote.removeprefix(base), unsubscribe.removeprefix(base)


DOORS = ["desk-send", "api-send", "vote", "unsubscribe", "subscribe"]


@pytest.mark.parametrize("door", DOORS)
def test_no_door_blocks_the_event_loop(
    door: str, served: tuple[Settings, sessionmaker[Session], str]
) -> None:
    settings, sessions, db_path = served
    vote, unsubscribe = (
        member_links(settings, sessions) if door in ("vote", "unsubscribe") else ("", "")
    )
    app = create_app(settings, sessions, background=False)

    async def scenario() -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            csrf = ""
            if door == "desk-send":
                login = {"name": EDITOR, "password": PASSWORD}
                await client.post("/desk/login", data=login)
                match = CSRF.search((await client.get("/desk")).text)
                assert match is not None
                csrf = match.group(1)
            requests: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
                "desk-send": lambda: client.post("/desk/send", data={"csrf": csrf, "confirm": "5"}),
                "api-send": lambda: client.post("/api/issues/send", headers=headers),
                "vote": lambda: client.post(vote, data={"option": "2", "person": "1"}),
                "unsubscribe": lambda: client.post(unsubscribe, data={"action": "unsubscribe"}),
                "subscribe": lambda: client.post("/subscribe", data={"email": "new@example.org"}),
            }
            late = await latest_beat(db_path, requests[door])
            # Let a send started in the background finish before the loop closes.
            jobs = list(app.state.desk_jobs.tasks.values())
            if jobs:
                await asyncio.wait(jobs, timeout=30)
            return late

    late = asyncio.run(scenario())
    assert late < LATE, f"the event loop stood still for {late:.2f} s during {door}"
    # The action itself went through once the lock was gone.
    with sessions() as s:
        if door in ("desk-send", "api-send"):
            assert s.execute(text("SELECT count(*) FROM issues")).scalar() == 1
        elif door == "vote":
            assert s.execute(text("SELECT option FROM votes")).scalar() == 2
        elif door == "unsubscribe":
            status = s.execute(text("SELECT status FROM members WHERE id = 1")).scalar()
            assert status == "unsubscribed"
        else:
            assert s.execute(text("SELECT count(*) FROM signup_requests")).scalar() == 1
