"""Rate limits shared through the database: several limiters (as several senders) never
grant more than a relay's quota between them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.storage import db
from newsletter.storage.models import RateBucket
from newsletter.storage.ratelimit import (
    CLOCK_TOLERANCE,
    GRANT_TTL,
    HOUR,
    SECOND,
    Bucket,
    SharedRateLimiter,
    SharedRateLimits,
    buckets_for,
    grant_size,
    refill,
)

REPO = Path(__file__).resolve().parent.parent
RELAY = "smtp.example.org:587"
START = 1_000_000.0


class SimClock:
    """Simulated time: a limiter's sleep moves the clock on by what it asked for."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


class Blocked(Exception):
    pass


async def refuse_to_wait(seconds: float) -> None:
    raise Blocked(seconds)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    factory = db.open_database(database_url)
    yield factory
    factory.kw["bind"].dispose()


def rows(sessions: sessionmaker[Session], relay: str = RELAY) -> dict[str, tuple[float, float]]:
    with sessions() as session:
        return {
            r.period: (r.tokens, r.refilled_at)
            for r in session.scalars(select(RateBucket).where(RateBucket.relay == relay))
        }


def set_row(
    sessions: sessionmaker[Session], period: str, tokens: float, refilled_at: float
) -> None:
    with sessions.begin() as session:
        session.execute(
            update(RateBucket)
            .where(RateBucket.relay == RELAY, RateBucket.period == period)
            .values(tokens=tokens, refilled_at=refilled_at)
        )


async def burst(limiter: SharedRateLimiter, most: int = 100_000) -> int:
    """How many messages the limiter lets through before it would have to wait."""
    n = 0
    try:
        while n < most:
            await limiter.acquire()
            n += 1
    except Blocked:
        pass
    return n


async def round_robin(
    limiters: list[SharedRateLimiter], clock: SimClock, until: float
) -> list[float]:
    """Each limiter in turn acquires as soon as it can; the times of every grant."""
    times: list[float] = []
    while clock.now < until:
        for limiter in limiters:
            await limiter.acquire()
            times.append(clock.now)
    return times


def most_in_window(times: list[float], width: float) -> int:
    """The most grants within any closed interval `width` seconds long."""
    times = sorted(times)
    most, j = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] <= t + width:
            j += 1
        most = max(most, j - i)
    return most


# --- the bucket arithmetic ---


def test_buckets_follow_the_rates() -> None:
    assert buckets_for(0, 0) == []
    second, hour = buckets_for(20, 3600)
    assert second == Bucket(SECOND, 20.0, 20.0)
    assert hour.period == HOUR
    assert hour.capacity == 60.0
    # burst + refill over an hour (and a grant's lifetime) is exactly the quota
    assert hour.capacity + hour.rate * (3600 + GRANT_TTL) == pytest.approx(3600)
    assert buckets_for(0.5, 0) == [Bucket(SECOND, 1.0, 0.5)]  # one message at least
    (only,) = buckets_for(0, 1)
    assert only.capacity == 1.0
    assert only.rate > 0  # a quota of 1 still refills


def test_grants_are_a_tenth_of_the_slowest_rate() -> None:
    assert grant_size([]) == 0
    assert grant_size(buckets_for(20, 0)) == 2
    assert grant_size(buckets_for(1000, 0)) == 100
    assert grant_size(buckets_for(5, 0)) == 1
    assert grant_size(buckets_for(1000, 10_000)) == 1  # the hourly bucket refills ~2.7/s


def test_refill_repairs_bad_state() -> None:
    b = Bucket(SECOND, 10.0, 5.0)
    now = START
    assert refill(b, 2.0, now - 1.0, now) == (7.0, now)
    assert refill(b, 2.0, now - 1e9, now) == (10.0, now)  # long idle: full, no more
    assert refill(b, 1e12, now, now) == (10.0, now)  # more than it may hold
    assert refill(b, -5.0, now, now) == (0.0, now)  # negative: empty, not a debt
    assert refill(b, math.nan, now, now) == (0.0, now)
    assert refill(b, 3.0, math.inf, now) == (0.0, now)
    assert refill(b, 3.0, now + 5.0, now) == (3.0, now + 5.0)  # a clock a little ahead
    assert refill(b, 3.0, now + CLOCK_TOLERANCE + 1, now) == (0.0, now)  # far ahead: reset


# --- against the database ---


async def test_a_new_bucket_starts_full_and_no_fuller(sessions: sessionmaker[Session]) -> None:
    clock = SimClock()
    limiter = SharedRateLimiter(sessions, RELAY, 20, 3600, clock=clock, sleep=refuse_to_wait)
    assert rows(sessions) == {}
    # The hourly bucket's minute share (60) is more than a second's 20: 20 go at once.
    assert await burst(limiter) == 20
    state = rows(sessions)
    assert state[SECOND] == (0.0, START)
    assert state[HOUR] == (40.0, START)
    # A second instance (another sender) finds the same empty bucket.
    other = SharedRateLimiter(sessions, RELAY, 20, 3600, clock=clock, sleep=refuse_to_wait)
    assert await burst(other) == 0


async def test_three_senders_keep_to_the_per_second_quota(
    sessions: sessionmaker[Session],
) -> None:
    rate, seconds = 20.0, 30.0
    clock = SimClock()
    limiters = [
        SharedRateLimiter(sessions, RELAY, rate, 0, clock=clock, sleep=clock.sleep)
        for _ in range(3)
    ]
    grant = limiters[0].grant
    times = await round_robin(limiters, clock, START + seconds)
    elapsed = times[-1] - START
    assert len(times) <= rate + rate * elapsed  # the first second's burst, then the rate
    for width in (0.5, 1.0, 5.0):
        # ... in every interval, plus what the three held when it began
        assert most_in_window(times, width) <= rate + rate * width + 3 * grant
    assert len(times) >= 0.9 * rate * seconds  # and the quota is used, not wasted


