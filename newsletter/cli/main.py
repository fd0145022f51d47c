"""The `newsletter` command: editor and operator commands, each a thin call into the modules."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config as config_mod
from newsletter.config import Settings
from newsletter.content import compiler as issues
from newsletter.content import sources
from newsletter.content.preview import write_preview
from newsletter.delivery.engine import Engine, Summary
from newsletter.delivery.sink import DiscardHandler, OutboxHandler, ServerThread, serve_forever
from newsletter.errors import ConfigError, NewsletterError, NothingToSend
from newsletter.services import members
from newsletter.services import sending as publish
from newsletter.site import environment, scaffold
from newsletter.storage import db
from newsletter.storage import queries as store
from newsletter.storage.ledger import Outcome
from newsletter.storage.models import FAILED, PAUSED, SENT, SKIPPED, Issue, Survey

T = TypeVar("T")
# soft_wrap: a line of text is never broken by Rich (a terminal wraps it; a cron log keeps it
# whole, where Rich would otherwise break it at 80 columns). Tables still fit the width.
# markup=False: what is printed quotes files and feeds ("[/b]" in a CSV row, a title), and
# Rich would read it as markup: swallow "[red]", or stop with a MarkupError traceback.
console = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Compile new items into an HTML newsletter and deliver it to every member.",
)
subscribers_app = typer.Typer(no_args_is_help=True, help="Import and inspect the member list.")
items_app = typer.Typer(no_args_is_help=True, help="Import and inspect news items.")
issue_app = typer.Typer(no_args_is_help=True, help="Look at the next issue before it goes out.")
db_app = typer.Typer(no_args_is_help=True, help="Create or migrate the database.")
survey_app = typer.Typer(no_args_is_help=True, help="Survey results, and closing a survey.")
app.add_typer(subscribers_app, name="subscribers")
app.add_typer(items_app, name="items")
app.add_typer(issue_app, name="issue")
app.add_typer(db_app, name="db")
app.add_typer(survey_app, name="survey")


class State:
    config_path: Path = Path("config.toml")
    _settings: Settings | None = None
    _sessions: sessionmaker[Session] | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = config_mod.load(self.config_path)
        return self._settings

    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            self._sessions = db.open_database(self.settings().database_url)
        return self._sessions

    def close(self) -> None:
        if self._sessions is not None:
            self._sessions.kw["bind"].dispose()
        self._settings = self._sessions = None


state = State()


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[
        Path,
        typer.Option(
            "--config", "-c", help="The site's config.toml; templates/ is read from beside it."
        ),
    ] = Path("config.toml"),
) -> None:
    state.close()
    state.config_path = config
    ctx.call_on_close(state.close)


# --- site and database -------------------------------------------------------------------


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="The folder for the new site.")]) -> None:
    """Create a new site folder: config.toml, templates/, subscribers/example.csv, examples/."""
    created = scaffold(directory)
    for path in created:
        console.print(f"created {path}")
    if not created:
        console.print(f"{directory} already has every file; nothing changed")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database, or bring its schema to the current version."""
    settings = state.settings()
    db.upgrade(db.make_engine(settings.database_url))
    console.print(f"database is current: {_safe_url(settings.database_url)}")


# --- members ---------------------------------------------------------------------------------


@subscribers_app.command("import")
def subscribers_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="A CSV file with an 'email' column; 'name', 'status' and any others optional."
        ),
    ],
) -> None:
    """Import members from CSV: addresses are normalised, duplicates merged, opt-outs kept."""
    sessions = state.sessions()
    with _progress() as progress:
        task = progress.add_task("importing members", total=None)
        report = members.import_csv(sessions, file, progress=lambda n: progress.advance(task, n))
    for problem in report.errors:
        err.print(f"{file}:{problem}")
    console.print(
        f"{file}: {report.rows} rows, {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.merged} duplicates merged, "
        f"{report.unsubscribed} unsubscribed, {report.kept_unsubscribed} kept unsubscribed, "
        f"{len(report.errors)} rejected"
    )
    if report.errors:
        raise typer.Exit(1)


