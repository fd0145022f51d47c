"""Benchmark: `newsletter send` throughput, memory and audience snapshot against bare aiosmtplib."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import itertools
import os
import re
import resource
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import aiosmtplib
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jinja2 import Environment, Template
from sqlalchemy import insert

from newsletter import config, site
from newsletter.content import compiler as issue
from newsletter.content.personalize import Personalizer
from newsletter.services import issues, items
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.storage import issues as issue_rows
from newsletter.storage.ledger import Recipient
from newsletter.storage.models import Issue, Member
from newsletter.tokens import Signer

REPO = Path(__file__).resolve().parent.parent
FEED = REPO / "examples" / "seed-feed.xml"
HOST = "127.0.0.1"
SECRET = "bench-secret-key-0123456789abcdef"
POSTFIX_SINK = Path("/usr/sbin/smtp-sink")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NAMES = ["Alice Smith", "Bob O'Neil", "Carol Jones", "王芳", "李伟"]
CHUNK = 50_000
CPU_NOTE = "  sender CPU per message / CPU share of other processes"
QUICK = {
    "members": 5_000,
    "baseline_messages": 5_000,
    "naive_sample": 50,
    "rss_sizes": "2000,5000,20000",
    "snapshot_members": 50_000,
}


def say(text: str) -> None:
    print(text, flush=True)


def counts(text: str) -> list[int]:
    return sorted(int(c.replace("_", "")) for c in text.split(",") if c.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--members", type=int, default=100_000, help="members for items 1-3 and 8")
    add("--connections", type=int, default=8, help="SMTP connections (smtp.connections)")
    add("--baseline-messages", type=int, default=50_000, help="messages per bare-aiosmtplib run")
    add("--naive-sample", type=int, default=1_000, help="members for the naive loop")
    add("--rss-sizes", default="10000,100000,1000000", help="comma-separated member counts")
    add("--skip-rss", action="store_true", help="skip the peak-RSS runs (item 5)")
    add("--snapshot-members", type=int, default=1_000_000, help="members for item 6")
    add(
        "--dkim-members",
        type=int,
        default=0,
        help="members for item 7 (default: --members, so DKIM off is item 1's run)",
    )
    add("--processes", type=int, default=2, help="sender processes for item 8")
    add("--sinks", default="bundled,postfix", help="sinks for items 1-3: bundled, postfix")
    add("--timeout", type=float, default=7200.0, help="seconds before a send is killed")
    add("--workdir", default=None, help="parent folder of the temporary files (default: /tmp)")
    add("--keep", action="store_true", help="keep the temporary sites and databases")
    add("--quick", action="store_true", help="small sizes everywhere (a smoke test, ~2 min)")
    add("--only", default="", help="comma-separated items to run (1-3,4,5,6,7,8); default all")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    args.rss_sizes = counts(args.rss_sizes)
    args.sinks = [s.strip() for s in args.sinks.split(",") if s.strip()]
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    return args


# --- sites and databases ----------------------------------------------------------------------


def set_key(toml: str, section: str, key: str, value: str) -> str:
    """`key = value` in [section] of a TOML text, replacing the key or adding it (or the table)."""
    line = f"{key} = {value}"
    header = re.search(rf"^\[{re.escape(section)}\][ \t]*$", toml, re.M)
    if header is None:
        return f"{toml.rstrip()}\n\n[{section}]\n{line}\n"
    following = re.compile(r"^\[", re.M).search(toml, header.end())
    stop = following.start() if following else len(toml)
    body = toml[header.end() : stop]
    pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
    body = pattern.sub(lambda _: line, body, count=1) if pattern.search(body) else f"\n{line}{body}"
    return toml[: header.end()] + body + toml[stop:]


def openssl_rsa2048_sign_seconds(rounds: int = 2000) -> float:
    """The median time `cryptography` (OpenSSL) takes for one RSA-2048 PKCS#1 v1.5 signature
    over SHA-256, in this process: what a DKIM signature cannot cost less than."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = b"x" * 64
    for _ in range(50):  # warm up
        key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    samples = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(rounds // 5):
            key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        samples.append((time.process_time() - started) / (rounds // 5))
    return sorted(samples)[len(samples) // 2]


def signing_startup_seconds(site_config: Path) -> float:
    """CPU-seconds a send spends starting and stopping its DKIM signing processes (as many as
    it starts, with the site's key), signing nothing: a fixed cost a send, not a message."""
    from newsletter.delivery.signing import SigningPool, signer_for

    settings = load_settings(site_config)
    signer = signer_for(settings)
    assert signer is not None
    processes = settings.dkim.processes if settings.dkim else 0

    async def start_and_stop() -> None:
        pool = await SigningPool.start(signer, (b"x",), processes)
        await pool.close()

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    asyncio.run(start_and_stop())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def write_dkim_key(path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)


@functools.cache
def sample_config() -> str:
    """The repository's config.toml, read once: every site of a run starts from the same text."""
    return (REPO / "config.toml").read_text(encoding="utf-8")


def make_site(folder: Path, db_path: Path, port: int, connections: int, dkim: bool = False) -> Path:
    """A site folder (config.toml, examples/; templates from the package) and its config path."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "examples", folder / "examples", dirs_exist_ok=True)
    toml = sample_config()
    toml = set_key(toml, "database", "url", f'"sqlite:///{db_path}"')
    toml = set_key(toml, "smtp", "port", str(port))
    toml = set_key(toml, "smtp", "connections", str(connections))
    toml = set_key(toml, "delivery", "linger_seconds", "0")
    if dkim:
        write_dkim_key(folder / "dkim.pem")
        for key, value in (
            ("domain", "example.org"),
            ("selector", "bench"),
            ("key_file", "dkim.pem"),
        ):
            toml = set_key(toml, "dkim", key, f'"{value}"')
    path = folder / "config.toml"
    path.write_text(toml, encoding="utf-8")
    load_settings(path)  # fail here, not in a subprocess, on a bad override
    return path


def load_settings(path: Path) -> config.Settings:
    return config.load(path, env={config.SECRET_ENV: SECRET})


def member_rows(start: int, stop: int, now: dt.datetime) -> list[dict[str, object]]:
    return [
        {
            "email": f"m{i}@example.org",
            "name": NAMES[i % len(NAMES)],
            "status": "active",
            "attributes": {},
            "created_at": now,
            "updated_at": now,
            "bounce_count": 0,
        }
        for i in range(start, stop)
    ]


def prepare_database(path: Path, members: int) -> None:
    """A migrated SQLite file with `members` active members and the seed feed's items."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sessions = db.open_database(f"sqlite:///{path}")
    engine = sessions.kw["bind"]
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with engine.begin() as conn:
        for start in range(0, members, CHUNK):
            rows = member_rows(start, min(start + CHUNK, members), now)
            conn.execute(insert(Member), rows)
    # The sample site's settings: the import needs none of its own.
    sample = config.load(FEED.parent.parent / "config.toml", env={config.SECRET_ENV: "b" * 32})
    items.import_source(Services(sample, sessions), str(FEED), actor="bench")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size:
        raise RuntimeError(f"{wal} still holds pages after the checkpoint")


def copy_database(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return target


def delivery_counts(db_path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
    return {status: n for status, n in rows}


# --- processes and sinks ------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env[config.SECRET_ENV] = SECRET
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            program = cast(list[str], proc.args)[0]  # every process here starts from a list
            raise RuntimeError(f"{program} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def family(pid: int) -> list[int]:
    """A process and all its descendants, from /proc/PID/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in children.read_text().split()]
    return found


def own_peak_rss(pid: int) -> int:
    """VmHWM in KB: the process's own peak RSS since its exec (0 once it is gone)."""
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        if found := re.search(r"^VmHWM:\s+(\d+) kB", status, re.M):
            return int(found.group(1))
    return 0


def wait_child(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, int, float]:
    """Exit code, peak RSS in KB (the largest of the process and its descendants) and CPU-seconds.

    The RSS comes from polling VmHWM every 50 ms, not from wait4's ru_maxrss: for a child
    started by fork/vfork + exec, ru_maxrss starts at the parent's own peak (Linux carries the
    pre-exec high-water mark over), so it reported this benchmark's RSS, not the sender's.
    """
    deadline, peak = time.monotonic() + timeout, 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
        peak = max([peak, *(own_peak_rss(p) for p in family(proc.pid))])
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, peak, usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """Busy CPU-seconds of the whole machine since boot (/proc/stat: all but idle and iowait)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


@dataclass
class CpuUse:
    """CPU-seconds over one measurement: the sender's, the sink's and all other processes'."""

    sender: float
    sink: float
    others: float

    def note(self, messages: int, wall: float) -> str:
        share = self.others / (wall * (os.cpu_count() or 1))
        return f"{self.sender / messages * 1e6:,.0f} µs / {share:.0%}"


class CpuMeter:
    """Started before a measurement; `stop(sender_cpu)` splits the machine's busy time."""

    def __init__(self, sink_pid: int) -> None:
        self.sink_pid = sink_pid
        self.busy, self.sink = machine_busy(), process_cpu(sink_pid)

    def stop(self, sender: float) -> CpuUse:
        sink = process_cpu(self.sink_pid) - self.sink
        others = machine_busy() - self.busy - sender - sink
        return CpuUse(sender, sink, max(others, 0.0))


@dataclass
class Sink:
    name: str
    port: int
    pid: int
    eight_bit: bool


def sink_command(name: str, port: int, site_config: Path) -> list[str]:
    if name == "postfix":
        # smtp-sink refuses to run as root unless told which user to drop to.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return [str(POSTFIX_SINK), *user, f"{HOST}:{port}", "1000"]
    return [
        *[sys.executable, "-m", "newsletter", "--config", str(site_config)],
        *["smtp-sink", "--discard", "--host", HOST, "--port", str(port)],
    ]


def offers_8bitmime(port: int) -> bool:
    with smtplib.SMTP(HOST, port, timeout=10) as smtp:
        smtp.ehlo()
        return smtp.has_extn("8bitmime")


@contextlib.contextmanager
def running_sink(name: str, site_config: Path, log: Path) -> Iterator[Sink]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            sink_command(name, port, site_config),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
    try:
        wait_for_port(port, proc)
        yield Sink(name, port, proc.pid, offers_8bitmime(port))
    finally:
        stop_process(proc)


# --- one `newsletter send` ----------------------------------------------------------------------


@dataclass
class SendResult:
    label: str
    members: int
    sent: int
    wall: float
    engine_rate: float | None
    rss_kb: int
    exit_code: int
    counts: dict[str, int]
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.sent / self.wall

    def line(self) -> str:
        engine = f", engine {self.engine_rate:,.0f} msg/s" if self.engine_rate else ""
        return (
            f"  {self.label}: {self.sent:,}/{self.members:,} sent in {self.wall:.1f} s = "
            f"{self.rate:,.0f} msg/s{engine}; peak RSS {self.rss_kb / 1024:.1f} MB; "
            f"exit {self.exit_code}; {self.counts}; CPU s: sender {self.cpu.sender:.1f}, "
            f"sink {self.cpu.sink:.1f}, other processes {self.cpu.others:.1f}"
        )


ATTEMPTS = re.compile(r"(\d+) attempts in ([\d.]+)s")


def engine_rate(log: str, processes: int) -> float | None:
    """The engine's own figure (its `run()` only), when one process did all the sending."""
    found = ATTEMPTS.findall(log)
    if processes > 1 or not found:
        return None
    attempts, elapsed = found[-1]
    return int(attempts) / float(elapsed) if float(elapsed) else None


def run_send(
    site_config: Path, db_path: Path, sink: Sink, processes: int, timeout: float
) -> SendResult:
    """`newsletter send` in a subprocess; its wall time, peak RSS and the ledger's counts."""
    log_path = db_path.with_name("send.log")
    command = [sys.executable, "-m", "newsletter", "--config", str(site_config), "send"]
    if processes > 1:
        command += ["--processes", str(processes)]
    with log_path.open("wb") as out:
        meter, started = CpuMeter(sink.pid), time.perf_counter()
        proc = subprocess.Popen(
            command, cwd=site_config.parent, env=child_env(), stdout=out, stderr=subprocess.STDOUT
        )
        code, rss_kb, cpu = wait_child(proc, timeout)
        wall, use = time.perf_counter() - started, meter.stop(cpu)
    log = log_path.read_text(encoding="utf-8", errors="replace")
    if code:
        say(log[-3000:])
    found = delivery_counts(db_path)
    rate = engine_rate(log, processes)
    return SendResult(
        "", sum(found.values()), found.get("sent", 0), wall, rate, rss_kb, code, found, use
    )


# --- bare aiosmtplib and the naive loop ---------------------------------------------------------


async def push(port: int, sender: str, message: bytes, connections: int, total: int) -> float:
    """Send `message` `total` times over `connections` aiosmtplib connections; msg/s."""
    numbers = iter(range(total))

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname=HOST, port=port, timeout=30)
        await client.connect()
        for i in numbers:
            await client.sendmail(sender, [f"m{i}@example.org"], message)
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return total / (time.perf_counter() - started)


class RecordingEnvironment:
    """A Jinja2 environment that remembers the context each template was rendered with."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.contexts: dict[str, dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def get_template(self, name: str) -> Any:
        template = self.env.get_template(name)
        return types.SimpleNamespace(render=functools.partial(self._render, name, template))

    def _render(self, name: str, template: Template, context: dict[str, Any]) -> str:
        self.contexts[name] = context
        return template.render(context)


@dataclass
class Inputs:
    """The next issue as a send compiles it (`issues.compile_next`), and its render context."""

    settings: config.Settings
    personalizer: Personalizer
    contexts: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, site_config: Path) -> Inputs:
        settings = load_settings(site_config)
        sessions = db.open_database(settings.database_url)
        env = RecordingEnvironment(site.environment(settings.site_dir))
        services = Services(settings, sessions)
        services.__dict__["env"] = cast(Environment, env)  # it records each template's context
        compiled = services.read(issues.next_compiled)
        sessions.kw["bind"].dispose()
        personalizer = Personalizer(compiled, settings, Signer(settings.require_secret()), 1)
        return cls(settings, personalizer, env.contexts)

    def message(self) -> tuple[str, bytes]:
        """One member's real personalised message: (envelope sender, bytes)."""
        _, data = self.personalizer.message(Recipient(1, "m1@example.org", NAMES[0]))
        return self.personalizer.envelope_from(1), data


def member_context(context: dict[str, Any], v: dict[str, str]) -> dict[str, Any]:
    """The engine's render context with one member's values where its slot markers were."""
    survey = context.get("survey")
    if survey is not None:
        options = tuple(dataclasses.replace(o, link=v[f"vote{o.position}"]) for o in survey.options)
        survey = dataclasses.replace(survey, options=options)
    return {**context, "slots": {name: v[name] for name in context["slots"]}, "survey": survey}


def naive_message(inputs: Inputs, env: Environment, r: Recipient) -> EmailMessage:
    """What a user would otherwise write: render, inline and build a MIME message per member."""
    s = inputs.settings
    v = inputs.personalizer.values(r)  # the same signed links as the engine's messages
    html_template, text_template = "email/issue.html", "email/issue.txt"
    html_context = member_context(inputs.contexts[html_template], v)
    html = issue.inline_css(env.get_template(html_template).render(html_context))
    text_context = member_context(inputs.contexts[text_template], v)
    text = env.get_template(text_template).render(text_context)
    msg = EmailMessage()
    msg["From"] = Address(s.list.name, addr_spec=s.list.from_address)
    msg["To"] = Address(r.name, addr_spec=r.email)
    msg["Subject"] = inputs.personalizer.compiled.subject
    msg["Date"] = v["date"]
    msg["Message-ID"] = v["msgid"]
    msg["List-Id"] = f"{s.list.name} <{s.list.id}>"
    msg["List-Unsubscribe"] = f"<{v['unsubscribe']}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


def naive_rate(inputs: Inputs, port: int, sample: int) -> float:
    env = site.environment(inputs.settings.site_dir)
    people = [Recipient(i, f"m{i}@example.org", NAMES[i % len(NAMES)]) for i in range(sample)]
    with smtplib.SMTP(HOST, port, timeout=30) as smtp:
        smtp.send_message(naive_message(inputs, env, people[0]))  # warm up: template loading
        started = time.perf_counter()
        for r in people:
            smtp.send_message(naive_message(inputs, env, r))
        return sample / (time.perf_counter() - started)


# --- the audience snapshot ----------------------------------------------------------------------


def time_snapshot(db_path: Path) -> tuple[int, float]:
    """storage.issues.snapshot_audience for a new issue row, its commit included: (rows, seconds)."""
    sessions = db.open_database(f"sqlite:///{db_path}")
    now = dt.datetime.now(dt.UTC)
    with sessions.begin() as session:
        row = Issue(subject="bench", html="", text="", nonce="0", created_at=now)
        session.add(row)
        session.flush()
        started = time.perf_counter()
        rows = issue_rows.snapshot_audience(session, row.id, now)
    elapsed = time.perf_counter() - started
    sessions.kw["bind"].dispose()
    return rows, elapsed


def time_release(site_config: Path) -> tuple[int, float]:
    """issues.release_next (compile, store, claim items, snapshot, audit, commit): (rows, s)."""
    settings = load_settings(site_config)
    sessions = db.open_database(settings.database_url)
    started = time.perf_counter()
    released = Services(settings, sessions).run("bench", issues.release_next)
    elapsed = time.perf_counter() - started
    sessions.kw["bind"].dispose()
    return released.queued, elapsed


# --- the whole benchmark ------------------------------------------------------------------------


@dataclass
class Row:
    item: str
    what: str
    value: str
    target: str = ""
    ok: bool | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.prepared: dict[int, Path] = {}
        self.runs: dict[tuple[str, int, int, bool], SendResult] = {}
        self.sinks: dict[str, Sink] = {}
        self.rows: list[Row] = []
        self.seq = itertools.count(1)
        self.base_config = make_site(work / "site", self.database(0), 25, args.connections)
        self.inputs = Inputs.load(self.base_config)

    @property
    def main_sink(self) -> str:
        return "postfix" if "postfix" in self.sinks else "bundled"

    def add(
        self, item: str, what: str, value: str, target: str = "", ok: bool | None = None
    ) -> None:
        self.rows.append(Row(item, what, value, target, ok))

    def database(self, members: int) -> Path:
        if members not in self.prepared:
            path = self.work / "prepared" / f"members-{members}.db"
            started = time.perf_counter()
            prepare_database(path, members)
            say(f"  prepared {members:,} members + items in {time.perf_counter() - started:.1f} s")
            self.prepared[members] = path
        return self.prepared[members]

    def send(self, sink: str, members: int, processes: int = 1, dkim: bool = False) -> SendResult:
        key = (sink, members, processes, dkim)
        if key not in self.runs:
            self.runs[key] = self._send(*key)
        return self.runs[key]

    def _send(self, sink: str, members: int, processes: int, dkim: bool) -> SendResult:
        source = self.database(members)
        folder = self.work / f"run-{next(self.seq)}"
        db_path = copy_database(source, folder / "bench.db")
        site_config = make_site(folder, db_path, self.sinks[sink].port, self.args.connections, dkim)
        result = run_send(site_config, db_path, self.sinks[sink], processes, self.args.timeout)
        dkim_word = "on" if dkim else "off"
        result.label = f"send {sink} sink, {processes} proc, DKIM {dkim_word}"
        say(result.line())
        if not self.args.keep:
            shutil.rmtree(folder)
        return result

    # items 1-3
    def throughput(self, sink: str) -> None:
        n, total = self.args.members, self.args.baseline_messages
        say(f"[1-3] {sink} sink: `newsletter send` to {n:,} members vs bare aiosmtplib")
        result = self.send(sink, n)
        baseline, cpu = self.baseline(self.sinks[sink], total)
        conns = f"{self.args.connections} conns"
        self.add("1", f"newsletter send, {sink} sink, {n:,} members", f"{result.rate:,.0f} msg/s")
        self.details(result)
        self.add("2", f"bare aiosmtplib, {sink} sink, {conns}", f"{baseline:,.0f} msg/s")
        self.add("", CPU_NOTE, cpu.note(total, total / baseline))
        ratio = result.rate / baseline
        self.add("3", f"send / bare, {sink} sink", f"{ratio:.2f}", ">= 0.8", ratio >= 0.8)

    def baseline(self, sink: Sink, total: int) -> tuple[float, CpuUse]:
        sender, message = self.inputs.message()
        meter, cpu = CpuMeter(sink.pid), time.process_time()
        rate = asyncio.run(push(sink.port, sender, message, self.args.connections, total))
        use = meter.stop(time.process_time() - cpu)
        say(
            f"  bare aiosmtplib: {total:,} × {len(message) / 1024:.1f} KB = {rate:,.0f} msg/s; "
            f"CPU s: sender {use.sender:.1f}, sink {use.sink:.1f}, other processes {use.others:.1f}"
        )
        return rate, use

    def details(self, r: SendResult) -> None:
        engine = f"{r.engine_rate:,.0f}" if r.engine_rate else "-"
        self.add(
            "",
            "  sent / exit code / engine's own msg/s",
            f"{r.sent:,}/{r.members:,} / {r.exit_code} / {engine}",
        )
        self.add("", CPU_NOTE, r.cpu.note(r.members, r.wall))

    # item 4
    def naive(self) -> None:
        sink, n = self.main_sink, self.args.naive_sample
        say(f"[4] naive render → premailer → EmailMessage → smtplib loop, {n:,} members ({sink})")
        rate = naive_rate(self.inputs, self.sinks[sink].port, n)
        say(f"  naive: {rate:,.1f} msg/s")
        self.add("4", f"naive loop, {n:,} members, 1 conn, {sink} sink", f"{rate:,.1f} msg/s")
        best = max((r.rate for r in self.runs.values() if r.sent), default=0.0)
        if best:
            self.add("", "  fastest send above / naive", f"{best / rate:,.0f}x")

    # item 5
    def memory(self) -> None:
        sink, sizes = self.main_sink, self.args.rss_sizes
        say(f"[5] peak RSS of `newsletter send` at {', '.join(f'{n:,}' for n in sizes)} ({sink})")
        results = [self.send(sink, n) for n in sizes]
        for n, r in zip(sizes, results, strict=True):
            self.add("5", f"peak RSS, {n:,} members, {sink} sink", f"{r.rss_kb / 1024:.1f} MB")
            self.details(r)
        small, big = results[0], results[-1]
        ratio = big.rss_kb / small.rss_kb
        label = f"RSS({sizes[-1]:,}) / RSS({sizes[0]:,})"
        self.add("5", label, f"{ratio:.2f}", "<= 1.2", ratio <= 1.2)
        big_mb = big.rss_kb / 1024
        self.add("5", f"RSS({sizes[-1]:,})", f"{big_mb:.1f} MB", "< 150 MB", big_mb < 150)

    # item 6
    def snapshot(self) -> None:
        n = self.args.snapshot_members
        say(f"[6] audience snapshot of {n:,} active members")
        source = self.database(n)
        rows, seconds = time_snapshot(copy_database(source, self.work / "snap-1" / "bench.db"))
        say(f"  storage.issues.snapshot_audience: {rows:,} rows in {seconds:.2f} s")
        self.add("6", f"snapshot_audience + commit, {n:,} members", f"{seconds:.2f} s")
        self.add("", "  rows inserted", f"{rows:,}")
        folder = self.work / "snap-2"
        site_config = make_site(folder, copy_database(source, folder / "bench.db"), 25, 1)
        queued, total = time_release(site_config)
        say(f"  issues.release_next: {queued:,} queued in {total:.2f} s")
        self.add("6", f"issues.release_next, {n:,} members", f"{total:.2f} s", "< 15 s", total < 15)
        if not self.args.keep:
            shutil.rmtree(self.work / "snap-1")
            shutil.rmtree(folder)

    # item 7
    def dkim(self) -> None:
        sink, n = self.main_sink, self.args.dkim_members or self.args.members
        say(f"[7] DKIM off and on (RSA-2048), {n:,} members ({sink})")
        off, on = self.send(sink, n), self.send(sink, n, dkim=True)
        self.add("7", f"DKIM off, {n:,} members, {sink} sink", f"{off.rate:,.0f} msg/s")
        self.details(off)
        self.add("7", f"DKIM on, {n:,} members, {sink} sink", f"{on.rate:,.0f} msg/s")
        self.details(on)
        # The sender's CPU includes its signing processes' (wait4 counts the children it
        # reaped); "other processes" is the rest of the machine: noise on a shared one.
        added = on.cpu.sender / on.sent - off.cpu.sender / off.sent
        startup_site = make_site(
            self.work / "dkim-startup", self.database(0), 25, self.args.connections, dkim=True
        )
        startup = signing_startup_seconds(startup_site)
        steady = added - startup / on.sent
        rsa_s = openssl_rsa2048_sign_seconds()
        ratio = steady / rsa_s
        self.add("7", "DKIM added CPU per message (on - off)", f"{added * 1e6:,.0f} µs")
        self.add("", "  starting the signing processes, once a send", f"{startup * 1e3:,.0f} ms")
        self.add("7", "DKIM added CPU per message, start-up excluded", f"{steady * 1e6:,.0f} µs")
        self.add("7", "OpenSSL RSA-2048 signature (cryptography)", f"{rsa_s * 1e6:,.0f} µs")
        self.add("7", "DKIM added per message / RSA-2048", f"{ratio:.2f}", "<= 1.5", ratio <= 1.5)
        self.add("", "  DKIM on / off throughput (no target)", f"{on.rate / off.rate:.2f}")

    # item 8
    def processes(self) -> None:
        sink, n, p = self.main_sink, self.args.members, self.args.processes
        say(f"[8] `newsletter send --processes {p}` vs 1 process, {n:,} members ({sink})")
        single, multi = self.send(sink, n), self.send(sink, n, processes=p)
        self.add("8", f"send 1 process, {sink} sink, {n:,} members", f"{single.rate:,.0f} msg/s")
        self.details(single)
        ok = sink == "postfix" and multi.rate >= 2000
        what = f"send --processes {p}, {sink} sink, {n:,} members"
        self.add("8", what, f"{multi.rate:,.0f} msg/s", ">= 2,000 msg/s (Postfix sink)", ok)
        self.details(multi)

    def wanted(self, item: str) -> bool:
        return not self.args.only or item in self.args.only

    def section(self, item: str, step: Callable[[], None]) -> None:
        """Run one measurement; a failure becomes a FAIL row instead of ending the benchmark."""
        if not self.wanted(item):
            return
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not end the run
            traceback.print_exc()
            self.add(item, "error", f"{exc.__class__.__name__}: {exc}"[:90], "", False)

    def start_sinks(self, stack: contextlib.ExitStack) -> None:
        for name in self.args.sinks:
            if name == "postfix" and not POSTFIX_SINK.exists():
                self.add("", "Postfix smtp-sink", f"{POSTFIX_SINK} is not installed: skipped")
                continue
            sink = stack.enter_context(
                running_sink(name, self.base_config, self.work / f"sink-{name}.log")
            )
            # Messages are 7bit (quoted-printable bodies): a sink without 8BITMIME takes them.
            say(f"{name} sink on {HOST}:{sink.port}, 8BITMIME offered: {sink.eight_bit}")
            self.sinks[name] = sink

    def run(self) -> None:
        with contextlib.ExitStack() as stack:
            self.start_sinks(stack)
            for name in self.sinks:
                self.section("1-3", functools.partial(self.throughput, name))
            self.section("4", self.naive)
            self.section("8", self.processes)
            self.section("7", self.dkim)
            if not self.args.skip_rss:
                self.section("5", self.memory)
        self.section("6", self.snapshot)

    def report(self) -> None:
        header = Row("item", "measurement", "value", "target", None)
        cells = [(r.item, r.what, r.value, r.target, verdict(r.ok)) for r in [header, *self.rows]]
        cells[0] = (*cells[0][:4], "result")
        widths = [max(len(c[i]) for c in cells) for i in range(5)]
        print()
        for n, c in enumerate(cells):
            print(" | ".join(text.ljust(w) for text, w in zip(c, widths, strict=True)).rstrip())
            if n == 0:
                print("-+-".join("-" * w for w in widths))


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("pass" if ok else "FAIL")


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-deliver-", dir=args.workdir))
    say(f"work folder {work}; {os.cpu_count()} CPUs; {args.connections} SMTP connections")
    bench = None
    try:
        bench = Bench(args, work)
        bench.run()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if bench is not None:
            bench.report()


if __name__ == "__main__":
    main()
