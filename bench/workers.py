"""Benchmark: 1, 2 and 4 `newsletter worker` processes on one issue, on PostgreSQL, one sink.

For each worker count the same prepared database is cloned (CREATE DATABASE … TEMPLATE),
the issue released, and N `newsletter worker --once` processes started together; the run
ends when the last one exits. Printed per count: messages per second (wall time from the
start of the processes to the exit of the last, process start-up included), the ratio to
1 worker, and the database's time per message from PostgreSQL's own counters for that
database (pg_stat_database: time spent executing statements, time transactions stayed open
waiting on the client, commits) and the CPU of the server processes that served the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

# bench/ is the script's folder, so its sibling is importable: one copy of the shared helpers.
from deliver import (
    FEED,
    POSTFIX_SINK,
    REPO,
    Sink,
    child_env,
    load_settings,
    machine_busy,
    member_rows,
    process_cpu,
    running_sink,
    set_key,
)
from sqlalchemy import insert

from newsletter import config
from newsletter.services import issues, items
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.storage.models import Member

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
CHUNK = 10_000


def say(text: str) -> None:
    print(text, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--members", type=int, default=30_000, help="members of the issue (default 30,000)")
    add("--workers", default="1,2,4", help="comma-separated worker counts (default 1,2,4)")
    add("--connections", type=int, default=4, help="SMTP connections per worker (default 4)")
    add("--in-flight", type=int, default=200, help="delivery.in_flight per worker (default 200)")
    add("--sink", choices=["postfix", "bundled"], default=None, help="default: postfix if present")
    add("--dsn", default=PG_DSN, help=f"libpq DSN for CREATE/DROP DATABASE (default: {PG_DSN})")
    add("--timeout", type=float, default=1800.0, help="seconds before the workers are killed")
    add("--keep", action="store_true", help="keep the databases and the temporary folder")
    args = parser.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",") if n.strip()]
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers needs counts of at least 1")
    if args.sink is None:
        args.sink = "postfix" if POSTFIX_SINK.exists() else "bundled"
    return args


# --- PostgreSQL ---------------------------------------------------------------------------------


def sqlalchemy_url(dsn: str, database: str) -> str:
    """A postgresql+psycopg URL for `database` on the server `dsn` names."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    user = info.get("user") or "postgres"
    password = f":{info['password']}" if info.get("password") else ""
    host, port = info.get("host") or "127.0.0.1", info.get("port") or "5432"
    return f"postgresql+psycopg://{user}{password}@{host}:{port}/{database}"