@subscribers_app.command("list")
def subscribers_list(
    status: Annotated[str | None, typer.Option(help="Only members with this status.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
) -> None:
    """Show members and how many there are of each status."""
    from sqlalchemy import select

    from newsletter.storage.models import Member

    with state.sessions()() as session:
        query = select(Member).order_by(Member.id).limit(limit)
        if status:
            query = query.where(Member.status == status)
        table = Table("id", "email", "name", "status")
        for m in session.scalars(query):
            table.add_row(str(m.id), m.email, m.name, m.status)
        console.print(table)
        counts = store.member_counts(session)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no members")


# --- items ----------------------------------------------------------------------------------


@items_app.command("import")
def items_import(
    source: Annotated[
        str,
        typer.Argument(
            help="An RSS/Atom feed (file or http(s) URL), or a folder of Markdown files."
        ),
    ],
    section: Annotated[
        str | None,
        typer.Option(help="Put every item in this section (default: the feed's category)."),
    ] = None,
) -> None:
    """Import items; an item already known by its GUID is left as it is.

    Exits 1 when an entry or file was refused or a GUID repeated (each is named on stderr);
    the good entries are stored all the same.
    """
    limit = state.settings().items.size_limit
    report = sources.import_source(state.sessions(), source, section=section, size_limit=limit)
    for problem in report.problems:
        err.print(problem)
    console.print(
        f"{source}: {report.found} items, {report.added} new, {report.known} already known, "
        f"{report.duplicates} duplicates, {report.rejected} rejected"
    )
    if report.rejected or report.duplicates:
        raise typer.Exit(1)


@items_app.command("list")
def items_list(
    new: Annotated[
        bool, typer.Option("--new", help="Only items not yet sent in an issue.")
    ] = False,
) -> None:
    """Show items, newest last."""
    from sqlalchemy import select

    from newsletter.storage.models import Item

    with state.sessions()() as session:
        rows = (
            store.new_items(session, 10_000)
            if new
            else session.scalars(select(Item).order_by(Item.id)).all()
        )
        table = Table("id", "section", "title", "published")
        for item in rows:
            table.add_row(str(item.id), item.section, item.title, str(item.published_at or ""))
        console.print(table)


# --- issues and sending ---------------------------------------------------------------------


@issue_app.command("preview")
def issue_preview(
    out: Annotated[
        Path | None, typer.Option(help="The folder for the files (default: issue.preview_dir).")
    ] = None,
    png: Annotated[
        bool,
        typer.Option("--png", help="Also render it in headless Chromium at 600 and 375 px wide."),
    ] = False,
) -> None:
    """Write the next issue's HTML, text and .eml to files without sending or storing anything."""
    settings = state.settings()
    sessions = state.sessions()
    with sessions() as session:
        compiled = issues.compile_next(session, settings, environment(settings.site_dir))
        session.rollback()  # a preview changes nothing, not even the survey table
    files = write_preview(compiled, settings, out or settings.path(settings.issue.preview_dir))
    console.print(f"subject: {compiled.subject}")
    console.print(
        f"{len(compiled.item_ids)} items, HTML {compiled.html_bytes_estimate():,} bytes after inlining"
    )
    console.print(f"wrote {files.html}\nwrote {files.text}\nwrote {files.eml}")
    if png:
        from newsletter.content.preview import screenshots

        for path in screenshots(files.html):
            console.print(f"wrote {path}")


@app.command()
def send(
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            "-p",
            min=1,
            help="Sender processes sharing the issue through the ledger (one per core is a good start).",
        ),
    ] = 1,
    scheduled: Annotated[
        str | None,
        typer.Option(
            "--scheduled",
            metavar="NAME",
            help="Do what the scheduler does for [schedule.NAME]: make (or join) the issue of its latest slot.",
        ),
    ] = None,
) -> None:
    """Send: finish interrupted or deferred deliveries, then the next issue to every active member.

    Safe to run again at any time (from cron, say): an interrupted send resumes where it
    stopped, and a member is never mailed twice by design (at most the in-flight window,
    delivery.in_flight, after a hard crash).
    """
    settings, sessions = state.settings(), state.sessions()
    if scheduled is not None:
        _send_scheduled(settings, sessions, scheduled)
        return
    helpers: list[subprocess.Popen[bytes]] = []
    if processes > 1:
        with contextlib.suppress(NothingToSend):
            publish.release_next(settings, sessions)
        if publish.unfinished(sessions):
            helpers = [_spawn_worker() for _ in range(processes - 1)]
    try:
        summaries = _send(settings, sessions)
    finally:
        codes = [p.wait() for p in helpers]
    if any(codes):
        err.print(f"a helper sender process failed (exit codes {codes})")
    _exit_if_stopped()
    if any(s.counts.get(FAILED) or s.status == PAUSED for s in summaries) or any(codes):
        raise typer.Exit(1)


