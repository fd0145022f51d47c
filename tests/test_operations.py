"""docs/operations.md, run: its systemd units and crontab lines, read from the page itself.

The units and lines are parsed out of the page's code blocks, their server paths pointed at a
temporary site (/srv/newsletter), key file, env file and this environment's `newsletter`
script, and then checked the way systemd and cron would use them: `systemd-analyze verify`
and `calendar` on the units, each unit's ExecStart run with its WorkingDirectory and
environment, and each crontab command run through /bin/sh with cron's bare environment.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter import config, schedule
from newsletter.config import ScheduleSettings
from newsletter.storage import db
from newsletter.storage.models import Issue, utcnow
from tests.conftest import SECRET
from tests.smtpd import RecordingHandler
from tests.steps import import_csv, import_source
from tests.test_cli import free_port

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operations.md"
NEWSLETTER = Path(sys.executable).parent / "newsletter"
# What systemd (252) puts in a service's PATH; cron gives its jobs PATH=/usr/bin:/bin.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The test site's schedule keeps the doc's "Monday 08:00 Asia/Shanghai" but accepts a slot up
# to 7 days late (the most config.py allows), so that whenever the test runs the latest
# Monday slot, less than a week old, is due, as it is when the timer or the crontab line fires.
GRACE = 7 * 86400


# --- reading the page --------------------------------------------------------------------


def fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """Each ``` block of the page as (the prose before it, its body)."""
    blocks: list[tuple[str, str]] = []
    lines = markdown.splitlines(keepends=True)
    prose: list[str] = []
    body: list[str] | None = None
    for line in lines:
        if line.lstrip().startswith("```"):
            if body is None:
                body = []
            else:
                blocks.append(("".join(prose), "".join(body)))
                prose, body = [], None
        elif body is None:
            prose.append(line)
        else:
            body.append(line)
    assert body is None, f"{DOC}: a code block is not closed"
    return blocks


UNIT_NAME = re.compile(r"[\w@.-]+\.(?:service|timer)\b")
UNIT_HEADER = re.compile(r"^#\s*([\w@.-]+\.(?:service|timer))\s*$")
SECTION = re.compile(r"^\[(Unit|Service|Timer|Install)\]\s*$", re.M)


@dataclass
class Unit:
    name: str
    text: str

    def entries(self) -> list[tuple[str, str, str]]:
        """(section, key, value) of every setting, in order (keys may repeat)."""
        out: list[tuple[str, str, str]] = []
        section = ""
        for raw in self.text.replace("\\\n", " ").splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, sep, value = line.partition("=")
            assert sep, f"{self.name}: not a setting: {line!r}"
            out.append((section, key.strip(), value.strip()))
        return out

    def values(self, section: str, key: str) -> list[str]:
        return [v for s, k, v in self.entries() if s == section and k == key]

    def value(self, section: str, key: str, default: str = "") -> str:
        found = self.values(section, key)
        return found[-1] if found else default

    def exec_start(self) -> list[str]:
        (line,) = self.values("Service", "ExecStart")
        argv = shlex.split(line)
        argv[0] = argv[0].lstrip("-@:+!")
        return argv


@functools.cache
def doc_units() -> dict[str, Unit]:
    """The unit files the page shows, by file name: a block holding [Unit]/[Service]/[Timer]
    sections is one unit named in the prose before it, or several, each after a
    `# NAME.service` comment line."""
    units: dict[str, Unit] = {}
    for prose, body in fenced_blocks(DOC.read_text(encoding="utf-8")):
        if not SECTION.search(body):
            continue
        named = UNIT_NAME.findall(prose)
        name = Path(named[-1]).name if named else ""
        current: list[str] = []
        for line in body.splitlines(keepends=True):
            header = UNIT_HEADER.match(line.strip())
            if header:
                if "".join(current).strip():
                    units[name] = Unit(name, "".join(current))
                name, current = header.group(1), []
            else:
                current.append(line)
        assert name, f"{DOC}: a unit block with no file name before it:\n{body}"
        units[name] = Unit(name, "".join(current))
    return units


CRON_FIELD = r"[0-9A-Za-z*/,-]+"
CRON_LINE = re.compile(rf"^([0-9*/,-]+(?:\s+{CRON_FIELD}){{4}})\s+(\S.*)$")


@functools.cache
def doc_crontab() -> list[tuple[str, str]]:
    """(the five time fields, the command) of each crontab line on the page."""
    found: list[tuple[str, str]] = []
    for _prose, body in fenced_blocks(DOC.read_text(encoding="utf-8")):
        lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
        matches = [CRON_LINE.match(ln) for ln in lines]
        if lines and all(matches):
            found += [(m.group(1), m.group(2)) for m in matches if m]
    return found


