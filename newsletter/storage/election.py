"""Scheduler election: of the `newsletter serve` processes on one database, one leads.

Only the leader fires the schedules. Two ways to hold the lead, both behind one interface:

- PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) taken and kept on a
  connection of the elector's own. The server frees it when that session ends, so a leader
  that dies (even by SIGKILL, or with its machine, once TCP keepalives give up on it) lets
  a standby in at its next try. The lock's key is derived from the schema the tables live
  in, so sites sharing one database in separate schemas elect separately.
- SQLite (one machine): a row in `scheduler_lease` naming the owner and an expiry that the
  leader renews at every check; another process takes the row once the expiry has passed.

Electors block (they talk to the database), so `schedule.run_elected` calls them from a
thread. Whatever happens here, an issue per (schedule, slot) stays unique in the database:
two leaders at once (a partitioned network, a stalled lease holder) cannot send twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import socket
from typing import Protocol

from sqlalchemy import Connection, Engine, create_engine, delete, insert, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from newsletter.storage import db
from newsletter.storage.models import SchedulerLease, utcnow

LEASE_NAME = "scheduler"
LEASE_FACTOR = 3  # a lease lasts this many check intervals
# The server drops a silent client's session (and so frees its lock) after about
# idle + interval * count seconds, rather than the kernel's default of over two hours.
SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": 10,
    "tcp_keepalives_interval": 5,
    "tcp_keepalives_count": 3,
}


class Elector(Protocol):
    """One process's candidacy. Methods block; none is called concurrently with another."""

    description: str

    def try_acquire(self) -> bool:
        """Become the leader if no one else is; True when this process now leads."""
        ...

    def confirm(self) -> bool:
        """The leader's periodic check: True while it still leads. May raise when the
        database cannot be reached, which means the same as False."""
        ...

    def drop(self) -> None:
        """Forget the lead without asking the database (after a failed check)."""
        ...

    def close(self) -> None:
        """Give up the lead, if held, so a standby can take over at once; free resources."""
        ...


def owner_name() -> str:
    """This process, as it appears in the lease row and in pg_stat_activity."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def for_database(url: str, check_seconds: float) -> Elector:
    """The elector for `url`: an advisory lock on PostgreSQL, a lease row elsewhere."""
    if make_url(url).get_backend_name() == "postgresql":
        return AdvisoryLockElector(url)
    return LeaseElector(url, lease_seconds=check_seconds * LEASE_FACTOR)


def lock_key(schema: str) -> int:
    """A signed 64-bit advisory lock key for the tables in `schema`."""
    digest = hashlib.sha256(f"newsletter scheduler {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLockElector:
    """PostgreSQL: a session-level advisory lock on a dedicated autocommit connection."""

    def __init__(self, url: str, owner: str | None = None) -> None:
        self.owner = owner or owner_name()
        self.engine: Engine = create_engine(
            url,
            poolclass=NullPool,
            connect_args={
                "connect_timeout": 10,
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "application_name": f"newsletter scheduler {self.owner}"[:63],
            },
        )
        self.conn: Connection | None = None
        self.key: int | None = None
        self.description = "PostgreSQL advisory lock"

    def _connect(self) -> Connection:
        if self.conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                for name, value in SERVER_KEEPALIVES.items():
                    conn.execute(text(f"SET {name} = {int(value)}"))
                schema = conn.scalar(text("SELECT current_schema()")) or ""
            except BaseException:
                conn.invalidate()
                conn.close()
                raise
            self.conn, self.key = conn, lock_key(schema)
            self.description = f"PostgreSQL advisory lock {self.key} for schema {schema}"
        return self.conn

    def try_acquire(self) -> bool:
        conn = self._connect()
        try:
            return bool(conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}))
        except BaseException:
            self.drop()
            raise

    def confirm(self) -> bool:
        if self.conn is None:
            return False
        try:
            self.conn.execute(text("SELECT 1"))
        except BaseException:
            self.drop()
            raise
        return True

    def drop(self) -> None:
        # Closing the session is what frees the lock on the server (if it still has it).
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.invalidate()
            conn.close()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.execute(text("SELECT pg_advisory_unlock_all()"))
            finally:
                self.drop()
        self.engine.dispose()


class LeaseElector:
    """Any database, meant for SQLite: a `scheduler_lease` row held until `expires_at`.

    Clocks are compared across processes, which is sound on one machine (SQLite's case).
    """

    def __init__(self, url: str, lease_seconds: float, owner: str | None = None) -> None:
        self.owner = owner or owner_name()
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.engine: Engine = db.make_engine(url)
        self.description = f"lease row {LEASE_NAME!r} in scheduler_lease ({lease_seconds:g} s)"

    def try_acquire(self) -> bool:
        """Take the row if it is ours or has lapsed (renewing it either way)."""
        now = utcnow()
        lease = SchedulerLease
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(lease)
                .where(
                    lease.name == LEASE_NAME,
                    or_(lease.owner == self.owner, lease.expires_at < now),
                )
                .values(owner=self.owner, expires_at=now + self.lease)
            ).rowcount
            if taken:
                return True
            if conn.scalar(select(lease.name).where(lease.name == LEASE_NAME)) is not None:
                return False
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(lease).values(
                        name=LEASE_NAME, owner=self.owner, expires_at=now + self.lease
                    )
                )
        except IntegrityError:
            return False  # another process made the row first
        return True

    def confirm(self) -> bool:
        """Renew the lease; False when another process has taken it over."""
        return self.try_acquire()

    def drop(self) -> None:
        pass  # the row lapses by itself

    def close(self) -> None:
        lease = SchedulerLease
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    delete(lease).where(lease.name == LEASE_NAME, lease.owner == self.owner)
                )
        finally:
            self.engine.dispose()
