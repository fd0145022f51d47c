"""`newsletter board ...`: the members' board's moderation queue, approve, hide, delete, block."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from newsletter.cli.app import actor, console, group, state
from newsletter.content.addresses import normalize_address
from newsletter.content.board import excerpt
from newsletter.errors import NewsletterError
from newsletter.services import drafts, moderation

board_app = group("board", "The members' board: its moderation queue, approvals and blocks.")

ACTIONS = {
    "approve": (moderation.approve, "is on the board"),
    "hide": (moderation.hide, "is hidden"),
    "delete": (moderation.remove, "is deleted"),
}


@board_app.command("queue")
def board_queue() -> None:
    """Held messages (new members' first posts) and reported ones, oldest first, and who is
    blocked from posting."""
    found = state.services().read(moderation.queue)
    table = Table(title="Waiting for an editor", title_justify="left")
    for column in ("#", "status", "author", "posted (UTC)", "reports", "message"):
        table.add_column(column, justify="right" if column in ("#", "reports") else "left")
    for m in found.waiting:
        table.add_row(
            str(m.id),
            m.status,
            f"{m.name} <{m.email}>",
            f"{m.created_at:%Y-%m-%d %H:%M}",
            str(len(m.reports)),
            excerpt(m.text, 80),
        )
    console.print(table if found.waiting else "nothing is waiting")
    for b in found.blocked:
        until = f"until {b.until:%Y-%m-%d %H:%M} UTC" if b.until else "until unblocked"
        console.print(f"blocked: {b.name} <{b.email}> {until}: {b.reason}")


def _act(action: str, message: int) -> None:
    fn, said = ACTIONS[action]
    state.services().run(actor(), fn, message)
    console.print(f"message #{message} {said}")


@board_app.command("approve")
def board_approve(message: Annotated[int, typer.Argument(help="The message's number.")]) -> None:
    """Put a held, reported or hidden message on the board."""
    _act("approve", message)


@board_app.command("hide")
def board_hide(message: Annotated[int, typer.Argument(help="The message's number.")]) -> None:
    """Take a message off the board (it can be approved again)."""
    _act("hide", message)


@board_app.command("delete")
def board_delete(message: Annotated[int, typer.Argument(help="The message's number.")]) -> None:
    """Delete a message's text for good."""
    _act("delete", message)


def _member(email: str) -> int:
    try:
        address = normalize_address(email)
    except ValueError as exc:
        raise NewsletterError(f"{email!r}: {exc}") from None
    return state.services().read(moderation.member_by_address, address)


@board_app.command("block")
def board_block(
    email: Annotated[str, typer.Argument(help="The member's address.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to the member).")],
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            help="When the block ends, YYYY-MM-DD HH:MM in list.timezone (default: never).",
        ),
    ] = None,
) -> None:
    """Block a member from posting (and signing in) until a time, or until unblocked."""
    services = state.services()
    try:
        when = drafts.local_time(until, services.settings.list.timezone) if until else None
    except drafts.BadDraft as exc:
        raise NewsletterError(f"--until {until!r}: not a date and time (YYYY-MM-DD HH:MM)") from exc
    member = _member(email)
    services.run(actor(), moderation.block, member, reason, when)
    console.print(f"{email} may not post {f'until {until}' if until else 'until unblocked'}")


@board_app.command("unblock")
def board_unblock(email: Annotated[str, typer.Argument(help="The member's address.")]) -> None:
    """End a member's block."""
    done = state.services().run(actor(), moderation.unblock, _member(email))
    console.print(f"{email} {'may post again' if done else 'was not blocked'}")
