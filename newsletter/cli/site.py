"""`newsletter init`, `db upgrade`, `serve`, `smtp-sink` and `demo`: the site and its processes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from newsletter import config as config_mod
from newsletter.cli.app import actor, app, console, err, group, safe_url, state
from newsletter.cli.sending import run_send
from newsletter.config import Settings
from newsletter.content.preview import write_preview
from newsletter.delivery.sink import (
    DiscardHandler,
    OutboxHandler,
    ServerThread,
    bound_port,
    start_server,
)
from newsletter.errors import NewsletterError
from newsletter.services import issues, items, members
from newsletter.site import Answers, BadAnswer, scaffold, scaffold_neutral
from newsletter.storage import db
from newsletter.storage.models import MemberStatus

db_app = group("db", "Create or migrate the database.")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="The folder for the new site.")],
    name: Annotated[
        str | None, typer.Option("--name", help="The list's name, as members see it.")
    ] = None,
    from_address: Annotated[
        str | None, typer.Option("--from", help="The From address of every issue.")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The public address of `newsletter serve` (links in mail start with it); "
            "on localhost, serve listens there.",
        ),
    ] = None,
    relay: Annotated[
        str,
        typer.Option(
            "--relay",
            metavar="HOST:PORT",
            help="The SMTP relay to send through (default: the bundled sink, `newsletter smtp-sink`).",
        ),
    ] = "127.0.0.1:8025",
    sample: Annotated[
        bool,
        typer.Option(
            "--sample",
            help="Copy the China IP sample site instead (its survey, items, members and schedule).",
        ),
    ] = False,
) -> None:
    """Create a new site folder: config.toml, templates/, subscribers/members.csv.

    Asks for the list's name, From address and public URL, unless given as options (it never
    asks when standard input is not a terminal: then all three are needed). The site has no
    survey, no item and no schedule until you add them; its templates' wording comes from
    config.toml's [wording]. With --sample, the China IP sample site (the demo's) is copied.
    """
    if sample:
        if name or from_address or url:
            raise typer.BadParameter(
                "--sample copies the sample site as it is; leave out --name, --from and --url",
                param_hint="--sample",
            )
        _report_created(directory, scaffold(directory))
        return
    answers = _answers(directory, name, from_address, url, relay)
    try:
        created = scaffold_neutral(directory, answers)
    except BadAnswer as exc:
        raise typer.BadParameter(exc.problem, param_hint=exc.option) from None
    _report_created(directory, created)
    if created:
        console.print(f"next: cd {directory}, then see `newsletter --help` (README: Using it)")


def _answers(
    directory: Path, name: str | None, from_address: str | None, url: str | None, relay: str
) -> Answers:
    given = {"--name": name, "--from": from_address, "--url": url}
    missing = [option for option, value in given.items() if value is None]
    if missing and not sys.stdin.isatty():
        err.print(
            f"error: missing {', '.join(missing)}: standard input is not a terminal, so "
            "nothing is asked; give each as an option"
        )
        raise typer.Exit(2)  # a usage error, as the option parser's own
    if name is None:
        name = typer.prompt("The list's name", default=directory.resolve().name)
    if from_address is None:
        from_address = typer.prompt("The From address of every issue (news@your.domain)")
    if url is None:
        url = typer.prompt("The public URL of the site", default="http://127.0.0.1:8000")
    return Answers(name, from_address, url, relay)


def _report_created(directory: Path, created: list[Path]) -> None:
    for path in created:
        console.print(f"created {path}")
    if not created:
        console.print(f"{directory} already has every file; nothing changed")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database, or bring its schema to the current version."""
    settings = state.settings()
    engine = db.make_engine(settings.database_url)
    try:
        before = db.revision(engine)
        db.upgrade(engine)
        after = db.revision(engine)
    finally:
        engine.dispose()
    url = safe_url(settings.database_url)
    if before is None:
        console.print(f"created the database {url} (schema {after})")
    elif before != after:
        console.print(f"migrated the database {url} from schema {before} to {after}")
    else:
        console.print(f"the database {url} is current (schema {after})")


