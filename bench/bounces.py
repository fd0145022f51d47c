"""Benchmark: DSNs applied per second by `bounces read` and `bounces serve`, against parsing alone.

A generated site (SQLite in a temporary folder) with N members, each with a genuine signed
VERP address. Each row takes fresh DSNs (distinct reports, so none is a duplicate):

  parse only     delivery/dsn.read on each message, in this process (the baseline)
  apply          services/bounces.take in this process: parse, then one transaction each
  serve          `newsletter bounces serve` in its own process; DSNs sent over SMTP on 4
                 connections; timed until every report is stored
  read (pipe)    `newsletter bounces read` started once per DSN, as a Postfix pipe does

Figures move with the machine's load: read the ratios of one run.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from newsletter import config
from newsletter.content.verp import Verp
from newsletter.delivery import dsn
from newsletter.services import bounces, members
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.storage.models import BounceEvent

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-key-0123456789abcdef"
sys.path.insert(0, str(REPO))
from tests import returns  # noqa: E402 - the test suite's DSN writer, shared


def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Site:
    def __init__(self, folder: Path, count: int) -> None:
        self.folder = folder
        shutil.copy(REPO / "config.toml", folder / "config.toml")
        self.port = free_port()
        text = (folder / "config.toml").read_text()
        (folder / "config.toml").write_text(text.replace("port = 8026", f"port = {self.port}"))
        self.env = {
            config.SECRET_ENV: SECRET,
            config.DATABASE_URL_ENV: f"sqlite:///{folder / 'bench.db'}",
        }
        self.settings = config.load(folder / "config.toml", env=self.env)
        self.sessions = db.open_database(self.settings.database_url)
        self.services = Services(self.settings, self.sessions)
        rows = "email,name\n" + "".join(f"m{i}@example.net,Member {i}\n" for i in range(count))
        self.services.run("bench", members.import_members, rows, source="bench")
        self.verp = Verp(self.settings.list.return_path, self.services.signer)
        self.count = count
        self.next = 0

    def dsns(self, n: int) -> list[tuple[str, bytes]]:
        """n DSNs, each for the next member in turn (envelope recipient, message)."""
        out = []
        for _ in range(n):
            member = self.next % self.count + 1
            self.next += 1
            to = self.verp.address(1, member)
            raw = returns.dsn(
                to=to,
                recipient=f"m{member - 1}@example.net",
                report_id=f"<{secrets.token_hex(8)}@bench.example.net>",
            )
            out.append((to, raw))
        return out

    def stored(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(BounceEvent)) or 0)


def timed(label: str, n: int, work: Callable[[], None]) -> tuple[str, int, float]:
    start = time.perf_counter()
    work()
    return label, n, time.perf_counter() - start


def parse_only(site: Site, n: int) -> tuple[str, int, float]:
    batch = site.dsns(n)

    def work() -> None:
        for to, raw in batch:
            dsn.read(raw, (to,))

    return timed("parse only", n, work)


def apply(site: Site, n: int) -> tuple[str, int, float]:
    batch = site.dsns(n)

    def work() -> None:
        for to, raw in batch:
            bounces.take(site.services, raw, source="bench", envelope_to=(to,))

    return timed("apply (in process)", n, work)


def serve(site: Site, n: int, connections: int = 4) -> tuple[str, int, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")} | site.env
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "bounces", "serve"],
        cwd=site.folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", site.port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("bounces serve did not start") from None
                time.sleep(0.1)
        batch = site.dsns(n)
        before = site.stored()

        def send(part: list[tuple[str, bytes]]) -> None:
            with smtplib.SMTP("127.0.0.1", site.port, timeout=60) as client:
                for to, raw in part:
                    client.sendmail("", [to], raw.replace(b"\n", b"\r\n"))

        def work() -> None:
            threads = [
                threading.Thread(target=send, args=(batch[i::connections],))
                for i in range(connections)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            while site.stored() < before + n:
                time.sleep(0.01)

        return timed(f"serve (SMTP, {connections} connections)", n, work)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def read(site: Site, n: int) -> tuple[str, int, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")} | site.env
    batch = site.dsns(n)

    def work() -> None:
        for to, raw in batch:
            subprocess.run(
                [sys.executable, "-m", "newsletter", "bounces", "read", "-r", to],
                cwd=site.folder,
                env=env,
                input=raw,
                capture_output=True,
                check=True,
            )

    return timed("read (a process per DSN)", n, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5000, help="members (default 5,000)")
    parser.add_argument("--dsns", type=int, default=2000, help="DSNs per row (default 2,000)")
    parser.add_argument(
        "--reads", type=int, default=40, help="DSNs through `bounces read` (default 40)"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-bounces-"))
    try:
        site = Site(folder, args.members)
        say(
            f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; SQLite; "
            f"{args.members:,} members"
        )
        rows = [
            parse_only(site, args.dsns),
            apply(site, args.dsns),
            serve(site, args.dsns),
            read(site, args.reads),
        ]
        base = rows[0][1] / rows[0][2]
        say(f"{'':<34}{'DSNs':>8}{'seconds':>10}{'DSNs/s':>10}{'x parse':>10}")
        for label, n, seconds in rows:
            rate = n / seconds
            shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"
            say(f"{label:<34}{n:>8,}{seconds:>10.2f}{shown:>10}{rate / base:>10.3f}")
        say(f"stored events: {site.stored():,}; load average at the end {os.getloadavg()[0]:.2f}")
        site.sessions.kw["bind"].dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
