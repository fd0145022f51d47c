"""Benchmark: member pages under a burst of clicks (`newsletter serve`), against a bare Starlette endpoint.

One run, per database (SQLite, PostgreSQL): a site made with the CLI as a user would
(`newsletter init`, N members imported from CSV, the sample feed, one issue sent into a
discarding sink), then `newsletter serve --no-scheduler`, then each member endpoint loaded
by bench/httpload.py (a separate process, keep-alive, 50 connections, a warm-up and a timed
window), every request from the next member with a link signed as the mail signs it. The
bare endpoint (a 3 KB page from Starlette under the same uvicorn settings as serve) is
measured before the first database, between databases and after the last: each table's
ratios use the mean of the bare runs on either side of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import ctypes
import functools
import http.client
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from newsletter.tokens import Kind, Signer

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_RATIO, TARGET_P99_MS = 0.3, 50.0
# The bare page: about the size of the member pages (the vote page is 2.4 KB, the
# unsubscribe page 1 KB, an archived issue 16 KB).
BARE_PAGE = (
    "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Bare</title></head><body>"
    + "<p>A paragraph of text that stands in for a member page.</p>\n" * 50
    + "</body></html>\n"
)[:3072]


def say(text: str) -> None:
    print(text, flush=True)


# --- the endpoints ------------------------------------------------------------------------------


@dataclass
class Ids:
    """What the links are built from, read from the database after the send."""

    issue_id: int
    survey_id: int
    options: list[int]
    members: list[int]
    sent: int


# One request: (path, body), or (path, body, headers of its own), e.g. a member's cookie.
Item = tuple[str, str] | tuple[str, str, dict[str, str]]


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    what: str  # the path, as shown in the table
    expect: frozenset[int]
    # The request for the i-th member of the rotation.
    make: Callable[[Signer, Ids, int], Item]
    form: bool = False

    def items(self, signer: Signer, ids: Ids) -> list[Item]:
        return [self.make(signer, ids, i) for i in range(len(ids.members))]


def _vote_token(signer: Signer, ids: Ids, i: int) -> tuple[str, int]:
    option = ids.options[i % len(ids.options)]
    return signer.make(Kind.VOTE, ids.survey_id, ids.members[i], option), option


def _vote_get(signer: Signer, ids: Ids, i: int) -> tuple[str, str]:
    token, _ = _vote_token(signer, ids, i)
    return f"/v/{token}", ""


def _vote_post(signer: Signer, ids: Ids, i: int) -> tuple[str, str]:
    token, option = _vote_token(signer, ids, i)
    return f"/v/{token}", f"option={option}&person=1"


def _unsubscribe(signer: Signer, ids: Ids, i: int) -> str:
    return f"/u/{signer.make(Kind.UNSUBSCRIBE, ids.members[i], ids.issue_id)}"


def _archived(signer: Signer, ids: Ids, i: int) -> tuple[str, str]:
    token = signer.make(Kind.VIEW, ids.issue_id, ids.members[i])
    return f"/archive/{ids.issue_id}?t={token}", ""


def _click(signer: Signer, ids: Ids, i: int) -> Item:
    return f"/r/{signer.make(Kind.CLICK, ids.issue_id, ids.members[i], i % 3)}", ""


def _fixed(path: str) -> Callable[[Signer, Ids, int], Item]:
    return lambda _s, _ids, _i: (path, "")


def _signed_in(signer: Signer, ids: Ids, i: int) -> tuple[dict[str, str], str]:
    """The i-th member's session cookie, as signing in sets it, and their forms' CSRF token."""
    member = ids.members[i]
    cookie = signer.make(Kind.SESSION, member, 0, member)  # generation 0, session number
    return {"Cookie": f"member_session={cookie}"}, signer.make(Kind.FORM, member, member)


def _board(signer: Signer, ids: Ids, i: int) -> Item:
    headers, _ = _signed_in(signer, ids, i)
    return "/board", "", headers


def _post(signer: Signer, ids: Ids, i: int) -> Item:
    headers, csrf = _signed_in(signer, ids, i)
    body = f"Member {ids.members[i]} asks: has anyone pledged a patent as collateral?"
    return "/board", urllib.parse.urlencode({"csrf": csrf, "body": body}), headers


OK = frozenset({200})
# In the order they run. The one-click POST unsubscribes the members it names, so it runs
# last: every other endpoint sees the members as the send left them (all active).
ENDPOINTS = [
    Endpoint("vote", "GET", "/v/<vote token>", OK, _vote_get),
    # A POST may answer with the page (200) or redirect to it (303, POST/redirect/GET).
    Endpoint("vote-post", "POST", "/v/<vote token> option&person=1", OK | {303}, _vote_post, True),
    Endpoint(
        "unsubscribe",
        "GET",
        "/u/<unsubscribe token>",
        OK,
        lambda s, d, i: (_unsubscribe(s, d, i), ""),
    ),
    Endpoint(
        "confirm",
        "GET",
        "/c/<confirm token>",
        OK,
        lambda s, d, i: (f"/c/{s.make(Kind.CONFIRM, d.members[i])}", ""),
    ),
    Endpoint("archive", "GET", "/archive", OK, _fixed("/archive")),
    Endpoint("archive-issue", "GET", "/archive/<id>?t=<view token>", OK, _archived),
    Endpoint("search", "GET", "/search?q=patent", OK, _fixed("/search?q=patent")),
    Endpoint("home", "GET", "/", OK, _fixed("/")),
    # The board as a signed-in member reads it (the session checked, the page filled in).
    Endpoint("board", "GET", "/board (signed in)", OK, _board),
    # A new thread: a new member's first post, held for approval; answered by a redirect.
    Endpoint("post", "POST", "/board body&csrf (signed in)", frozenset({303}), _post, True),
    # An item's link: a redirect (302) to the issue's own link, the fetch held as evidence.
    Endpoint("redirect", "GET", "/r/<click token>", frozenset({302}), _click),
    Endpoint(
        "one-click",
        "POST",
        "/u/<unsubscribe token> (RFC 8058)",
        OK | {202, 204},
        lambda s, d, i: (_unsubscribe(s, d, i), "List-Unsubscribe=One-Click"),
        True,
    ),
]
BY_NAME = {e.name: e for e in ENDPOINTS}


# --- processes ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the benchmark dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def newsletter_command() -> list[str]:
    """The `newsletter` script of this virtualenv, as a user runs it."""
    script = Path(sys.executable).with_name("newsletter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "newsletter"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s (log: {log})")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (uvicorn and the sink shut down cleanly on it), then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def running(command: list[str], port: int, log: Path, env: dict[str, str]) -> Iterator[int]:
    """A server process, listening on `port`, stopped on the way out; yields its pid."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )
    try:
        wait_for_port(port, proc, log, timeout=60)
        yield proc.pid
    finally:
        stop(proc)