async def test_three_senders_keep_to_the_hourly_quota(sessions: sessionmaker[Session]) -> None:
    per_hour, hours = 120, 3
    clock = SimClock()
    limiters = [
        SharedRateLimiter(sessions, RELAY, 2, per_hour, clock=clock, sleep=clock.sleep)
        for _ in range(3)
    ]
    times = await round_robin(limiters, clock, START + hours * 3600)
    assert most_in_window(times, 3600.0) <= per_hour  # any hour, not only the first
    assert most_in_window(times, 1.0) <= 2 + 2 + 3 * limiters[0].grant
    assert len(times) >= 0.95 * per_hour * hours


async def test_each_relay_has_its_own_buckets(sessions: sessionmaker[Session]) -> None:
    clock = SimClock()
    limits = SharedRateLimits(sessions, 5, 0, clock=clock, sleep=refuse_to_wait)
    first, second = limits.for_relay("a.example.org:25"), limits.for_relay("b.example.org:25")
    assert limits.for_relay("a.example.org:25") is first
    assert first is not second
    assert await burst(first) == 5
    assert await burst(second) == 5
    assert set(rows(sessions, "a.example.org:25")) == {SECOND}


async def test_unlimited_rates_never_touch_the_database(
    sessions: sessionmaker[Session],
) -> None:
    limiter = SharedRateLimiter(sessions, RELAY, 0, 0, sleep=refuse_to_wait)
    assert await burst(limiter, most=1000) == 1000
    assert rows(sessions) == {}


async def test_a_grant_not_used_in_time_is_dropped(sessions: sessionmaker[Session]) -> None:
    clock = SimClock()
    limiter = SharedRateLimiter(sessions, RELAY, 20, 0, clock=clock, sleep=refuse_to_wait)
    await limiter.acquire()  # takes a grant of 2, uses 1
    assert rows(sessions)[SECOND] == (18.0, START)
    clock.now += GRANT_TTL / 2
    await limiter.acquire()  # the grant's second token: no database round trip
    assert rows(sessions)[SECOND] == (18.0, START)
    await limiter.acquire()  # a new grant
    assert limiter.held == 1
    clock.now += GRANT_TTL
    await limiter.acquire()  # the old grant's token has expired: another grant
    assert limiter.held == 1
    assert rows(sessions)[SECOND] == (18.0, clock.now)  # 18 refilled to 20, less 2


@pytest.mark.parametrize(
    ("tokens", "ahead", "at_once"),
    [
        (1e9, 0.0, 20),  # more than the bucket holds (say the rate was lowered): a full one
        (-1e9, 0.0, 0),  # a debt is not honoured: empty, and refilling
        (1e9, 1e6, 0),  # refilled far in the future: restarted empty, now
        (20.0, 5.0, 20),  # a clock a few seconds ahead: tokens kept, no refill until then
    ],
)
async def test_bad_state_is_repaired_without_a_burst_or_a_stall(
    sessions: sessionmaker[Session], tokens: float, ahead: float, at_once: int
) -> None:
    clock = SimClock()
    await SharedRateLimiter(sessions, RELAY, 20, 0, clock=clock).acquire()  # make the row
    set_row(sessions, SECOND, tokens, START + ahead)
    limiter = SharedRateLimiter(sessions, RELAY, 20, 0, clock=clock, sleep=refuse_to_wait)
    assert await burst(limiter) == at_once
    tokens_now, refilled_at = rows(sessions)[SECOND]
    resumes = START + ahead if ahead <= CLOCK_TOLERANCE else START  # refills from then on
    assert 0.0 <= tokens_now <= 20.0
    assert refilled_at == resumes
    # and it goes on at the rate from there
    limiter = SharedRateLimiter(sessions, RELAY, 20, 0, clock=clock, sleep=clock.sleep)
    times = await round_robin([limiter], clock, resumes + 10)
    assert len(times) <= 20 * (times[-1] - resumes) + 1
    assert len(times) >= 150


# --- real processes, real clocks ---

WORKER = """
import asyncio, json, sys, time
from newsletter.storage import db
from newsletter.storage.ratelimit import SharedRateLimiter

async def main(url: str, relay: str, rate: float, seconds: float) -> None:
    sessions = db.open_database(url, migrate=False)
    limiter = SharedRateLimiter(sessions, relay, rate, 0)
    print("ready", flush=True)
    sys.stdin.readline()  # all three start together
    started = time.time()
    times = []
    while time.time() < started + seconds:
        await limiter.acquire()
        times.append(time.time())
    sessions.kw["bind"].dispose()
    print(json.dumps({"started": started, "times": times}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
"""


def test_three_processes_share_one_quota(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    rate, seconds = 20.0, 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, database_url, RELAY, str(rate), str(seconds)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs)
    times = [t for r in reports for t in r["times"]]
    first = min(r["started"] for r in reports)  # the buckets were made after this
    # Counted against the senders' own clocks: the burst, plus the rate over the time that
    # passed between the first start and the last grant (one token's slack for rounding).
    # Three in-memory limiters would grant about 3 × (20 + 2 × 20) = 180.
    assert 0 < len(times) <= rate + rate * (max(times) - first) + 1