class Server:
    """The maintenance connection: databases made and dropped, statistics read."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        row = self.conn.execute("SHOW server_version_num").fetchone()
        self.version = int(row[0]) if row else 0
        self.made: list[str] = []

    def create(self, name: str, template: str | None = None) -> None:
        clause = f' TEMPLATE "{template}"' if template else ""
        self.conn.execute(f'CREATE DATABASE "{name}"{clause}')
        self.made.append(name)

    def drop(self, name: str) -> None:
        self.conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def backends(self, name: str) -> dict[int, str]:
        rows = self.conn.execute(
            "SELECT pid, coalesce(application_name, '') FROM pg_stat_activity WHERE datname = %s",
            (name,),
        ).fetchall()
        return dict(rows)

    def quiet(self, name: str, timeout: float = 30.0) -> None:
        """Wait until no session is connected to `name`: their statistics are then flushed."""
        deadline = time.monotonic() + timeout
        while self.backends(name):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sessions still connected to {name} after {timeout:.0f} s")
            time.sleep(0.05)

    def counters(self, name: str) -> DbCounters:
        if self.version < 140000:
            row = self.conn.execute(
                "SELECT 0, 0, xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
            ).fetchone()
        else:
            row = self.conn.execute(
                "SELECT active_time, idle_in_transaction_time, xact_commit"
                " FROM pg_stat_database WHERE datname = %s",
                (name,),
            ).fetchone()
        assert row is not None
        return DbCounters(float(row[0]) / 1000, float(row[1]) / 1000, int(row[2]))

    def count_sent(self, name: str, dsn: str) -> dict[str, int]:
        with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, dbname=name)) as conn:
            rows = conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status")
            return {str(s): int(n) for s, n in rows.fetchall()}

    def close(self) -> None:
        self.conn.close()


@dataclass
class DbCounters:
    active: float  # seconds spent executing statements in the database
    idle_in_xact: float  # seconds transactions stayed open while the client worked
    commits: int

    def __sub__(self, other: DbCounters) -> DbCounters:
        return DbCounters(
            self.active - other.active,
            self.idle_in_xact - other.idle_in_xact,
            self.commits - other.commits,
        )


class BackendCpu:
    """CPU-seconds of the server processes serving one database, sampled while they live."""

    def __init__(self, server: Server, database: str) -> None:
        self.server, self.database = server, database
        self.seen: dict[int, float] = {}

    def sample(self) -> None:
        for pid in self.server.backends(self.database):
            with contextlib.suppress(OSError, ValueError):
                self.seen[pid] = process_cpu(pid)

    @property
    def total(self) -> float:
        return sum(self.seen.values())


# --- the prepared database and the sites --------------------------------------------------------


def prepare_template(server: Server, name: str, dsn: str, members: int) -> None:
    """A migrated database with `members` active members and the seed feed's items."""
    server.create(name)
    sessions = db.open_database(sqlalchemy_url(dsn, name))
    engine = sessions.kw["bind"]
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with engine.begin() as conn:
        for start in range(0, members, CHUNK):
            conn.execute(insert(Member), member_rows(start, min(start + CHUNK, members), now))
    # The sample site's settings: the import needs none of its own.
    sample = config.load(FEED.parent.parent / "config.toml", env={config.SECRET_ENV: "b" * 32})
    items.import_source(Services(sample, sessions), str(FEED), actor="bench")
    engine.dispose()
    server.quiet(name)


def make_site(folder: Path, url: str, args: argparse.Namespace, port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "examples", folder / "examples", dirs_exist_ok=True)
    toml = (REPO / "config.toml").read_text(encoding="utf-8")
    toml = set_key(toml, "database", "url", f'"{url}"')
    toml = set_key(toml, "smtp", "port", str(port))
    toml = set_key(toml, "smtp", "connections", str(args.connections))
    toml = set_key(toml, "delivery", "in_flight", str(args.in_flight))
    toml = set_key(toml, "delivery", "linger_seconds", "0")
    path = folder / "config.toml"
    path.write_text(toml, encoding="utf-8")
    load_settings(path)  # fail here, not in the workers, on a bad override
    return path


# --- one run ------------------------------------------------------------------------------------


@dataclass
class Result:
    workers: int
    members: int
    sent: int
    wall: float
    codes: list[int]
    db: DbCounters
    backend_cpu: float
    worker_cpu: float
    sink_cpu: float
    machine_cpu: float

    @property
    def rate(self) -> float:
        return self.sent / self.wall if self.wall else 0.0

    def per_message_ms(self, seconds: float) -> float:
        return seconds / self.sent * 1000 if self.sent else 0.0