def _send_scheduled(settings: Settings, sessions: sessionmaker[Session], name: str) -> None:
    from newsletter import schedule
    from newsletter.storage.models import utcnow

    if name not in settings.schedule:
        known = ", ".join(sorted(settings.schedule)) or "none"
        raise ConfigError(f"schedule.{name}", f"no such schedule in config.toml (known: {known})")
    slot = schedule.last_slot(name, settings.schedule[name], utcnow())
    if slot is None:
        console.print(
            f"schedule {name}: no slot within the last {settings.schedule[name].misfire_grace_seconds} s"
        )
        return
    result = asyncio.run(schedule.fire(settings, sessions, name, slot))
    console.print(f"schedule {name}, slot {slot.isoformat()}: {result.reason}")
    if result.summary is not None:
        _print_summary(result.summary)
        if result.summary.counts.get(FAILED) or result.summary.status == PAUSED:
            raise typer.Exit(1)  # as a plain `send` does


def _spawn_worker() -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "newsletter",
        "--config",
        str(state.config_path),
        "worker",
        "--once",
        "--quiet",
    ]
    return subprocess.Popen(command)


@app.command()
def worker(
    once: Annotated[
        bool, typer.Option("--once", help="Exit when no issue has rows to send.")
    ] = False,
    poll: Annotated[float, typer.Option(help="Seconds between looks for work when idle.")] = 5.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or summary.")] = False,
) -> None:
    """Deliver rows of unfinished issues, sharing them with any other senders through the ledger.

    Never compiles an issue: `send` (or the scheduler) releases issues; any number of
    workers, here or on other machines, then claim their rows under a lease.
    """
    settings, sessions = state.settings(), state.sessions()

    async def quietly(issue: Issue) -> Summary:
        # The same clean stop on SIGINT/SIGTERM as with the progress bar.
        engines: list[Engine] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _stop_all, engines, sig)
        run = publish.Run(on_start=lambda engine, _total: engines.append(engine))
        return await publish.deliver(settings, sessions, issue, run)

    while True:
        for issue in publish.unfinished(sessions):
            if quiet:
                summary = asyncio.run(quietly(issue))
            else:
                job = functools.partial(publish.deliver, settings, sessions, issue)
                summary = _with_progress(job)
                _print_summary(summary)
            if summary.pause_reason == STOPPED:
                return  # its unsent rows went back to the queue; a stop signal ends the worker
        if once:
            return
        time.sleep(poll)


@app.command()
def retry(
    issue_id: Annotated[int, typer.Argument(help="The issue whose failed deliveries to retry.")],
) -> None:
    """Re-queue an issue's failed deliveries (those past the retry deadline) and send them."""
    settings, sessions = state.settings(), state.sessions()
    summary = _with_progress(lambda run: publish.retry(settings, sessions, issue_id, run))
    _print_summary(summary)
    _exit_if_stopped()