def services() -> dict[str, Unit]:
    return {n: u for n, u in doc_units().items() if n.endswith(".service")}


def serve_unit() -> Unit:
    (unit,) = [u for u in services().values() if "serve" in u.exec_start()[1:]]
    return unit


def scheduled_units() -> list[Unit]:
    units = [u for u in services().values() if "--scheduled" in u.exec_start()]
    assert units, f"{DOC} shows no unit running `newsletter send --scheduled`"
    return units


def scheduled_name(argv: list[str]) -> str:
    return argv[argv.index("--scheduled") + 1]


def test_the_page_shows_units_and_crontab_lines() -> None:
    units = doc_units()
    assert {"newsletter.service", "newsletter-weekly.service", "newsletter-weekly.timer"} <= set(
        units
    ), sorted(units)
    for unit in units.values():
        assert SECTION.search(unit.text), unit.name
    assert serve_unit()
    assert scheduled_units()
    crontab = doc_crontab()
    assert len(crontab) >= 2, crontab
    for _when, command in crontab:
        # cron turns an unescaped % into a newline (the rest goes to stdin).
        assert "%" not in command.replace("\\%", ""), command


# --- the site the units and lines run against -------------------------------------------


@dataclass
class Ops:
    site: Path
    home: Path
    key_file: Path
    env_file: Path
    smtp: RecordingHandler
    web_port: int

    def localize(self, text: str) -> str:
        """The page's server paths pointed at this test's files."""
        text = re.sub(r"(?:/srv/newsletter/)?\.venv/bin/newsletter\b", str(NEWSLETTER), text)
        text = text.replace("/srv/newsletter", str(self.site))
        text = text.replace("/etc/newsletter/secret.key", str(self.key_file))
        text = text.replace("/etc/newsletter/env", str(self.env_file))
        left = re.findall(r"/(?:srv|etc)/newsletter\S*", text)
        assert not left, f"paths in {DOC} this test does not know how to stand in for: {left}"
        return text

    def settings(self) -> config.Settings:
        return config.load(self.site / "config.toml", env={config.SECRET_ENV: SECRET})

    def issues(self) -> list[Issue]:
        sessions = db.open_database(self.settings().database_url)
        try:
            with sessions() as s:
                return list(s.scalars(select(Issue).order_by(Issue.id)))
        finally:
            sessions.kw["bind"].dispose()

    def expected_slot(self, name: str) -> dt.datetime:
        slot = schedule.last_slot(name, self.settings().schedule[name], utcnow())
        assert slot is not None
        return slot


def edit(path: Path, *pairs: tuple[str, str]) -> None:
    text = path.read_text()
    for old, new in pairs:
        assert text.count(old) == 1, f"{path}: expected one {old!r}"
        text = text.replace(old, new)
    path.write_text(text)


