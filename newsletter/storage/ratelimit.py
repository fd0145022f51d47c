"""Rate limits shared by every sender process through the database, per relay.

Token buckets kept in one process's memory would let N senders send N times a relay's
quota together. SharedRateLimiter keeps them in the `rate_buckets` table instead:
one row per relay and period ("second", "hour"), which every process updates under a row
lock. To keep the database out of the way of each message, a process takes a small grant
of tokens per transaction (a tenth of what its slowest bucket refills in a second, at
least 1) and hands them out locally; a grant not used within GRANT_TTL seconds is
dropped, never returned.

The guarantees, for any processes sharing one database and any interval of T seconds:
  - per second (rate R): at most max(R, 1) + R × T messages, plus the grants already held
    when the interval begins (at most a tenth of a second's quota per process);
  - per hour (quota Q): at most Q in any 3600 seconds (for Q of 2 or more). The hourly
    bucket holds one minute's share (Q / 60) and refills the rest of Q over the hour.

Time is the database server's clock on PostgreSQL (senders on several machines then need
no synchronised clocks) and the local wall clock on SQLite (whose senders share a machine).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Double, Table, bindparam, extract, func, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from newsletter.storage.models import RateBucket

R = cast(Table, RateBucket.__table__)

# A grant is a tenth of the slowest bucket's refill per second (at least one token).
GRANT_FRACTION = 0.1
# Tokens of a grant not handed out within this many seconds are dropped: a process never
# sends on tokens taken longer ago, which is what keeps the hourly bound exact.
GRANT_TTL = 1.0
# A bucket refilled "in the future" by more than this is taken for bad state (a corrupted
# row, a clock set far back) and restarted empty; a smaller lead just waits for the clock.
CLOCK_TOLERANCE = 60.0
# Float refills land a hair short of a whole token.
EPSILON = 1e-9

SECOND, HOUR = "second", "hour"


@dataclass(frozen=True, slots=True)
class Bucket:
    period: str  # "second" or "hour": the row's key beside the relay
    capacity: float  # the most tokens it holds (its burst)
    rate: float  # tokens added per second


def buckets_for(per_second: float, per_hour: int) -> list[Bucket]:
    """The buckets that enforce these rates (0 means no limit, and no bucket)."""
    out: list[Bucket] = []
    if per_second > 0:
        out.append(Bucket(SECOND, max(per_second, 1.0), per_second))
    if per_hour > 0:
        burst = max(per_hour / 60.0, 1.0)
        # What is left of the quota after the burst, spread over the hour (and the grant
        # lifetime), so that burst + refill within any hour stays within the quota. A quota
        # of one message an hour cannot be split and refills at the plain rate.
        rest = per_hour - burst if per_hour > burst else per_hour
        out.append(Bucket(HOUR, burst, rest / (3600.0 + GRANT_TTL)))
    return out


def refill(bucket: Bucket, tokens: float, refilled_at: float, now: float) -> tuple[float, float]:
    """The bucket's (tokens, refilled_at) at `now`, from a stored row that may be bad."""
    if not math.isfinite(tokens) or tokens < 0:
        tokens = 0.0
    tokens = min(tokens, bucket.capacity)
    if not math.isfinite(refilled_at) or refilled_at > now + CLOCK_TOLERANCE:
        return 0.0, now
    if refilled_at >= now:  # another sender's clock ran a little ahead: no refill yet
        return tokens, refilled_at
    return min(bucket.capacity, tokens + (now - refilled_at) * bucket.rate), now


def grant_size(buckets: list[Bucket]) -> int:
    """Tokens taken per transaction: a tenth of the slowest refill per second, at least 1."""
    if not buckets:
        return 0
    size = max(1, math.floor(GRANT_FRACTION * min(b.rate for b in buckets)))
    return min(size, *(math.floor(b.capacity) for b in buckets))