# --- sites --------------------------------------------------------------------------------------


def set_keys(toml: str, values: dict[tuple[str, str], str]) -> str:
    """Replace `key = ...` in [section] for each ((section, key), value); every key must exist."""
    for (section, key), value in values.items():
        header = re.search(rf"^\[{re.escape(section)}\]\s*$", toml, re.M)
        if header is None:
            raise KeyError(f"config.toml has no [{section}]")
        nxt = re.compile(r"^\[", re.M).search(toml, header.end())
        stop_at = nxt.start() if nxt else len(toml)
        # A plain-string replacement would read backslashes in the value as escapes.
        body, n = re.subn(
            rf"^{re.escape(key)}\s*=.*$",
            functools.partial(_constant, f"{key} = {value}"),
            toml[header.end() : stop_at],
            count=1,
            flags=re.M,
        )
        if not n:
            raise KeyError(f"config.toml has no {section}.{key}")
        toml = toml[: header.end()] + body + toml[stop_at:]
    return toml


def _constant(text: str, _match: re.Match[str]) -> str:
    return text


class Site:
    """One generated site folder and the CLI run on it."""

    def __init__(self, folder: Path, database_url: str, secret: str) -> None:
        self.folder, self.database_url = folder, database_url
        self.config = folder / "config.toml"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        self.env["NEWSLETTER_SECRET_KEY"] = secret

    def cli(self, *args: str, timeout: float = 900) -> str:
        command = [*newsletter_command(), "--config", str(self.config), *args]
        done = subprocess.run(
            command,
            cwd=self.folder,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_die_with_parent,
        )
        if done.returncode:
            raise RuntimeError(
                f"`newsletter {' '.join(args)}` exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout

    def prepare(self, members: int, web_port: int) -> Ids:
        """init, the database, N members, the sample feed, one issue sent into a discarding sink."""
        started = time.perf_counter()
        subprocess.run(
            [*newsletter_command(), "init", str(self.folder), "--sample"],
            check=True,
            capture_output=True,
            timeout=120,
            env=self.env,
            preexec_fn=_die_with_parent,
        )
        sink_port = free_port()
        toml = set_keys(
            self.config.read_text(encoding="utf-8"),
            {
                ("list", "base_url"): f'"http://{HOST}:{web_port}"',
                ("database", "url"): json.dumps(self.database_url),
                ("smtp", "port"): str(sink_port),
                # Exit as soon as every message has an outcome (nothing is deferred here).
                ("delivery", "linger_seconds"): "0",
                # Every request comes from this one address: its posts are not to be limited.
                ("board", "posts_per_ip_hour"): "10000000",
            },
        )
        self.config.write_text(toml, encoding="utf-8")
        self.cli("db", "upgrade")
        roster = self.folder / "members.csv"
        with roster.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["email", "name", "status"])
            for i in range(members):
                writer.writerow([f"member{i}@example.org", f"Member {i}", "active"])
        self.cli("subscribers", "import", str(roster))
        self.cli("items", "import", str(self.folder / "examples" / "seed-feed.xml"))
        sink = [*newsletter_command(), "--config", str(self.config), "smtp-sink", "--discard"]
        sink += ["--host", HOST, "--port", str(sink_port)]
        with running(sink, sink_port, self.folder / "sink.log", self.env):
            self.cli("send", timeout=1800)
        ids = read_ids(self.database_url)
        self.seed_board(ids)
        say(
            f"  {self.folder.name}: {len(ids.members):,} members, issue #{ids.issue_id} sent to "
            f"{ids.sent:,}, survey #{ids.survey_id} options {ids.options}, "
            f"in {time.perf_counter() - started:.0f} s"
        )
        if ids.sent != members or len(ids.members) != members:
            raise RuntimeError(f"expected {members:,} active members with a sent delivery")
        return ids

    def seed_board(self, ids: Ids, threads: int = 20, replies: int = 3) -> None:
        """Threads with replies on the board (one page's worth), posted by members and
        approved by an editor through the service layer, as the site's pages do."""
        from newsletter import config
        from newsletter.services import board, moderation
        from newsletter.services.unit import Services
        from newsletter.storage import db

        settings = config.load(self.config, env=self.env)
        sessions = db.open_database(settings.database_url)
        services = Services(settings, sessions)
        # Members from the end of the rotation, but not the last, whose post is the one made
        # before the timed window: the posts measured are new members' (held) at first.
        authors = iter(ids.members[-threads * (replies + 1) - 1 : -1])
        try:
            for t in range(threads):
                services.run("bench", board.post, next(authors), 0, f"Thread {t}: **patents**")
                thread = services.read(moderation.queue).waiting[0].id
                services.run("bench", moderation.approve, thread)
                for r in range(replies):
                    member = next(authors)
                    services.run("bench", board.post, member, 0, f"Reply {r}", parent_id=thread)
                    waiting = services.read(moderation.queue).waiting[0].id
                    services.run("bench", moderation.approve, waiting)
        finally:
            sessions.kw["bind"].dispose()

    def serve(self, port: int) -> contextlib.AbstractContextManager[int]:
        command = [*newsletter_command(), "--config", str(self.config)]
        command += ["serve", "--no-scheduler", "--port", str(port)]
        return running(command, port, self.folder / "serve.log", self.env)