def active_members() -> set[str]:
    with (REPO / "subscribers" / "example.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {r["email"].lower() for r in rows if r["status"] in ("", "active")}


@pytest.fixture
def ops(site: Path, smtp_server: RecordingHandler, tmp_path: Path) -> Ops:
    """The sample site on SQLite (var/newsletter.db), its members and items imported, mail to
    the recording SMTP server; the key and env files stand in for /etc/newsletter/."""
    web_port = free_port()
    edit(
        site / "config.toml",
        ("port = 8025", f"port = {smtp_server.port}"),
        ("port = 8000", f"port = {web_port}"),
        ("misfire_grace_seconds = 3600", f"misfire_grace_seconds = {GRACE}"),
        # A deferred row is retried by the next run, not by this one waiting for it.
        ("linger_seconds = 120.0", "linger_seconds = 0.0"),
        ("retry_base_seconds = 60.0", "retry_base_seconds = 0.2"),
    )
    etc = tmp_path / "etc"
    etc.mkdir()
    key_file = etc / "secret.key"
    key_file.write_text(SECRET + "\n")
    env_file = etc / "env"
    env_file.write_text(f"# the service's environment\nNEWSLETTER_SECRET_KEY_FILE={key_file}\n")
    home = tmp_path / "home"
    home.mkdir()
    result = Ops(site, home, key_file, env_file, smtp_server, web_port)
    sessions = db.open_database(result.settings().database_url)
    try:
        import_csv(sessions, site / "subscribers" / "example.csv")
        import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    finally:
        sessions.kw["bind"].dispose()
    if not NEWSLETTER.is_file():
        pytest.skip(f"no `newsletter` script beside {sys.executable} (project not installed)")
    return result


def assert_one_message_per_member(smtp: RecordingHandler) -> None:
    received = smtp.by_recipient()
    assert set(received) == active_members()
    assert all(len(m) == 1 for m in received.values()), {k: len(v) for k, v in received.items()}


# --- systemd -----------------------------------------------------------------------------


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (the CI machine has it)")
    return found


def write_units(ops: Ops, folder: Path) -> list[Path]:
    folder.mkdir()
    paths = []
    for name, unit in doc_units().items():
        path = folder / name
        path.write_text(ops.localize(unit.text))
        paths.append(path)
    return paths


def test_units_pass_systemd_analyze_verify(ops: Ops, tmp_path: Path) -> None:
    analyze = systemd_analyze()
    for name, unit in doc_units().items():
        if name.endswith(".timer"):
            # verify does not mind a timer whose service is missing; systemd would.
            target = unit.value("Timer", "Unit", name.removesuffix(".timer") + ".service")
            assert target in services(), f"{name} starts {target}, which {DOC} does not show"
    paths = write_units(ops, tmp_path / "units")
    # --man=no: no man pages to look for. verify loads the files where they are (no
    # /etc/systemd, no running systemd needed); it checks keys, values and that
    # ExecStart's program exists. Most problems are warnings with exit status 0, so any
    # output at all is a failure.
    result = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def next_fires(cron: str, timezone: str, count: int, now: dt.datetime) -> list[dt.datetime]:
    trigger = schedule.trigger("doc", ScheduleSettings(cron=cron, timezone=timezone))
    fires: list[dt.datetime] = []
    previous = None
    while len(fires) < count:
        fire = trigger.get_next_fire_time(previous, now)
        assert fire is not None
        fires.append(fire.astimezone(dt.UTC))
        previous, now = fire, fire + dt.timedelta(seconds=1)
    return fires


def repo_schedule(name: str) -> ScheduleSettings:
    settings = config.load(REPO / "config.toml", env={config.SECRET_ENV: SECRET})
    assert name in settings.schedule, f"config.toml has no [schedule.{name}]"
    return settings.schedule[name]


def test_timers_fire_at_the_slots_of_their_schedule() -> None:
    analyze = systemd_analyze()
    timers = {n: u for n, u in doc_units().items() if n.endswith(".timer")}
    assert timers
    for name, timer in timers.items():
        service = services()[timer.value("Timer", "Unit", name.removesuffix(".timer") + ".service")]
        (spec,) = timer.values("Timer", "OnCalendar")
        if "--scheduled" not in service.exec_start():  # the retries: a valid spec is enough
            check = subprocess.run([analyze, "calendar", spec], capture_output=True, timeout=60)
            assert check.returncode == 0, (name, spec, check.stderr)
            continue
        sched = repo_schedule(scheduled_name(service.exec_start()))
        now = utcnow()
        result = subprocess.run(
            [analyze, "calendar", "--iterations=4", spec],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TZ": "UTC", "SYSTEMD_LOG_COLOR": "0"},
        )
        assert result.returncode == 0, result.stderr
        elapses = [
            dt.datetime.fromisoformat(t).replace(tzinfo=dt.UTC)
            for t in re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", result.stdout)
        ]
        assert elapses == next_fires(sched.cron, sched.timezone, 4, now), result.stdout


def test_crontab_times_are_the_slots_of_their_schedule() -> None:
    # The page says the machine's time zone (which cron uses) is UTC.
    lines = [(w, c) for w, c in doc_crontab() if "--scheduled" in c]
    assert lines
    for when, command in lines:
        sched = repo_schedule(scheduled_name(shlex.split(command)))
        now = utcnow()
        assert next_fires(when, "UTC", 4, now) == next_fires(sched.cron, sched.timezone, 4, now)


def unit_environment(unit: Unit, ops: Ops) -> dict[str, str]:
    """A service's environment as systemd builds it (User= ignored: we run as ourselves)."""
    env = {"PATH": SYSTEMD_PATH, "HOME": str(ops.home), "LANG": "C.UTF-8"}
    for assignments in unit.values("Service", "Environment"):
        for item in shlex.split(ops.localize(assignments)):
            key, _, value = item.partition("=")
            env[key] = value
    for name in unit.values("Service", "EnvironmentFile"):
        path = Path(ops.localize(name).lstrip("-"))
        if name.startswith("-") and not path.exists():
            continue
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line and line[0] not in "#;":
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip().strip("'\"")
    return env


def unit_command(unit: Unit, ops: Ops) -> tuple[list[str], Path, dict[str, str]]:
    argv = shlex.split(ops.localize(shlex.join(unit.exec_start())))
    workdir = Path(ops.localize(unit.value("Service", "WorkingDirectory", "/")).lstrip("-"))
    return argv, workdir, unit_environment(unit, ops)


@pytest.mark.parametrize("unit_name", [u.name for u in scheduled_units()])
def test_scheduled_unit_mails_the_members(unit_name: str, ops: Ops) -> None:
    unit = services()[unit_name]
    assert unit.value("Service", "Type") == "oneshot"
    argv, workdir, env = unit_command(unit, ops)
    name = scheduled_name(argv)
    slot = ops.expected_slot(name)
    result = subprocess.run(
        argv,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"schedule {name}, slot {slot.isoformat()}: made" in " ".join(result.stdout.split()), (
        result.stdout
    )
    assert_one_message_per_member(ops.smtp)
    (issue,) = ops.issues()
    assert (issue.schedule, issue.slot_at, issue.status) == (name, slot, "sent")


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_serve_unit_answers_and_stops_on_its_kill_signal(
    ops: Ops, started: list[subprocess.Popen[str]]
) -> None:
    unit = serve_unit()
    argv, workdir, env = unit_command(unit, ops)
    proc = subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started.append(proc)
    home = f"http://127.0.0.1:{ops.web_port}/"
    deadline = time.monotonic() + 90
    while (status := http_status(home)) is None:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the web app did not answer"
        time.sleep(0.2)
    assert status == 200
    kill = unit.value("Service", "KillSignal", "SIGTERM")
    stop_timeout = unit.value("Service", "TimeoutStopSec", "90")
    proc.send_signal(signal.Signals[kill if kill.startswith("SIG") else "SIG" + kill])
    # systemd sends SIGKILL after TimeoutStopSec: the process must be gone by then.
    out, _ = proc.communicate(timeout=float(stop_timeout.removesuffix("s")))
    # On SIGTERM systemd takes exit status 0 or death by SIGTERM as a clean stop (no restart).
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert f"serving {ops.settings().list.name}" in out


# --- cron --------------------------------------------------------------------------------


def cron_run(command: str, ops: Ops) -> subprocess.CompletedProcess[str]:
    """A crontab command as cron runs it: /bin/sh -c, in HOME, with cron's few variables."""
    env = {"HOME": str(ops.home), "LOGNAME": "newsletter", "PATH": "/usr/bin:/bin"}
    env["SHELL"] = "/bin/sh"
    return subprocess.run(
        ["/bin/sh", "-c", ops.localize(command)],
        cwd=ops.home,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def crontab_command(scheduled: bool) -> str:
    (command,) = [c for _w, c in doc_crontab() if ("--scheduled" in c) == scheduled]
    return command


def cron_log(ops: Ops, command: str) -> Path:
    targets: list[str] = re.findall(r">>\s*(\S+)", command)
    (target,) = targets
    return ops.site / target


def test_crontab_lines_send_the_slot_then_retry_what_was_deferred(ops: Ops) -> None:
    weekly, retries = crontab_command(True), crontab_command(False)
    name = scheduled_name(shlex.split(weekly))
    slot = ops.expected_slot(name)
    late = sorted(active_members())[0]
    ops.smtp.faults[late] = ["451"]  # one member's server says "try again later", once

    first = cron_run(weekly, ops)
    # Cron mails whatever a job prints: the line's redirect leaves it nothing to mail.
    assert first.returncode == 0, first
    assert first.stdout + first.stderr == "", first
    log = cron_log(ops, weekly).read_text()
    # Rich wraps its output at 80 columns when it is not writing to a terminal.
    assert f"schedule {name}, slot {slot.isoformat()}: made" in " ".join(log.split()), log
    assert "deferred" in log
    assert late not in ops.smtp.by_recipient()
    assert ops.smtp.count() == len(active_members()) - 1
    (issue,) = ops.issues()
    assert (issue.schedule, issue.slot_at) == (name, slot)

    time.sleep(0.3)  # the deferred row falls due (retry_base_seconds = 0.2, ±20 %)
    second = cron_run(retries, ops)
    assert second.returncode == 0, second
    assert second.stdout + second.stderr == "", second
    assert_one_message_per_member(ops.smtp)
    (issue,) = ops.issues()
    assert issue.status == "sent"
    assert cron_log(ops, retries).read_text().startswith(log)  # appended to, not replaced


def test_retry_line_leaves_new_items_for_the_scheduled_issue(ops: Ops) -> None:
    # Items imported mid-week wait for Monday's slot; the retry line has nothing to do.
    result = cron_run(crontab_command(False), ops)
    assert result.returncode == 0, result
    assert ops.issues() == []
    assert ops.smtp.count() == 0