def _with_progress(job: Callable[[publish.Run], Coroutine[Any, Any, T]]) -> T:
    """Run a send with a live progress bar (rate, ETA, failures); Ctrl-C or SIGTERM stop it cleanly."""
    with _progress() as progress:
        tasks: dict[int, TaskID] = {}
        failures: dict[int, int] = {}
        engines: list[Engine] = []

        pending = [0]

        def flush() -> None:
            if engines and pending[0]:
                progress.update(tasks[engines[-1].issue.id], advance=pending[0])
            pending[0] = 0

        def on_start(engine: Engine, total: int) -> None:
            flush()  # the last ticks of the issue before
            engines.append(engine)
            issue_id = engine.issue.id
            failures[issue_id] = 0
            tasks[issue_id] = progress.add_task(f"issue #{issue_id}", total=total)

        def tick(outcome: Outcome) -> None:
            # Called for every message: touch the bar only every 25 outcomes or on a failure,
            # so drawing it costs the sender next to nothing.
            issue_id = engines[-1].issue.id
            pending[0] += 1
            failed = outcome.status not in (SENT, SKIPPED)
            if failed:
                failures[issue_id] += 1
            if failed or pending[0] >= 25:
                progress.update(
                    tasks[issue_id],
                    advance=pending[0],
                    description=f"issue #{issue_id} · {failures[issue_id]} not sent",
                )
                pending[0] = 0

        async def main() -> T:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, _stop_all, engines, sig)
            result = await job(publish.Run(progress=tick, on_start=on_start))
            flush()
            return result

        return asyncio.run(main())


STOPPED = "stopped by a signal"
_signals: list[int] = []  # the stop signals this process received


def _stop_all(engines: list[Engine], signum: int = signal.SIGTERM) -> None:
    _signals.append(signum)
    for engine in engines:
        engine.stop(STOPPED)


def _exit_if_stopped() -> None:
    """After a send that a signal cut short: say so, and exit 128 + the signal, as shells do,
    so that cron or a wrapper can tell a stopped run from a finished one."""
    if _signals:
        err.print(f"{STOPPED}: the rest stays queued; `newsletter send` resumes it")
        raise typer.Exit(128 + _signals[0])


def _send(settings: Settings, sessions: sessionmaker[Session]) -> list[Summary]:
    try:
        summaries = _with_progress(lambda run: publish.send(settings, sessions, run))
    except NothingToSend as exc:
        console.print(str(exc))
        return []
    for summary in summaries:
        _print_summary(summary)
    return summaries


def _print_summary(summary: Summary) -> None:
    table = Table(title=f"issue #{summary.issue_id}: {summary.status}")
    table.add_column("deliveries")
    table.add_column("members", justify="right")
    for status in ("sent", "deferred", "failed", "bounced", "skipped", "queued", "sending"):
        if summary.counts.get(status) or status in ("sent", "failed"):
            table.add_row(status, str(summary.counts.get(status, 0)))
    console.print(table)
    console.print(
        f"{summary.attempted} attempts in {summary.elapsed:.2f}s ({summary.rate:.0f} msg/s)"
    )
    if summary.status == PAUSED:
        err.print(f"issue #{summary.issue_id} is paused: {summary.pause_reason}")
    if summary.counts.get("deferred"):
        console.print(
            "deferred deliveries are retried once due by `newsletter worker --once` "
            "(or the next `newsletter send`, which also sends any new items)"
        )


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid, as in some containers
        return f"cli:uid-{os.getuid()}"


@issue_app.command("list")
def issue_list(limit: Annotated[int, typer.Option(help="Show at most this many.")] = 20) -> None:
    """Issues, newest first, with their progress."""
    from newsletter.services import desk

    table = Table("#", "status", "subject", "sent", "of", "done", "created")
    for info in desk.list_issues(state.sessions(), limit):
        table.add_row(
            str(info.id),
            info.status,
            info.subject,
            str(info.sent),
            str(info.total),
            f"{info.percent:.0f}%",
            info.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@issue_app.command("show")
def issue_show(issue_id: Annotated[int, typer.Argument(help="The issue.")]) -> None:
    """One issue: subject, status, its items and its delivery counts."""
    from newsletter.services import desk

    sessions = state.sessions()
    info = desk.issue_info(sessions, issue_id)
    console.print(f"issue #{info.id}: {info.subject}")
    console.print(info.summary + (f" (paused: {info.pause_reason})" if info.pause_reason else ""))
    with sessions() as session:
        for item in store.issue_items(session, issue_id):
            console.print(f"  · [{item.section}] {item.title}")
    console.print(
        ", ".join(f"{n} {st}" for st, n in sorted(info.counts.items())) or "no deliveries"
    )


@issue_app.command("status")
def issue_status(
    issue_id: Annotated[int, typer.Argument(help="The issue.")],
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow a running send with a live progress bar.")
    ] = False,
) -> None:
    """Progress of an issue's send (queued, sent, failed, bounced); --watch follows it live."""
    from newsletter.services import desk

    sessions = state.sessions()
    info = desk.issue_info(sessions, issue_id)
    if watch and info.status == "sending":
        with _progress() as progress:
            task = progress.add_task(f"issue #{issue_id}", total=info.total, completed=info.done)
            while info.status == "sending":
                time.sleep(0.5)
                info = desk.issue_info(sessions, issue_id)
                progress.update(task, completed=info.done)
    table = Table(title=info.summary)
    table.add_column("deliveries")
    table.add_column("members", justify="right")
    for status in (
        "queued",
        "sending",
        "sent",
        "deferred",
        "failed",
        "bounced",
        "skipped",
        "cancelled",
    ):
        if info.counts.get(status) or status in ("queued", "sent", "failed", "bounced"):
            table.add_row(status, str(info.counts.get(status, 0)))
    console.print(table)