def read_ids(url: str) -> Ids:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT id, survey_id FROM issues WHERE status IN ('sent', 'sending')"
                    " ORDER BY id DESC LIMIT 1"
                )
            ).one()
            issue_id, survey_id = int(row[0]), int(row[1])
            options = conn.scalars(
                text("SELECT position FROM survey_options WHERE survey_id = :s ORDER BY position"),
                {"s": survey_id},
            ).all()
            members = conn.scalars(
                text("SELECT id FROM members WHERE status = 'active' ORDER BY id")
            ).all()
            sent = conn.scalar(
                text("SELECT count(*) FROM deliveries WHERE issue_id = :i AND status = 'sent'"),
                {"i": issue_id},
            )
    finally:
        engine.dispose()
    return Ids(issue_id, survey_id, [int(o) for o in options], [int(m) for m in members], sent or 0)


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A new schema in PostgreSQL and a URL whose search_path is it; dropped on the way out."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(base_url)
    conninfo = psycopg.conninfo.make_conninfo(
        host=u.host or HOST,
        port=str(u.port or 5432),
        user=u.username or "postgres",
        password=u.password or None,
        dbname=u.database or "postgres",
        connect_timeout="10",
    )
    schema = f"bench_web_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base_url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_version(base_url: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(base_url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            return str(conn.scalar(text("SHOW server_version"))).split()[0]
    finally:
        engine.dispose()


