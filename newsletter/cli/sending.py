"""`newsletter send`, `worker` and `retry`: the delivery engine with a progress bar, stoppable cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import TaskID
from rich.table import Table

from newsletter.cli.app import actor, app, console, err, progress_bar, state
from newsletter.delivery.engine import Engine, Summary
from newsletter.delivery.mailer import Drained, Mailer
from newsletter.errors import ConfigError, NothingToSend
from newsletter.services import issues, sending
from newsletter.services.unit import Services
from newsletter.storage.ledger import Outcome
from newsletter.storage.models import DeliveryStatus, IssueStatus, utcnow

T = TypeVar("T")
STOPPED = "stopped by a signal"
_signals: list[int] = []  # the stop signals this process received


def _stop_all(engines: list[Engine], signum: int = signal.SIGTERM) -> None:
    _signals.append(signum)
    for engine in engines:
        engine.stop(STOPPED)


def exit_if_stopped() -> None:
    """After a send that a signal cut short: say so, and exit 128 + the signal, as shells do,
    so that cron or a wrapper can tell a stopped run from a finished one."""
    if _signals:
        err.print(f"{STOPPED}: the rest stays queued; `newsletter send` resumes it")
        raise typer.Exit(128 + _signals[0])


def with_progress(job: Callable[[sending.Run], Coroutine[Any, Any, T]]) -> T:
    """Run a send with a live progress bar (rate, ETA, failures); Ctrl-C or SIGTERM stop it cleanly."""
    with progress_bar() as progress:
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
            failed = outcome.status not in (DeliveryStatus.SENT, DeliveryStatus.SKIPPED)
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
            result = await job(sending.Run(progress=tick, on_start=on_start))
            flush()
            return result

        return asyncio.run(main())


def print_summary(summary: Summary) -> None:
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
    if summary.status == IssueStatus.PAUSED:
        err.print(f"issue #{summary.issue_id} is paused: {summary.pause_reason}")
    if summary.counts.get("deferred"):
        console.print(
            "deferred deliveries are retried once due by `newsletter worker --once` "
            "(or the next `newsletter send`, which also sends any new items)"
        )


def failed(summaries: list[Summary]) -> bool:
    return any(s.counts.get("failed") or s.status == IssueStatus.PAUSED for s in summaries)


def drain_mail(services: Services) -> Drained:
    """Send the system mail that is due (confirmations, test copies); say what did not go."""
    drained = asyncio.run(Mailer(services.settings, services.sessions).drain())
    for reason in drained.reasons:
        err.print(f"system mail not sent yet: {reason}")
    return drained


def run_send(services: Services) -> list[Summary]:
    try:
        summaries = with_progress(lambda run: sending.send(services, run, actor=actor()))
    except NothingToSend as exc:
        console.print(str(exc))
        return []
    for summary in summaries:
        print_summary(summary)
    return summaries


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
    delivery.in_flight, after a hard crash). Queued system mail (confirmations) goes too.
    """
    services = state.services()
    drain_mail(services)
    if scheduled is not None:
        _send_scheduled(services, scheduled)
        return
    helpers: list[subprocess.Popen[bytes]] = []
    if processes > 1:
        with contextlib.suppress(NothingToSend):
            asyncio.run(sending.release(services, actor()))
        if services.read(issues.sending):
            helpers = [_spawn_worker() for _ in range(processes - 1)]
    try:
        summaries = run_send(services)
    finally:
        codes = [p.wait() for p in helpers]
    if any(codes):
        err.print(f"a helper sender process failed (exit codes {codes})")
    exit_if_stopped()
    if failed(summaries) or any(codes):
        raise typer.Exit(1)


def _send_scheduled(services: Services, name: str) -> None:
    from newsletter import schedule

    settings = services.settings
    if name not in settings.schedule:
        known = ", ".join(sorted(settings.schedule)) or "none"
        raise ConfigError(f"schedule.{name}", f"no such schedule in config.toml (known: {known})")
    slot = schedule.last_slot(name, settings.schedule[name], utcnow())
    if slot is None:
        grace = settings.schedule[name].misfire_grace_seconds
        console.print(f"schedule {name}: no slot within the last {grace} s")
        return
    result = asyncio.run(schedule.fire(settings, services.sessions, name, slot))
    console.print(f"schedule {name}, slot {slot.isoformat()}: {result.reason}")
    if result.summary is not None:
        print_summary(result.summary)
        if failed([result.summary]):
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
    poll: Annotated[
        float, typer.Option(min=0.1, help="Seconds between looks for work when idle.")
    ] = 5.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or summary.")] = False,
) -> None:
    """Deliver rows of unfinished issues, sharing them with any other senders through the ledger.

    Never compiles an issue: `send` (or the scheduler) releases issues; any number of
    workers, here or on other machines, then claim their rows under a lease. Queued system
    mail (confirmations, test copies) is sent on each round too.
    """
    services = state.services()

    async def quietly(issue_id: int) -> Summary:
        # The same clean stop on SIGINT/SIGTERM as with the progress bar.
        engines: list[Engine] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _stop_all, engines, sig)
        run = sending.Run(on_start=lambda engine, _total: engines.append(engine))
        return await sending.deliver(services, issue_id, run)

    while True:
        drained = drain_mail(services)
        if not quiet and drained.sent:
            console.print(f"system mail: {drained.sent} sent")
        for issue_id in services.read(issues.sending):
            if quiet:
                summary = asyncio.run(quietly(issue_id))
            else:
                summary = with_progress(functools.partial(sending.deliver, services, issue_id))
                print_summary(summary)
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
    services = state.services()
    summary = with_progress(lambda run: sending.retry(services, issue_id, run, actor=actor()))
    print_summary(summary)
    exit_if_stopped()
    if failed([summary]):
        raise typer.Exit(1)  # as `send` does
