"""`newsletter issue ...`: preview, list, show, report, status, test, pause, resume, cancel."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from newsletter.cli.app import actor, console, err, group, progress_bar, state
from newsletter.cli.sending import (
    drain_mail,
    exit_if_stopped,
    print_summary,
    print_waiting,
    send,
    with_progress,
)
from newsletter.content.preview import write_preview
from newsletter.services import issues, mail, reports, sending
from newsletter.storage.models import IssueStatus, MailStatus

issue_app = group(
    "issue",
    "The next issue before it goes out, and the issues since: preview the next one or send "
    "it a test copy; list, show and follow (status) the issues; send, pause, resume or "
    "cancel a send.",
)


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
    services = state.services()
    settings = services.settings
    compiled = services.read(issues.next_compiled)  # a preview changes nothing, not even surveys
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


@issue_app.command("list")
def issue_list(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 20,
) -> None:
    """Issues, newest first, with their progress."""
    table = Table("#", "status", "subject", "sent", "of", "done", "created")
    for info in state.services().read(issues.newest, limit):
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
    services = state.services()
    info = services.read(issues.info, issue_id)
    console.print(f"issue #{info.id}: {info.subject}")
    console.print(info.summary + (f" (paused: {info.pause_reason})" if info.pause_reason else ""))
    for section, title in services.read(issues.item_titles, issue_id):
        console.print(f"  · [{section}] {title}")
    console.print(
        ", ".join(f"{n} {st}" for st, n in sorted(info.counts.items())) or "no deliveries"
    )


@issue_app.command("report")
def issue_report(
    issue_id: Annotated[int, typer.Argument(help="The issue.")],
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write the report to this CSV file.")
    ] = None,
) -> None:
    """What went out and what came back: delivered, bounced, complaints, unsubscribes, people's
    clicks per link (a bar each; scanners' clicks left out and counted apart), survey votes."""
    found = state.services().run(actor(), reports.settled_report, issue_id)
    i = found.issue
    console.print(f"issue #{i.id}: {i.subject} ({i.status})")
    for name, value in (
        ("delivered", found.delivered),
        ("refused by the relay", found.refused),
        ("bounced later", found.bounced),
        ("delayed (warnings)", found.warnings),
        ("complaints", found.complaints),
        ("unsubscribes", found.unsubscribes),
    ):
        console.print(f"  {name:<22}{value:>8}")
    console.print(
        f"clicks by people: {found.people} (by scanners, left out: {found.scanners}"
        + (f"; still being weighed: {found.pending_clicks}" if found.pending_clicks else "")
        + ")"
    )
    table = Table()
    table.add_column("link")
    table.add_column("people", justify="right")
    table.add_column("", min_width=20)
    table.add_column("scanners", justify="right")
    for link in found.links:
        width = round(20 * link.people / found.most_clicked) if found.most_clicked else 0
        table.add_row(
            link.url,
            str(link.people),
            "█" * width or ("▏" if link.people else ""),
            str(link.scanners),
        )
    console.print(table)
    if found.results is not None:
        console.print(f"survey: {found.results.question}")
        for o in found.results.options:
            console.print(f"  {o.votes:>5}  {'█' * round(o.percent / 5):<20} {o.label}")
    if csv_path is not None:
        csv_path.write_text(reports.as_csv(found), encoding="utf-8", newline="")
        console.print(f"wrote {csv_path}")


@issue_app.command("status")
def issue_status(
    issue_id: Annotated[int, typer.Argument(help="The issue.")],
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow a running send with a live progress bar.")
    ] = False,
) -> None:
    """Progress of an issue's send (queued, sent, failed, bounced) and why deliveries wait.

    Waiting deliveries are grouped by reason: the relay unreachable or refusing (with its
    reply), rate-limited by the relay, or not tried yet, with when each is tried next.
    --watch follows a running send live.
    """
    services = state.services()
    info = services.read(issues.info, issue_id)
    if watch and info.status == IssueStatus.SENDING:
        with progress_bar() as progress:
            # The bar counts delivered messages: it never reads 100% while any wait.
            task = progress.add_task(f"issue #{issue_id}", total=info.total, completed=info.sent)
            while info.status == IssueStatus.SENDING:
                time.sleep(0.5)
                info = services.read(issues.info, issue_id)
                progress.update(task, completed=info.sent)
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
    if info.pause_reason:
        console.print(f"paused: {info.pause_reason}")
    print_waiting(services.read(issues.waiting, issue_id))


@issue_app.command("test")
def issue_test(
    to: Annotated[str, typer.Option("--to", help="The one address to send the test to.")],
    issue_id: Annotated[
        int | None, typer.Option("--issue", help="A stored issue (default: the next one).")
    ] = None,
) -> None:
    """Send one copy of the next issue (or issue N), marked [TEST], to one address.

    Nothing counts as the issue's send. The copy is queued and sent at once; if the relay
    cannot take it now, it stays queued and is retried (by `serve`, `send` or `worker`).
    """
    services = state.services()
    try:
        mail_id = issues.send_test(services, actor(), to, issue_id)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--to") from None
    drain_mail(services)
    info = services.read(mail.info, mail_id)
    if info is None or info.status != MailStatus.SENT:
        why = info.last_message if info else "it is no longer queued"
        err.print(f"test to {to} not sent yet ({why}); it stays queued and is retried")
        raise typer.Exit(1)
    console.print(f"test sent to {to}: {info.message_id}")


@issue_app.command("send")
def issue_send(
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            "-p",
            min=1,
            help="Sender processes sharing the issue through the ledger (one per core is a good start).",
        ),
    ] = 1,
) -> None:
    """The same as `newsletter send`: finish what is pending, then send the next issue."""
    send(processes=processes, scheduled=None)


@issue_app.command("pause")
def issue_pause(issue_id: Annotated[int, typer.Argument(help="The issue to pause.")]) -> None:
    """Pause a sending issue: every running send stops within a moment, keeping its place."""
    info = state.services().run(actor(), issues.pause, issue_id)
    console.print(info.summary + " (paused)")


@issue_app.command("resume")
def issue_resume(issue_id: Annotated[int, typer.Argument(help="The issue to resume.")]) -> None:
    """Resume a paused issue and continue sending it from where it stopped."""
    services = state.services()
    services.run(actor(), issues.resume, issue_id)
    console.print(f"issue #{issue_id} resumed")
    print_summary(with_progress(functools.partial(sending.deliver, services, issue_id)), services)
    exit_if_stopped()


@issue_app.command("cancel")
def issue_cancel(issue_id: Annotated[int, typer.Argument(help="The issue to cancel.")]) -> None:
    """Cancel an issue: no more of its messages go out; the status says how many did."""
    console.print(state.services().run(actor(), issues.cancel, issue_id).summary)