@issue_app.command("test")
def issue_test(
    to: Annotated[str, typer.Option("--to", help="The one address to send the test to.")],
    issue_id: Annotated[
        int | None, typer.Option("--issue", help="A stored issue (default: the next one).")
    ] = None,
) -> None:
    """Send one copy of the next issue (or issue N), marked [TEST], to one address.

    Nothing is stored and nothing counts as the issue's send.
    """
    from newsletter.services import desk

    settings, sessions = state.settings(), state.sessions()
    message_id = asyncio.run(desk.test_send(settings, sessions, to, issue_id, actor=_actor()))
    console.print(f"test sent to {to}: {message_id}")


@issue_app.command("send")
def issue_send() -> None:
    """The same as `newsletter send`: finish what is pending, then send the next issue."""
    send(processes=1, scheduled=None)


@issue_app.command("pause")
def issue_pause(issue_id: Annotated[int, typer.Argument(help="The issue to pause.")]) -> None:
    """Pause a sending issue: every running send stops within a moment, keeping its place."""
    from newsletter.services import desk

    console.print(desk.pause(state.sessions(), issue_id, actor=_actor()).summary + " (paused)")


@issue_app.command("resume")
def issue_resume(issue_id: Annotated[int, typer.Argument(help="The issue to resume.")]) -> None:
    """Resume a paused issue and continue sending it from where it stopped."""
    from newsletter.services import desk

    settings, sessions = state.settings(), state.sessions()
    desk.resume(sessions, issue_id, actor=_actor())
    console.print(f"issue #{issue_id} resumed")
    issue = publish.get_issue(sessions, issue_id)
    _print_summary(_with_progress(functools.partial(publish.deliver, settings, sessions, issue)))
    _exit_if_stopped()


@issue_app.command("cancel")
def issue_cancel(issue_id: Annotated[int, typer.Argument(help="The issue to cancel.")]) -> None:
    """Cancel an issue: no more of its messages go out; the status says how many did."""
    from newsletter.services import desk

    console.print(desk.cancel(state.sessions(), issue_id, actor=_actor()).summary)


editor_app = typer.Typer(no_args_is_help=True, help="Editors' accounts for the editor's pages.")
app.add_typer(editor_app, name="editor")


@editor_app.command("hash-password")
def editor_hash_password() -> None:
    """Ask for a password and print the password_hash line for an [[editor]] in config.toml."""
    from newsletter.services import desk

    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 12:
        raise NewsletterError("use a password of at least 12 characters")
    console.print(f'password_hash = "{desk.hash_password(password)}"')


