"""`newsletter bounces ...`: take what comes back by SMTP (serve), a pipe (read) or IMAP (fetch)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Annotated

import typer
from rich.table import Table

from newsletter.cli.app import console, err, group, state
from newsletter.content.addresses import normalize_address
from newsletter.delivery import intake
from newsletter.errors import NewsletterError
from newsletter.services import bounces
from newsletter.services.unit import Services

bounces_app = group(
    "bounces", "What comes back to the return path: bounces, complaints, auto-replies."
)

# sysexits.h: a pipe that cannot take the message now asks Postfix to try again later.
EX_TEMPFAIL = 75


def _take(services: Services, source: str) -> intake.Take:
    def take(raw: bytes, envelope_to: tuple[str, ...]) -> bool:
        applied = bounces.take(services, raw, source=source, envelope_to=envelope_to)
        console.print(f"{source}: {applied.outcome}: {applied.note}")
        return applied.understood

    return take


@bounces_app.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: bounces.host).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port to listen on (default: bounces.port)."),
    ] = None,
) -> None:
    """Run the SMTP receiver of the bounce domain (list.return_path's): point the domain's MX,
    or a Postfix transport, at it. It takes mail for that domain only."""
    settings = state.settings()
    services = state.services()
    services.signer  # noqa: B018 - fail now, not at the first bounce, without a key
    domain = (settings.list.return_path or settings.list.from_address).rsplit("@", 1)[1]
    handler = intake.BounceHandler(
        domain, intake.in_thread(_take(services, "smtp")), settings.bounces.max_bytes
    )
    h = host or settings.bounces.host
    p = port if port is not None else settings.bounces.port

    async def run() -> None:
        server = await intake.start_receiver(handler, h, p)
        bound = server.sockets[0].getsockname()[1]
        console.print(f"bounce receiver for @{domain} on {h}:{bound} (Ctrl-C stops)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    console.print(f"stopped after {handler.count} messages")


@bounces_app.command("read")
def read(
    recipient: Annotated[
        list[str] | None,
        typer.Option(
            "--recipient",
            "-r",
            help="The envelope recipient (Postfix pipe: ${original_recipient}); repeatable.",
        ),
    ] = None,
) -> None:
    """Take one returned message on standard input (a Postfix pipe, procmail). Exits 0 once
    it is taken (understood or not), 75 (try again later) when it could not be stored."""
    raw = sys.stdin.buffer.read()
    try:
        services = state.services()
        _take(services, "pipe")(raw, tuple(recipient or ()))
    except NewsletterError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(EX_TEMPFAIL) from None
    # A database that cannot be reached must not lose the report: the MTA keeps it.
    except Exception as exc:  # noqa: BLE001 - any failure here is "try again later"
        err.print(f"error: {exc.__class__.__name__}: {exc}")
        raise typer.Exit(EX_TEMPFAIL) from None


@bounces_app.command("fetch")
def fetch(
    limit: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Messages read in this run at most.")
    ] = 1000,
) -> None:
    """Read the IMAP mailbox of [bounces] (imap_host, imap_user, NEWSLETTER_IMAP_PASSWORD):
    each message understood is moved to imap_done_folder, the rest stay where they were."""
    settings = state.settings()
    b = settings.bounces
    if not b.imap_host:
        raise NewsletterError("config key 'bounces.imap_host' is empty: no mailbox to read")
    box = intake.Mailbox(
        b.imap_host,
        b.imap_port,
        b.imap_security,
        b.imap_user,
        settings.imap_password,
        b.imap_folder,
        b.imap_done_folder,
    )
    done = intake.fetch(box, _take(state.services(), "imap"), limit=limit)
    console.print(
        f"{done.read} read, {done.moved} moved to {b.imap_done_folder}, "
        f"{done.left} not understood (left in {b.imap_folder})"
    )


@bounces_app.command("show")
def show(email: Annotated[str, typer.Argument(help="The member's address.")]) -> None:
    """A member's bounce history: score, status, and every bounce, warning and complaint."""
    address = normalize_address(email)
    history = state.services().read(bounces.history_of, address)
    if history is None:
        raise NewsletterError(f"no member {address}")
    console.print(f"{history.email}: {history.status}, bounce score {history.score:g}")
    if history.left_reason:
        console.print(f"reason: {history.left_reason}")
    table = Table()
    for name in ("when (UTC)", "kind", "status", "issue", "via", "score", "diagnostic"):
        table.add_column(name)
    for e in history.events:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M}",
            str(e.kind),
            e.status,
            str(e.issue_id or ""),
            e.source,
            f"{e.score:g}",
            e.diagnostic[:80],
        )
    console.print(table)