@app.command("smtp-sink")
def smtp_sink(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: smtp.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port to listen on (default: smtp.port).")
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
        doing = "discarding every message"
    else:
        handler = OutboxHandler(folder, lambda path: console.print(f"received {path.name}"))
        doing = f"writing to {folder}/"

    async def run() -> None:
        # Listen first: a busy port is one line of error, never a "listening" line before it.
        server = await start_server(handler, h, p)
        console.print(f"SMTP sink on {h}:{bound_port(server)}, {doing} (Ctrl-C stops)")
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    console.print(f"stopped after {handler.count} messages")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: web.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port to listen on (default: web.port).")
    ] = None,
    scheduler: Annotated[
        bool,
        typer.Option(
            "--scheduler/--no-scheduler",
            help="Also fire the [schedule.*] slots when elected (of the serve processes on "
            "one database, one fires them).",
        ),
    ] = True,
) -> None:
    """Run the web app (member and editor pages), the system mail queue and the scheduler.

    Several serve processes (on several machines) may share one database: they elect one
    leader to fire the schedules, using a PostgreSQL advisory lock (a lease row on SQLite),
    and the others only serve the web app until the leader is gone.
    """
    import logging

    import uvicorn

    from newsletter import schedule
    from newsletter.web.app import create_app

    settings = state.settings()
    if scheduler:  # a bad cron or time zone stops serve here, not in the leader later
        for name, sched in settings.schedule.items():
            schedule.trigger(name, sched)
    app_ = create_app(settings, state.sessions())
    # Everything loaded so far (the libraries, the app) lives as long as the process: keep it
    # out of the collector's full passes, which otherwise walk it all and stall every request
    # for ~100 ms a few times a minute under load (bench/web.py: p99 of the vote link 117 ms
    # before, 38 ms after).
    gc.collect()
    gc.freeze()
    h, p = host or settings.web.host, port if port is not None else settings.web.port
    # Listen before saying so: a busy port is one line of error and exit code 1.
    sock = listen(h, p)
    p = sock.getsockname()[1]  # the port chosen, for --port 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    console.print(
        f"serving {settings.list.name} on http://{_host_in_url(h)}:{p} "
        f"(links in mail use {settings.list.base_url})"
    )
    console.print(_schedules_line(settings, scheduler))

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
            await server.serve(sockets=[sock])
        finally:
            await stop_electing()

    asyncio.run(main())


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or NewsletterError saying in one line why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise NewsletterError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        # As uvicorn does: a restart may take the port while the old sockets are in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why += " (another `newsletter serve`? use --port or web.port)"
        raise NewsletterError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def _host_in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _schedules_line(settings: Settings, scheduler: bool) -> str:
    if not scheduler:
        return "schedules: off (--no-scheduler)"
    if not settings.schedule:
        return "schedules: none (config.toml has no [schedule.NAME] table)"
    named = ", ".join(
        f"{name} ({sched.cron}, {sched.timezone})" for name, sched in settings.schedule.items()
    )
    return f"schedules: {named}; the elected serve process fires them"


@app.command()
def demo() -> None:
    """Run the whole sample: database, members, items, the bundled sink, one issue into var/outbox/."""
    settings = state.settings()
    if not settings.secret_keys:
        settings = _demo_secret(settings)
    services = state.use(settings)
    csv_path = settings.path("subscribers/example.csv")
    report = members.import_file(services, csv_path, actor=actor())
    for problem in report.errors:
        err.print(f"{csv_path}:{problem}")
    feed = settings.path("examples/seed-feed.xml")
    items_report = items.import_source(services, str(feed), actor=actor())
    added, names = items_report.added, [feed.name]
    # The sample items of the other sections (Markdown), so members' choices show.
    folder = settings.path("examples/sections")
    if folder.is_dir():
        added += items.import_source(services, str(folder), actor=actor()).added
        names.append("examples/sections/")
    console.print(
        f"members: {report.added} added from {csv_path.name}; items: {added} new from {', '.join(names)}"
    )
    outbox = settings.path(settings.sink.outbox)
    handler = OutboxHandler(outbox)
    with ServerThread(handler, settings.smtp.host, settings.smtp.port):
        console.print(f"bundled SMTP sink listening on {settings.smtp.host}:{settings.smtp.port}")
        summaries = run_send(services)
    summary = summaries[-1] if summaries else None
    counts = services.read(members.counts)
    active = counts.get(MemberStatus.ACTIVE, 0)
    console.print()
    console.print(f"members: {active} active, {sum(counts.values()) - active} not mailed")
    if summary is None:
        new_left = services.read(issues.new_item_count)
        console.print(
            f"items: {new_left} new; no message sent. Add items and run `make demo` again."
        )
        return
    n_items = len(services.read(issues.item_titles, summary.issue_id))
    compiled = services.read(issues.stored, summary.issue_id)
    files = write_preview(
        compiled, settings, settings.path(settings.issue.preview_dir), summary.issue_id
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