@app.command("smtp-sink")
def smtp_sink(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: smtp.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default: smtp.port).")
    ] = None,
    outbox: Annotated[
        Path | None, typer.Option(help="Folder for .eml files (default: sink.outbox).")
    ] = None,
    discard: Annotated[
        bool, typer.Option("--discard", help="Accept and drop messages (for benchmarks).")
    ] = False,
) -> None:
    """Run the bundled SMTP sink: accept every message and write it to the outbox as .eml."""
    settings = state.settings()
    folder = outbox or settings.path(settings.sink.outbox)
    h, p = host or settings.smtp.host, port if port is not None else settings.smtp.port
    handler: OutboxHandler | DiscardHandler
    if discard:
        handler = DiscardHandler()
        console.print(f"SMTP sink on {h}:{p}, discarding every message (Ctrl-C stops)")
    else:
        handler = OutboxHandler(folder, lambda path: console.print(f"received {path.name}"))
        console.print(f"SMTP sink on {h}:{p}, writing to {folder}/ (Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(handler, h, p))
    console.print(f"stopped after {handler.count} messages")


def _find_survey(session: Session, key: str | None) -> Survey:
    from sqlalchemy import select

    query = select(Survey).order_by(Survey.id.desc())
    if key:
        query = query.where(
            (Survey.key == key) | (Survey.id == (int(key) if key.isdigit() else -1))
        )
    survey = session.scalars(query.limit(1)).first()
    if survey is None:
        raise NewsletterError(f"no survey {key!r}" if key else "there is no survey yet")
    return survey


@survey_app.command("results")
def survey_results(
    survey: Annotated[
        str | None, typer.Argument(help="Survey key or id (default: the newest).")
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write every counted vote to this CSV file.")
    ] = None,
) -> None:
    """Print the results as counts, percentages and a bar chart; optionally export the votes."""
    import csv as csv_mod

    from sqlalchemy import select

    from newsletter.services import votes
    from newsletter.storage.models import Member, Vote, utcnow

    sessions = state.sessions()
    with sessions.begin() as session:
        row = _find_survey(session, survey)
        votes.settle(session, utcnow(), votes.VoteRule.from_settings(state.settings()))
        results = votes.results(session, row.id)
        table = Table(title=f"{results.question} ({results.status})", title_justify="left")
        table.add_column("option")
        table.add_column("votes", justify="right")
        table.add_column("%", justify="right")
        table.add_column("", min_width=30)
        for o in results.options:
            bar = "█" * round(o.percent * 0.3) or ("▏" if o.votes else "")
            table.add_row(o.label, str(o.votes), f"{o.percent:.1f}", bar)
        console.print(table)
        console.print(f"{results.total} members voted")
        if csv_path is not None:
            rows = session.execute(
                select(Member.email, Vote.option, Vote.counted_at)
                .join(Member, Member.id == Vote.member_id)
                .where(Vote.survey_id == row.id, Vote.option.is_not(None))
                .order_by(Vote.counted_at)
            ).all()
            labels = {o.position: o.label for o in results.options}
            with csv_path.open("w", newline="", encoding="utf-8") as f:
                writer = csv_mod.writer(f)
                writer.writerow(["email", "option", "label", "counted_at"])
                for email, option, counted_at in rows:
                    writer.writerow(
                        [
                            email,
                            option,
                            labels.get(option or 0, ""),
                            counted_at.isoformat() if counted_at else "",
                        ]
                    )
            console.print(f"wrote {len(rows)} votes to {csv_path}")


@survey_app.command("close")
def survey_close(
    survey: Annotated[
        str | None, typer.Argument(help="Survey key or id (default: the newest).")
    ] = None,
) -> None:
    """Close a survey: its links then show the final results and record nothing."""
    from newsletter.services import votes
    from newsletter.storage.models import utcnow

    with state.sessions().begin() as session:
        row = _find_survey(session, survey)
        votes.settle(
            session, utcnow(), votes.VoteRule.from_settings(state.settings())
        )  # clicks still pending get decided first
        row.status, row.closed_at = "closed", utcnow()
        console.print(f"survey {row.key!r} closed")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: web.host).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: web.port).")] = None,
    scheduler: Annotated[
        bool,
        typer.Option(
            "--scheduler/--no-scheduler",
            help="Also fire the [schedule.*] slots when elected (of the serve processes on "
            "one database, one fires them).",
        ),
    ] = True,
) -> None:
    """Run the web app (member and editor pages) and the scheduler, in one process and loop.

    Several serve processes (on several machines) may share one database: they elect one
    leader to fire the schedules, using a PostgreSQL advisory lock (a lease row on SQLite),
    and the others only serve the web app until the leader is gone.
    """
    import logging

    import uvicorn

    from newsletter import schedule
    from newsletter.web.members import create_app

    settings = state.settings()
    if scheduler:  # a bad cron or time zone stops serve here, not in the leader later
        for name, sched in settings.schedule.items():
            schedule.trigger(name, sched)
    app_ = create_app(settings, state.sessions())
    h, p = host or settings.web.host, port if port is not None else settings.web.port
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    console.print(
        f"serving {settings.list.name} on http://{h}:{p} (links in mail use {settings.list.base_url})"
    )

    async def main() -> None:
        elected = None
        if scheduler and settings.schedule:
            elected = asyncio.create_task(schedule.run_elected(settings))

        async def stop_electing() -> None:
            # Stops the scheduler and hands the lead back, so a standby takes over at once.
            if elected is not None and not elected.done():
                elected.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await elected

        class Server(uvicorn.Server):
            # After a SIGTERM or SIGINT uvicorn re-raises the signal once it has stopped, which
            # ends the process before serve() returns: so stop electing while it shuts down.
            async def shutdown(self, sockets: Any = None) -> None:
                await stop_electing()
                await super().shutdown(sockets)

        server = Server(uvicorn.Config(app_, host=h, port=p, log_level="info"))
        try:
            await server.serve()
        finally:
            await stop_electing()

    asyncio.run(main())