def run_workers(
    server: Server, template: str, args: argparse.Namespace, sink: Sink, work: Path, n: int
) -> Result:
    name = f"{template.removesuffix('_tpl')}_w{n}"
    server.create(name, template)
    url = sqlalchemy_url(args.dsn, name)
    folder = work / f"workers-{n}"
    site_config = make_site(folder, url, args, sink.port)
    settings = load_settings(site_config)
    sessions = db.open_database(settings.database_url)
    released = Services(settings, sessions).run("bench", issues.release_next)
    sessions.kw["bind"].dispose()
    server.quiet(name)
    before = server.counters(name)
    cpu = BackendCpu(server, name)

    command = [sys.executable, "-m", "newsletter", "--config", str(site_config)]
    command += ["worker", "--once", "--quiet"]
    logs = [folder / f"worker-{i}.log" for i in range(n)]
    busy, sink_cpu = machine_busy(), process_cpu(sink.pid)
    started = time.perf_counter()
    procs = []
    for log in logs:
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    command, cwd=folder, env=child_env(), stdout=out, stderr=subprocess.STDOUT
                )
            )
    worker_cpu, wall = 0.0, 0.0
    deadline = time.monotonic() + args.timeout
    while any(p.returncode is None for p in procs):
        cpu.sample()
        for p in procs:
            if p.returncode is not None:
                continue
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                worker_cpu += usage.ru_utime + usage.ru_stime
                wall = time.perf_counter() - started
            elif time.monotonic() > deadline:
                p.kill()
        time.sleep(0.05)
    sink_cpu = process_cpu(sink.pid) - sink_cpu
    machine = machine_busy() - busy
    server.quiet(name)
    spent = server.counters(name) - before
    counts = server.count_sent(name, args.dsn)
    codes = [p.returncode for p in procs]
    for log, code in zip(logs, codes, strict=True):
        if code:
            say(f"  {log.name} exited {code}:\n{log.read_text(errors='replace')[-2000:]}")
    result = Result(
        n,
        released.queued,
        counts.get("sent", 0),
        wall,
        codes,
        spent,
        cpu.total,
        worker_cpu,
        sink_cpu,
        machine,
    )
    say(
        f"  {n} worker(s): {result.sent:,}/{result.members:,} sent in {wall:.1f} s = "
        f"{result.rate:,.0f} msg/s; {counts}; exit codes {result.codes}; CPU s: workers "
        f"{worker_cpu:.1f}, their PostgreSQL backends {cpu.total:.1f}, sink {sink_cpu:.1f}, "
        f"whole machine {machine:.1f}; PostgreSQL: {spent.active:.2f} s executing, "
        f"{spent.idle_in_xact:.2f} s idle in transaction, {spent.commits:,} commits"
    )
    if not args.keep:
        server.drop(name)
        shutil.rmtree(folder)
    return result


# --- the whole benchmark ------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def report(results: list[Result], server_version: int) -> None:
    base = next((r.rate for r in results if r.workers == 1), 0.0)
    header = (
        "workers",
        "sent",
        "wall s",
        "msg/s",
        "× 1 worker",
        "DB exec ms/msg",
        "DB idle-in-xact ms/msg",
        "commits/msg",
        "DB backend CPU ms/msg",
        "worker CPU ms/msg",
    )
    rows = [header]
    for r in results:
        exec_ms = r.per_message_ms(r.db.active) if server_version >= 140000 else float("nan")
        idle_ms = r.per_message_ms(r.db.idle_in_xact) if server_version >= 140000 else float("nan")
        rows.append(
            (
                str(r.workers),
                f"{r.sent:,}",
                f"{r.wall:.1f}",
                f"{r.rate:,.0f}",
                f"{r.rate / base:.2f}" if base else "-",
                f"{exec_ms:.3f}",
                f"{idle_ms:.3f}",
                f"{r.db.commits / r.sent:.3f}" if r.sent else "-",
                f"{r.per_message_ms(r.backend_cpu):.3f}",
                f"{r.per_message_ms(r.worker_cpu):.3f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print()
    for n, row in enumerate(rows):
        print(" | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


@contextlib.contextmanager
def databases(server: Server, keep: bool) -> Iterator[None]:
    try:
        yield
    finally:
        if not keep:
            for name in reversed(server.made):
                with contextlib.suppress(psycopg.Error):
                    server.drop(name)
        server.close()


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    server = Server(args.dsn)
    template = f"nl_bench_{uuid.uuid4().hex[:8]}_tpl"
    say(
        f"{os.cpu_count()} CPUs ({cpu_model()}); PostgreSQL {server.version // 10000}."
        f"{server.version % 10000}; {args.sink} sink; {args.members:,} members; "
        f"{args.connections} SMTP connections and in_flight {args.in_flight} per worker; "
        f"work folder {work}"
    )
    results: list[Result] = []
    try:
        with databases(server, args.keep):
            started = time.perf_counter()
            prepare_template(server, template, args.dsn, args.members)
            say(f"  prepared {args.members:,} members in {time.perf_counter() - started:.1f} s")
            sink_site = make_site(work / "sink", f"sqlite:///{work / 'sink.db'}", args, 25)
            with running_sink(args.sink, sink_site, work / "sink.log") as sink:
                for n in args.workers:
                    results.append(run_workers(server, template, args, sink, work, n))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        report(results, server.version)


if __name__ == "__main__":
    main()
