"""`newsletter send`, `worker` and `retry`: the delivery engine with a progress bar, stoppable cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from newsletter.cli.app import actor, app, console, err, progress_bar, state
from newsletter.delivery.engine import Engine, Summary
from newsletter.delivery.mailer import Drained, Mailer
from newsletter.delivery.reasons import Reason, reason
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


@dataclass
class Tally:
    """What one run did to each issue's rows: delivered, and why the others wait."""

    delivered: int = 0
    failed: int = 0
    waiting: dict[int, Reason] = field(default_factory=dict)  # delivery id → why
    next_try: dt.datetime | None = None

    def note(self, outcome: Outcome) -> None:
        if outcome.status == DeliveryStatus.DEFERRED:
            self.waiting[outcome.delivery_id] = reason(outcome.code, outcome.message)
            self.next_try = outcome.next_attempt_at
            return
        self.waiting.pop(outcome.delivery_id, None)  # retried within the run
        if outcome.status == DeliveryStatus.SENT:
            self.delivered += 1
        elif outcome.status != DeliveryStatus.SKIPPED:
            self.failed += 1

    def describe(self, issue_id: int) -> str:
        text = f"issue #{issue_id}: {self.delivered} delivered"
        if self.waiting:
            why = Counter(r.why for r in self.waiting.values()).most_common(1)[0][0]
            at = f"; next try {clock(self.next_try)}" if self.next_try else ""
            text += f", {len(self.waiting)} waiting ({why}{at})"
        if self.failed:
            text += f", {self.failed} not sent"
        return text


def clock(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%H:%M:%S UTC")


class _Bars:
    """One progress bar an issue, counting delivered messages and saying why others wait."""

    def __init__(self, progress: Progress, tallies: dict[int, Tally]) -> None:
        self.progress = progress
        self.tallies = tallies
        self.tasks: dict[int, TaskID] = {}
        self.engines: list[Engine] = []
        self.pending = 0

    def flush(self) -> None:
        if self.engines and self.pending:
            self.progress.update(self.tasks[self.engines[-1].issue.id], advance=self.pending)
        self.pending = 0

    def on_start(self, engine: Engine, total: int) -> None:
        self.flush()  # the last ticks of the issue before
        self.engines.append(engine)
        issue_id = engine.issue.id
        tally = self.tallies.setdefault(issue_id, Tally())
        self.tasks[issue_id] = self.progress.add_task(tally.describe(issue_id), total=total)

    def tick(self, outcome: Outcome) -> None:
        # Called for every message: touch the bar only every 25 deliveries or when one did
        # not go, so drawing it costs the sender next to nothing.
        issue_id = self.engines[-1].issue.id
        tally = self.tallies[issue_id]
        tally.note(outcome)
        if outcome.status == DeliveryStatus.SENT:
            self.pending += 1
            if self.pending < 25:
                return
        task = self.tasks[issue_id]
        total = self.progress.tasks[task].total
        if outcome.status == DeliveryStatus.SKIPPED and total:
            total -= 1  # the member left: not one to deliver after all
        self.progress.update(
            task, advance=self.pending, total=total, description=tally.describe(issue_id)
        )
        self.pending = 0

    def finish(self) -> None:
        self.flush()
        for issue_id, task in self.tasks.items():
            self.progress.update(task, description=self.tallies[issue_id].describe(issue_id))


def with_progress(
    job: Callable[[sending.Run], Coroutine[Any, Any, T]], tallies: dict[int, Tally] | None = None
) -> T:
    """Run a send with a live progress bar, Ctrl-C or SIGTERM stopping it cleanly.

    The bar counts delivered messages only, so it never reads 100% while any wait; its
    description says how many wait and why (the relay unreachable, refusing, rate-limiting).
    `tallies` collects each issue's Tally for the caller.
    """
    with progress_bar() as progress:
        bars = _Bars(progress, {} if tallies is None else tallies)

        async def main() -> T:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, _stop_all, bars.engines, sig)
            result = await job(sending.Run(progress=bars.tick, on_start=bars.on_start))
            bars.finish()
            return result

        return asyncio.run(main())


def print_summary(summary: Summary, services: Services) -> None:
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
    print_waiting(services.read(issues.waiting, summary.issue_id))
    if summary.counts.get("deferred"):
        console.print(
            "deferred deliveries are retried once due by `newsletter worker --once` "
            "(or the next `newsletter send`, which also sends any new items)"
        )


def print_waiting(groups: list[issues.Waiting], limit: int = 8) -> None:
    """Why an issue's rows still wait, one line a reason, the largest group first."""
    if not groups:
        return
    console.print(f"{sum(g.count for g in groups)} waiting, by reason:")
    for group in groups[:limit]:
        when = ""
        if group.next_from is not None and group.next_until is not None:
            when = f"; next try {clock(group.next_from)}"
            if clock(group.next_until) != clock(group.next_from):
                when += f" to {clock(group.next_until)}"
        console.print(f"  {group.count:>6}  {group.reason}{when}")
    if len(groups) > limit:
        rest = groups[limit:]
        console.print(f"  {sum(g.count for g in rest):>6}  for {len(rest)} other reasons")


def nothing_delivered(summaries: list[Summary], tallies: dict[int, Tally]) -> str:
    """Why a run that tried to deliver delivered nothing at all (the relay down, say); ""
    when it delivered something, or tried nothing."""
    if not any(s.attempted for s in summaries) or any(t.delivered for t in tallies.values()):
        return ""
    reasons = Counter(r for t in tallies.values() for r in t.waiting.values())
    return str(reasons.most_common(1)[0][0]) if reasons else ""


def failed(summaries: list[Summary]) -> bool:
    return any(s.counts.get("failed") or s.status == IssueStatus.PAUSED for s in summaries)


def drain_mail(services: Services) -> Drained:
    """Send the system mail that is due (confirmations, test copies); say what did not go."""
    drained = asyncio.run(Mailer(services.settings, services.sessions).drain())
    for why in drained.reasons:
        err.print(f"system mail not sent yet: {why}")
    return drained


def run_send(services: Services, tallies: dict[int, Tally] | None = None) -> list[Summary]:
    try:
        summaries = with_progress(lambda run: sending.send(services, run, actor=actor()), tallies)
    except NothingToSend as exc:
        console.print(str(exc))
        return []
    for summary in summaries:
        print_summary(summary, services)
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
    tallies: dict[int, Tally] = {}
    if processes > 1:
        with contextlib.suppress(NothingToSend):
            asyncio.run(sending.release(services, actor()))
        if services.read(issues.sending):
            helpers = [_spawn_worker() for _ in range(processes - 1)]
    try:
        summaries = run_send(services, tallies)
    finally:
        codes = [p.wait() for p in helpers]
    if any(codes):
        err.print(f"a helper sender process failed (exit codes {codes})")
    exit_if_stopped()
    why = "" if helpers else nothing_delivered(summaries, tallies)
    if why:
        err.print(f"nothing was delivered: {why}")
    if failed(summaries) or any(codes) or why:
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
        summary = result.summary
        print_summary(summary, services)
        # The slot's issue is new: its counts are this run's. Nothing delivered, some
        # waiting: the relay took nothing, and cron should hear of it, as from `send`.
        stalled = (
            summary.attempted and not summary.counts.get("sent") and summary.counts.get("deferred")
        )
        if stalled:
            err.print("nothing was delivered: the deliveries wait (reasons above)")
        if failed([summary]) or stalled:
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
                print_summary(summary, services)
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
    print_summary(summary, services)
    exit_if_stopped()
    if failed([summary]):
        raise typer.Exit(1)  # as `send` does
