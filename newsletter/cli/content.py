"""`newsletter items ...`: the news items (the member list's commands are in subscribers.py)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from newsletter.cli.app import actor, console, err, group, state
from newsletter.errors import NewsletterError
from newsletter.services import items

items_app = group("items", "Import, inspect, hold and remove news items.")


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
    report = items.import_source(state.services(), source, actor=actor(), section=section)
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
    """Show items, newest last; held items are marked."""
    table = Table("id", "guid", "section", "title", "published", "size")
    for item in state.services().read(items.listing, new_only=new):
        title = f"{item.title} (held)" if item.held else item.title
        table.add_row(
            str(item.id),
            item.guid,
            item.section,
            title,
            str(item.published_at or ""),
            f"{item.size:,}",
        )
    console.print(table)


def _body(source: Path | None) -> str | None:
    if source is None:
        return None
    if str(source) == "-":
        return sys.stdin.read()
    try:
        return source.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise NewsletterError(f"{source}: no such file") from None
    except UnicodeDecodeError as exc:
        raise NewsletterError(f"{source}: not UTF-8 text (byte {exc.start})") from None


def _date(text: str | None) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a date (YYYY-MM-DD)", param_hint="--date"
        ) from None


BodyOption = Annotated[
    Path | None,
    typer.Option("--body", help="A Markdown file with the item's text ('-' reads standard input)."),
]


@items_app.command("add")
def items_add(
    title: Annotated[str, typer.Option(help="The item's title.")],
    body: BodyOption = None,
    section: Annotated[str, typer.Option(help="Its section (default: News).")] = "",
    url: Annotated[str, typer.Option(help="A link to the full text.")] = "",
    date: Annotated[str | None, typer.Option(help="Its date, YYYY-MM-DD.")] = None,
) -> None:
    """Write a new item (Markdown), as the desk's item editor does."""
    draft = items.ItemDraft(title, _body(body) or "", section, url, _date(date))
    info = state.services().run(actor(), items.write, draft)
    console.print(f"added item {info.id} ({info.guid}): {info.title}")


@items_app.command("edit")
def items_edit(
    guid: Annotated[str, typer.Argument(help="The item's GUID (or its number in `items list`).")],
    title: Annotated[str | None, typer.Option(help="A new title.")] = None,
    body: BodyOption = None,
    section: Annotated[str | None, typer.Option(help="A new section.")] = None,
    url: Annotated[str | None, typer.Option(help="A new link.")] = None,
    date: Annotated[str | None, typer.Option(help="A new date, YYYY-MM-DD.")] = None,
) -> None:
    """Change an item that has not gone out; what is not given stays as it was."""
    services = state.services()
    info, old_body, old_url = services.read(items.body_md, guid)
    draft = items.ItemDraft(
        title if title is not None else info.title,
        new if (new := _body(body)) is not None else old_body,
        section if section is not None else info.section,
        url if url is not None else old_url,
        _date(date)
        if date is not None
        else (info.published_at.date() if info.published_at else None),
    )
    changed = services.run(actor(), items.edit, guid, draft)
    console.print(f"edited item {changed.id}: {changed.title}")


@items_app.command("remove")
def items_remove(
    guid: Annotated[str, typer.Argument(help="The item's GUID (or its number in `items list`).")],
) -> None:
    """Delete an item that has not gone out in an issue."""
    info = state.services().run(actor(), items.remove, guid)
    console.print(f"removed item {info.id}: {info.title}")


@items_app.command("hold")
def items_hold(
    guid: Annotated[str, typer.Argument(help="The item's GUID (or its number in `items list`).")],
) -> None:
    """Hold an item back: it goes out in no issue until released."""
    info = state.services().run(actor(), items.hold, guid, True)
    console.print(f"held item {info.id}: {info.title}")


@items_app.command("release")
def items_release(
    guid: Annotated[str, typer.Argument(help="The item's GUID (or its number in `items list`).")],
) -> None:
    """Release a held item: the next issue may carry it."""
    info = state.services().run(actor(), items.hold, guid, False)
    console.print(f"released item {info.id}: {info.title}")