@app.command()
def demo() -> None:
    """Run the whole sample: database, members, items, the bundled sink, one issue into var/outbox/."""
    settings = state.settings()
    if not settings.secret_keys:
        settings = _demo_secret(settings)
    sessions = db.open_database(settings.database_url)
    csv_path = settings.path("subscribers/example.csv")
    report = members.import_csv(sessions, csv_path)
    for problem in report.errors:
        err.print(f"{csv_path}:{problem}")
    feed = settings.path("examples/seed-feed.xml")
    items_report = sources.import_source(sessions, str(feed))
    console.print(
        f"members: {report.added} added from {csv_path.name}; items: {items_report.added} new from {feed.name}"
    )
    outbox = settings.path(settings.sink.outbox)
    handler = OutboxHandler(outbox)
    with ServerThread(handler, settings.smtp.host, settings.smtp.port):
        console.print(f"bundled SMTP sink listening on {settings.smtp.host}:{settings.smtp.port}")
        summaries = _send(settings, sessions)
    summary = summaries[-1] if summaries else None
    with sessions() as session:
        counts = store.member_counts(session)
        new_left = store.count_new_items(session)
    console.print()
    console.print(
        f"members: {counts.get('active', 0)} active, {sum(counts.values()) - counts.get('active', 0)} not mailed"
    )
    if summary is None:
        console.print(
            f"items: {new_left} new; no message sent. Add items and run `make demo` again."
        )
        return
    with sessions() as session:
        row = session.get(Issue, summary.issue_id)
        assert row is not None
        n_items = len(store.issue_items(session, row.id))
        files = write_preview(
            issues.from_row(row), settings, settings.path(settings.issue.preview_dir), row.id
        )
    console.print(f"items: {n_items} in issue #{summary.issue_id}")
    not_sent = sum(summary.counts.get(k, 0) for k in ("failed", "bounced", "deferred"))
    console.print(f"delivered: {summary.counts.get('sent', 0)}, failed: {not_sent}")
    console.print(f"outbox: {outbox}/ ({handler.count} .eml files written by this run)")
    console.print(f"preview: {files.html} and {files.text}")


def _demo_secret(settings: Settings) -> Settings:
    """The demo's stand-in signing key: generated once into var/secret.key, git-ignored."""
    key_file = settings.path("var/secret.key")
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
        key_file.chmod(0o600)
        console.print(
            f"generated a demo signing key in {key_file} (set NEWSLETTER_SECRET_KEY for real use)"
        )
    env = dict(os.environ, **{config_mod.SECRET_FILE_ENV: str(key_file)})
    return config_mod.load(settings.config_path, env=env)


class RateColumn(ProgressColumn):
    """Items per second, from Rich's own speed estimate."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f}/s" if task.speed else "–/s")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        refresh_per_second=4,
    )


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except NewsletterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