class SharedRateLimiter:
    """Token buckets for one relay's messages per second and per hour, kept in the database.

    `await acquire()` returns when one message may
    go to the relay. Every instance (in any process) with the same relay name draws on the
    same buckets. `clock` (seconds, shared by every instance) and `sleep` are for tests;
    without a clock the database's time is used on PostgreSQL and time.time() on SQLite.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        relay: str,
        per_second: float,
        per_hour: int,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sessions = sessions
        self.relay = relay
        self.buckets = buckets_for(per_second, per_hour)
        self.grant = grant_size(self.buckets)
        self.clock, self.sleep = clock, sleep
        self.local_clock = clock or time.monotonic  # times this process's grants
        self.held = 0  # tokens of the current grant not yet handed out
        self.held_until = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if not self.buckets:
            return
        async with self._lock:
            while True:
                asked = self.local_clock()
                if self.held > 0 and asked < self.held_until:
                    self.held -= 1
                    return
                self.held = 0
                granted, wait = await asyncio.to_thread(self.take, self.grant)
                if granted:
                    self.held, self.held_until = granted, asked + GRANT_TTL
                    continue
                await self.sleep(wait)

    def take(self, want: int) -> tuple[int, float]:
        """Take `want` tokens from every bucket at once: (want, 0.0), or (0, seconds to wait).

        One short transaction holding the relay's rows locked: SELECT … FOR UPDATE on
        PostgreSQL, BEGIN IMMEDIATE (the database's write lock) on SQLite.
        """
        with self.sessions() as session:
            conn = session.connection()
            is_sqlite = conn.dialect.name == "sqlite"
            if is_sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                # No wait for the WAL flush: a crash of the database server may forget the
                # last fraction of a second's grants, a small one-off excess; waiting for
                # the disk would cost milliseconds a grant.
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            rows, now = self._lock_rows(conn, is_sqlite)
            if len(rows) < len(self.buckets):
                self._create(conn, rows, now, is_sqlite)
                rows, now = self._lock_rows(conn, is_sqlite)
            state = {b.period: refill(b, *rows[b.period], now) for b in self.buckets}
            wait = 0.0  # until every bucket holds `want`: grants are whole or nothing
            for b in self.buckets:
                tokens, refilled_at = state[b.period]
                if tokens < want - EPSILON:
                    ahead = max(refilled_at - now, 0.0)  # a clock ahead of ours
                    wait = max(wait, ahead + (want - tokens) / b.rate)
            granted = 0 if wait > 0 else want
            conn.execute(
                update(R)
                .where(R.c.relay == bindparam("b_relay"), R.c.period == bindparam("b_period"))
                .values(tokens=bindparam("b_tokens"), refilled_at=bindparam("b_at")),
                [
                    {
                        "b_relay": self.relay,
                        "b_period": period,
                        "b_tokens": max(tokens - granted, 0.0),
                        "b_at": at,
                    }
                    for period, (tokens, at) in state.items()
                ],
            )
            session.commit()
        return granted, wait

    def _now_sql(self, is_sqlite: bool) -> Any:
        """The database's clock as seconds since the epoch, or None to use Python's."""
        if self.clock is not None or is_sqlite:
            return None
        return sql_cast(extract("epoch", func.clock_timestamp()), Double)

    def _lock_rows(
        self, conn: Connection, is_sqlite: bool
    ) -> tuple[dict[str, tuple[float, float]], float]:
        db_now = self._now_sql(is_sqlite)
        columns = [R.c.period, R.c.tokens, R.c.refilled_at]
        query = select(*columns, *([db_now] if db_now is not None else [])).where(
            R.c.relay == self.relay, R.c.period.in_([b.period for b in self.buckets])
        )
        if not is_sqlite:
            query = query.order_by(R.c.period).with_for_update()
        result = conn.execute(query).all()
        rows = {r[0]: (float(r[1]), float(r[2])) for r in result}
        if db_now is not None and result:  # read with the rows; if early, it refills less
            return rows, float(result[0][3])
        return rows, self._now(conn, is_sqlite)

    def _now(self, conn: Connection, is_sqlite: bool) -> float:
        if self.clock is not None:
            return self.clock()
        if is_sqlite:
            return time.time()
        db_now = self._now_sql(is_sqlite)
        return float(conn.execute(select(db_now)).scalar_one())

    def _create(self, conn: Connection, rows: dict[str, Any], now: float, is_sqlite: bool) -> None:
        """Start missing buckets full (a second's quota, a minute's share of the hour's)."""
        values = [
            {"relay": self.relay, "period": b.period, "tokens": b.capacity, "refilled_at": now}
            for b in self.buckets
            if b.period not in rows
        ]
        insert = sqlite.insert(R) if is_sqlite else postgresql.insert(R)
        conn.execute(insert.values(values).on_conflict_do_nothing())


class SharedRateLimits:
    """One SharedRateLimiter per relay name, made on first use, all with the same rates."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        per_second: float,
        per_hour: int,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sessions = sessions
        self.per_second, self.per_hour = per_second, per_hour
        self.clock, self.sleep = clock, sleep
        self.limiters: dict[str, SharedRateLimiter] = {}

    @property
    def active(self) -> bool:
        """Whether any limit is set; with none, acquiring is a no-op."""
        return self.per_second > 0 or self.per_hour > 0

    def for_relay(self, relay: str) -> SharedRateLimiter:
        limiter = self.limiters.get(relay)
        if limiter is None:
            limiter = self.limiters[relay] = SharedRateLimiter(
                self.sessions,
                relay,
                self.per_second,
                self.per_hour,
                clock=self.clock,
                sleep=self.sleep,
            )
        return limiter