# --- the bare endpoint --------------------------------------------------------------------------


def serve_bare(port: int) -> None:
    """A Starlette endpoint returning a 3 KB page, under uvicorn exactly as `newsletter serve`
    runs it (newsletter/cli/main.py): the same host, uvicorn.Config defaults (http "auto"),
    log_level "info" with its access log, root logging at INFO, one process, and
    Server.serve() inside asyncio.run (so the stdlib event loop, as serve has)."""
    import logging

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(BARE_PAGE)

    app = Starlette(routes=[Route("/", page)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="info"))
    asyncio.run(server.serve())


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    what: str
    rps: float = 0.0
    p50: float = math.nan
    p99: float = math.nan
    errors: int = 0
    detail: str = ""
    server_cpu: float = math.nan  # share of one core during the window
    client_cpu: float = math.nan
    other_cpu: float = math.nan  # cores used by every other process on the machine
    # The server's CPU per answered request: less swayed by a busy machine than req/s is.
    server_ms: float = math.nan
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, what: str, raw: dict[str, Any]) -> Result:
        seconds = float(raw["seconds"])
        errors = dict(raw["errors"])
        if raw.get("left_in_flight"):
            errors["unfinished at the end"] = raw["left_in_flight"]
        machine, client = float(raw["machine_busy_s"]), float(raw["client_cpu_s"])
        server = float(raw["watched_cpu_s"])
        others = machine - client - (0.0 if math.isnan(server) else server)
        return cls(
            name,
            what,
            float(raw["rps"]),
            float(raw["p50_ms"]),
            float(raw["p99_ms"]),
            sum(errors.values()),
            ", ".join(f"{n} {k}" for k, n in errors.items())
            + (f" (first: {raw['first_error']})" if raw.get("first_error") else ""),
            server / seconds,
            client / seconds,
            max(others, 0.0) / seconds,
            server * 1000 / raw["ok"] if raw["ok"] else math.nan,
            raw,
        )


