"""The `newsletter` command: editor and operator commands, each a thin call into the modules."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config as config_mod
from newsletter import db, members, publish, sources, store
from newsletter import issue as issues
from newsletter.config import Settings
from newsletter.deliver import Outcome, Summary
from newsletter.errors import ConfigError, NewsletterError, NothingToSend
from newsletter.models import FAILED, SENT, Issue
from newsletter.preview import write_preview
from newsletter.sink import OutboxHandler, ServerThread, serve_forever
from newsletter.site import environment, scaffold

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

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
app.add_typer(subscribers_app, name="subscribers")
app.add_typer(items_app, name="items")
app.add_typer(issue_app, name="issue")
app.add_typer(db_app, name="db")


class State:
    config_path: Path = Path("config.toml")
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = config_mod.load(self.config_path)
        return self._settings

    def sessions(self) -> sessionmaker[Session]:
        return db.open_database(self.settings().database_url)


state = State()


@app.callback()
def _main(
    config: Annotated[
        Path,
        typer.Option(
            "--config", "-c", help="The site's config.toml; templates/ is read from beside it."
        ),
    ] = Path("config.toml"),
) -> None:
    state.config_path = config
    state._settings = None


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

    from newsletter.models import Member

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
    """Import items; an item already known by its GUID is left as it is."""
    report = sources.import_source(state.sessions(), source, section=section)
    for problem in report.problems:
        err.print(problem)
    console.print(
        f"{source}: {report.found} items, {report.added} new, {report.known} already known"
    )


@items_app.command("list")
def items_list(
    new: Annotated[
        bool, typer.Option("--new", help="Only items not yet sent in an issue.")
    ] = False,
) -> None:
    """Show items, newest last."""
    from sqlalchemy import select

    from newsletter.models import Item

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


@app.command()
def send() -> None:
    """Send the next issue to every active member, or resume an interrupted send."""
    settings = state.settings()
    summary = _send(settings, state.sessions())
    if summary is None:
        return
    if summary.counts.get(FAILED):
        raise typer.Exit(1)


def _send(settings: Settings, sessions: sessionmaker[Session]) -> Summary | None:
    try:
        prepared = publish.prepare(settings, sessions)
    except NothingToSend as exc:
        console.print(str(exc))
        return None
    verb = "resuming" if prepared.resumed else "sending"
    console.print(f"{verb} issue #{prepared.issue.id}: {prepared.issue.subject}")
    with _progress() as progress:
        task = progress.add_task(f"issue #{prepared.issue.id}", total=prepared.queued)
        failures = 0

        def tick(outcome: Outcome) -> None:
            nonlocal failures
            failures += outcome.status != SENT
            progress.update(
                task, advance=1, description=f"issue #{prepared.issue.id} ({failures} failed)"
            )

        summary = asyncio.run(publish.deliver(settings, sessions, prepared, progress=tick))
    _print_summary(summary)
    return summary


def _print_summary(summary: Summary) -> None:
    table = Table(title=f"issue #{summary.issue_id}")
    table.add_column("status")
    table.add_column("members", justify="right")
    for status in ("sent", "failed", "bounced", "skipped", "queued"):
        table.add_row(status, str(summary.counts.get(status, 0)))
    console.print(table)
    console.print(
        f"{summary.attempted} messages in {summary.elapsed:.2f}s ({summary.rate:.0f} msg/s)"
    )


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
) -> None:
    """Run the bundled SMTP sink: accept every message and write it to the outbox as .eml."""
    settings = state.settings()
    folder = outbox or settings.path(settings.sink.outbox)
    h, p = host or settings.smtp.host, port if port is not None else settings.smtp.port
    console.print(f"SMTP sink on {h}:{p}, writing to {folder}/ (Ctrl-C stops)")
    try:
        asyncio.run(
            serve_forever(folder, h, p, lambda path: console.print(f"received {path.name}"))
        )
    except KeyboardInterrupt:
        console.print("stopped")


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
        summary = _send(settings, sessions)
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
    console.print(
        f"delivered: {summary.counts.get('sent', 0)}, failed: {summary.counts.get('failed', 0) + summary.counts.get('bounced', 0)}"
    )
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


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        err.print(f"error: {exc}")
        sys.exit(2)
    except NewsletterError as exc:
        err.print(f"error: {exc}")
        sys.exit(1)