class Loader:
    """Runs bench/httpload.py in its own process against one server."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.n = 0

    def load(
        self,
        port: int,
        method: str,
        items: list[Item],
        expect: frozenset[int],
        form: bool,
        watch_pid: int,
        connections: int | None = None,
    ) -> subprocess.Popen[str]:
        self.n += 1
        spec = self.work / f"spec-{self.n}.json"
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
        spec.write_text(
            json.dumps(
                {"method": method, "items": items, "expect": sorted(expect), "headers": headers}
            ),
            encoding="utf-8",
        )
        a = self.args
        command = [sys.executable, str(BENCH / "httpload.py"), "--port", str(port)]
        command += ["--spec", str(spec), "--connections", str(connections or a.connections)]
        command += ["--warmup", str(a.warmup), "--seconds", str(a.seconds)]
        command += ["--timeout", str(a.timeout), "--watch-pid", str(watch_pid)]
        return subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            preexec_fn=_die_with_parent,
        )

    def wait(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        limit = self.args.warmup + self.args.seconds + 3 * self.args.timeout + 30
        try:
            out, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            raise RuntimeError(f"the load client ran over {limit:.0f} s and was killed") from None
        if proc.returncode:
            raise RuntimeError(f"the load client exited {proc.returncode}")
        result: dict[str, Any] = json.loads(out)
        return result


def first_request(port: int, method: str, item: Item, form: bool, expect: frozenset[int]) -> str:
    """One request before the timed load: '' when its status is expected, else what came back."""
    path, body = item[0], item[1]
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
        headers.update(item[2] if len(item) > 2 else {})
        conn.request(method, path, body=body.encode() or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    finally:
        conn.close()
    if response.status in expect:
        return ""
    snippet = re.sub(r"\s+", " ", data[:300].decode(errors="replace"))
    return f"HTTP {response.status} (expected {'/'.join(map(str, sorted(expect)))}): {snippet}"


@dataclass
class Table:
    database: str
    before: Result
    rows: list[Result]
    after: Result | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def bare(self) -> float:
        runs = [r.rps for r in (self.before, self.after) if r is not None]
        return sum(runs) / len(runs)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> None:
        self.args, self.work, self.stack = args, work, stack
        self.secret = secrets.token_urlsafe(32)
        self.signer = Signer((self.secret.encode(),))
        self.loader = Loader(args, work)
        self.bare_port = free_port()
        self.bare_pid = 0
        self.tables: list[Table] = []

    def run(self) -> None:
        """The sites, then the bare baseline, then each database followed by the bare again."""
        sites = self.sites()
        self.start_bare()
        say("[bare] the baseline, before the first database")
        if self.args.check_client:
            self.check_client()
        before = self.bare("bare (before)")
        for name, site, ids in sites:
            table = self.database(name, site, ids, before)
            table.after = before = self.bare("bare (after)")

    def sites(self) -> list[tuple[str, Site, Ids]]:
        """A prepared site for each database asked for; PostgreSQL is skipped if unreachable."""
        from sqlalchemy.exc import SQLAlchemyError

        sites: list[tuple[str, Site, Ids]] = []
        for name in self.args.databases:
            if name == "sqlite":
                url = f"sqlite:///{self.work / 'sqlite' / 'var' / 'newsletter.db'}"
            else:
                try:
                    say(f"  PostgreSQL {postgres_version(self.args.pg_url)} at {self.args.pg_url}")
                except (SQLAlchemyError, ImportError) as exc:
                    say(f"  PostgreSQL not reachable ({exc.__class__.__name__}): skipped")
                    continue
                url = self.stack.enter_context(postgres_schema(self.args.pg_url))
            site = Site(self.work / name, url, self.secret)
            sites.append((name, site, site.prepare(self.args.members, free_port())))
        return sites

    def start_bare(self) -> None:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--bare-server",
            str(self.bare_port),
        ]
        env = dict(os.environ)
        self.bare_pid = self.stack.enter_context(
            running(command, self.bare_port, self.work / "bare.log", env)
        )

    def bare(self, label: str) -> Result:
        expect = frozenset({200})
        problem = first_request(self.bare_port, "GET", ("/", ""), False, expect)
        if problem:
            raise RuntimeError(f"the bare endpoint: {problem}")
        result = Result.of(label, "Starlette, 3 KB page", self.loader.wait(self.bare_load()))
        say(f"  {label}: {line(result)}")
        return result

    def check_client(self) -> None:
        """One client with all the connections, then two clients with half each, twice over.

        If the client limited the rate, two of them (two processes) would answer more in
        total. The passes alternate and the best of each kind is compared, so that a burst
        of other work on a shared machine does not decide it.
        """
        a = self.args
        say(f"[client check] bare endpoint: 1 client × {a.connections} connections, then 2 × half")
        single: list[Result] = []
        double: list[float] = []
        busy = 0.0  # the most CPU other processes took in any pass, in cores
        for _ in range(2):
            single.append(Result.of("1", "", self.loader.wait(self.bare_load())))
            busy = max(busy, single[-1].other_cpu)
            half = max(1, a.connections // 2)
            procs = [self.bare_load(half) for _ in range(2)]
            pair = [Result.of("2", "", self.loader.wait(p)) for p in procs]
            # Each client sees the other as "others": count the machine's busy time once.
            first, second = pair
            busy = max(busy, first.other_cpu - second.client_cpu)
            double.append(sum(r.rps for r in pair))
        one = max(single, key=lambda r: r.rps)
        ratio = max(double) / one.rps if one.rps else math.nan
        if busy > 0.25:
            # Two client processes then also win more of the machine from the other work.
            verdict = f"inconclusive: other processes took up to {busy:.2f} cores"
        elif ratio < 1.1:
            verdict = "the server sets the pace"
        else:
            verdict = "the total rose: the client limits"
        say(
            f"  1 client: {' / '.join(f'{r.rps:,.0f}' for r in single)} req/s (best: client "
            f"CPU {one.client_cpu:.0%} of a core, server {one.server_cpu:.0%}); 2 clients: "
            f"{' / '.join(f'{d:,.0f}' for d in double)} req/s together; best 2 / best 1 = "
            f"{ratio:.2f}: {verdict}"
        )

    def bare_load(self, connections: int | None = None) -> subprocess.Popen[str]:
        ok = frozenset({200})
        return self.loader.load(
            self.bare_port, "GET", [("/", "")], ok, False, self.bare_pid, connections
        )

    def database(self, name: str, site: Site, ids: Ids, before: Result) -> Table:
        table = Table(name, before, [])
        port = free_port()
        wanted = [e for e in ENDPOINTS if not self.args.only or e.name in self.args.only]
        say(f"[{name}] newsletter serve on port {port}")
        with site.serve(port) as pid:
            for e in wanted:
                items = e.items(self.signer, ids)
                last = items[-1]  # the last member: the timed run starts at the first
                problem = first_request(port, e.method, last, e.form, e.expect)
                if problem:
                    table.notes.append(f"{e.name}: first {e.method} {last[0][:60]} gave {problem}")
                    say(f"  {e.name}: first request: {problem}")
                what = f"{e.method} {e.what}"
                client = self.loader.load(port, e.method, items, e.expect, e.form, pid)
                spy = self.profile(pid, f"{name}-{e.name}") if self.args.py_spy else None
                result = Result.of(e.name, what, self.loader.wait(client))
                table.rows.append(result)
                say(f"  {e.name}: {line(result)}")
                if spy is not None:
                    say(f"    {hot_spots(self.finish_profile(*spy))}")
                time.sleep(0.5)  # let the server finish what the drain left (WAL, logs)
        self.tables.append(table)
        return table

    def profile(self, pid: int, label: str) -> tuple[subprocess.Popen[bytes], Path]:
        """py-spy over the server during the window (about: it starts after the warm-up)."""
        folder: Path = self.args.py_spy
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"{label}.txt"
        time.sleep(self.args.warmup + 0.2)  # the client's start-up, then its warm-up
        command = [str(py_spy_command()), "record", "--pid", str(pid), "--format", "raw"]
        command += ["--duration", str(max(1, math.floor(self.args.seconds))), "--nolineno"]
        # Not pausing the server for each sample keeps the figures close to an unprofiled run.
        command += ["--rate", "100", "--nonblocking", "--output", str(out)]
        spy = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent
        )
        return spy, out

    def finish_profile(self, spy: subprocess.Popen[bytes], out: Path) -> Path:
        try:
            _, errors = spy.communicate(timeout=self.args.seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.communicate(timeout=10)
            errors = b"py-spy ran over its time and was killed"
        if spy.returncode or not out.exists():
            raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')[-500:]}")
        return out


def py_spy_command() -> Path:
    found = Path(sys.executable).with_name("py-spy")
    if found.exists():
        return found
    on_path = shutil.which("py-spy")
    if on_path is None:
        raise RuntimeError("--py-spy needs py-spy (`.venv/bin/pip install py-spy`)")
    return Path(on_path)


def hot_spots(path: Path, count: int = 5) -> str:
    """The heaviest leaf functions, and the heaviest functions of newsletter/ with their callees,
    as shares of the samples of every active thread of the server (py-spy's raw format)."""
    leaves: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, n = text.rpartition(" ")
        if not n.isdigit():
            continue
        frames, samples = stack.split(";"), int(n)
        total += samples
        leaves[frames[-1]] += samples
        for frame in set(frames):
            if "(newsletter/" in frame and "(newsletter/cli/" not in frame:
                ours[frame] += samples
    if not total:
        return "profile: no samples"

    def top(counter: Counter[str]) -> str:
        return ", ".join(f"{n / total:.0%} {f}" for f, n in counter.most_common(count))

    return (
        f"profile ({path.name}, {total} samples): leaves {top(leaves)}; in newsletter/ {top(ours)}"
    )


def line(r: Result) -> str:
    errors = f", errors {r.detail}" if r.errors else ""
    return (
        f"{r.rps:,.0f} req/s, p50 {r.p50:.1f} ms, p99 {r.p99:.1f} ms{errors}; CPU: server "
        f"{r.server_cpu:.0%} of a core ({r.server_ms:.2f} ms a request), client "
        f"{r.client_cpu:.0%}, others {r.other_cpu:.2f} cores"
    )


# --- the report ---------------------------------------------------------------------------------


def passes(r: Result, bare: float) -> bool:
    return r.errors == 0 and bare > 0 and r.rps / bare >= TARGET_RATIO and r.p99 < TARGET_P99_MS


def render(table: Table, args: argparse.Namespace) -> str:
    bare = table.bare
    header = (
        "endpoint",
        "request",
        "req/s",
        "p50 ms",
        "p99 ms",
        "x bare",
        "errors",
        f">= {TARGET_RATIO}x, p99 < {TARGET_P99_MS:g} ms",
        "server CPU",
        "server ms/req",
        "client CPU",
        "others",
    )
    rows: list[tuple[str, ...]] = [header]

    def cells(r: Result, verdict: str, name: str = "") -> tuple[str, ...]:
        return (
            name or r.name,
            r.what,
            f"{r.rps:,.0f}",
            f"{r.p50:.1f}",
            f"{r.p99:.1f}",
            f"{r.rps / bare:.2f}" if bare else "-",
            str(r.errors),
            verdict,
            f"{r.server_cpu:.0%}",
            f"{r.server_ms:.2f}",
            f"{r.client_cpu:.0%}",
            f"{r.other_cpu:.2f}",
        )

    rows.append(cells(table.before, "", "bare, before"))
    rows += [cells(r, "pass" if passes(r, bare) else "FAIL") for r in table.rows]
    if table.after is not None:
        rows.append(cells(table.after, "", "bare, after"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {2, 3, 4, 5, 6, 8, 9, 10, 11}
    out = [
        f"{table.database}: {args.members:,} members, {args.connections} connections, "
        f"{args.warmup:g} s warm-up + {args.seconds:g} s measured per row; ratios to the mean "
        f"bare {bare:,.0f} req/s" + ("; profiled by py-spy" if args.py_spy else "")
    ]
    for n, row in enumerate(rows):
        out.append(
            " | ".join(
                c.rjust(w) if i in numeric else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    failed = [r for r in table.rows if not passes(r, bare)]
    out.append(f"{len(table.rows) - len(failed)} of {len(table.rows)} endpoints pass")
    out += [f"  note: {n}" for n in table.notes]
    out += [f"  errors in {r.name}: {r.detail}" for r in table.rows if r.errors]
    return "\n".join(out)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def stack_versions() -> str:
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return ""

    http = "httptools" if version("httptools") else "h11"
    loop = "stdlib asyncio loop (serve runs uvicorn inside asyncio.run)"
    return (
        f"Python {platform.python_version()}, uvicorn {version('uvicorn')} ({http}, {loop}), "
        f"Starlette {version('starlette')}, FastAPI {version('fastapi')}, "
        f"SQLAlchemy {version('sqlalchemy')}"
    )


# --- the whole benchmark ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = ", ".join(e.name for e in ENDPOINTS)
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.fill(
            "Endpoints, in the order they run: "
            + "; ".join(f"{e.name} = {e.method} {e.what}" for e in ENDPOINTS)
            + f". Target (per endpoint): >= {TARGET_RATIO}x bare and p99 < "
            f"{TARGET_P99_MS:g} ms, with no errors. A full run (both databases, 20,000 "
            "members) takes about 4 minutes.",
            width=88,
        ),
    )
    add = parser.add_argument
    add(
        "--databases",
        default="sqlite,postgres",
        help="comma-separated: sqlite, postgres (default both, SQLite first)",
    )
    add("--only", default="", help=f"comma-separated endpoints to run (default all: {names})")
    add(
        "--members",
        type=int,
        default=20_000,
        help="members imported and mailed; requests rotate through them (default 20,000)",
    )
    add("--seconds", type=float, default=5.0, help="measured window per endpoint, s (default 5)")
    add("--warmup", type=float, default=1.0, help="load before each window, s (default 1)")
    add("--connections", type=int, default=50, help="concurrent keep-alive connections (50)")
    add(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds one request may take before it counts as an error (default 10)",
    )
    add("--pg-url", default=PG_URL, help=f"PostgreSQL to make a schema in (default {PG_URL})")
    add(
        "--check-client",
        action="store_true",
        help="first load the bare endpoint with one client, then with two client processes "
        "of half the connections each: if the total rises, the client is a bottleneck",
    )
    add(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record each endpoint's window with py-spy into DIR (raw collapsed stacks, for "
        "flamegraph.pl or speedscope) and print the hot spots; it perturbs the figures a little",
    )
    add("--keep", action="store_true", help="keep the work folder (sites, logs) and print it")
    add("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not set(args.databases) <= {"sqlite", "postgres"} or not args.databases:
        parser.error("--databases takes sqlite and/or postgres")
    args.only = {n.strip() for n in args.only.split(",") if n.strip()}
    if unknown := args.only - set(BY_NAME):
        parser.error(f"unknown endpoint(s) {', '.join(sorted(unknown))}; known: {names}")
    if args.members < 1 or args.connections < 1 or args.seconds <= 0:
        parser.error("--members, --connections and --seconds must be positive")
    return args


def on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM takes the same way out as Ctrl-C: servers stopped, schemas dropped, files removed."""
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args()
    if args.bare_server:
        serve_bare(args.bare_server)
        return
    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    load = os.getloadavg()
    say(
        f"{os.cpu_count()} cores ({cpu_model()}); load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at the start; {stack_versions()}; work folder {work}"
    )
    bench, failed = None, False
    try:
        with contextlib.ExitStack() as stack:
            bench = Bench(args, work, stack)
            bench.run()
    except KeyboardInterrupt:
        say("interrupted: servers stopped, schemas dropped")
        failed = True
    except Exception:  # noqa: BLE001 - the tables measured so far are still worth printing
        traceback.print_exc()
        failed = True
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if bench is None:
        sys.exit(1)
    report(bench, args, started)
    if failed:
        sys.exit(1)


def report(bench: Bench, args: argparse.Namespace, started: float) -> None:
    print()
    for table in bench.tables:
        print(render(table, args))
        print()
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, {cpu_model()}; load average {load[0]:.2f} at the end. "
        f"CPU columns are shares of one core (server, client) and cores used by every other "
        f"process (on PostgreSQL its backends, plus whatever else runs on this machine), "
        f"over each window. Whole run: {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
