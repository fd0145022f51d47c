"""`newsletter subscribers ...`: import, list, add, edit, unsubscribe, erase and export members."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from newsletter.cli.app import actor, console, err, group, progress_bar, state
from newsletter.content.mapping import Field, parse_overrides
from newsletter.errors import NewsletterError
from newsletter.services import erasure, members, membership
from newsletter.storage.models import MemberStatus

subscribers_app = group(
    "subscribers", "Import, inspect, add, edit, unsubscribe, erase and export members."
)

MemberArg = Annotated[str, typer.Argument(help="The member's address (or number).")]
FIELDS = ", ".join(f.value for f in Field)


def _attributes(pairs: list[str]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r}: write NAME=VALUE", param_hint="--attr")
        found[key.strip()] = value
    return found


@subscribers_app.command("import")
def subscribers_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="A CSV file: a plain list with an 'email' column, or an export of Mailchimp, "
            "Substack, Buttondown, listmonk or this program (comma, semicolon or tab)."
        ),
    ],
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help=f"COLUMN=FIELD, to change what the detected layout does with a column; "
            f"FIELD is one of: {FIELDS}. Repeat for several columns.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the layout and the first rows; store nothing.")
    ] = False,
) -> None:
    """Import members from CSV: the layout is detected and printed, addresses normalised,
    duplicates merged; opt-outs are kept and erased addresses refused, each bad row named."""
    overrides = parse_overrides(mapping or [])
    seen = members.preview(members.read_list(file), overrides)
    layout = seen.layout
    console.print(f"{file}: {layout.source}, {layout.delimiter_name}-separated")
    for line in layout.describe():
        console.print(f"  {line}", markup=False, highlight=False)
    if dry_run:
        for row in seen.rows:
            console.print("  | " + " | ".join(row), markup=False, highlight=False)
        return
    with progress_bar() as progress:
        task = progress.add_task("importing members", total=None)
        report = members.import_file(
            state.services(),
            file,
            actor=actor(),
            overrides=overrides,
            progress=lambda n: progress.advance(task, n),
        )
    for problem in report.errors:
        err.print(f"{file}:{problem}")
    console.print(
        f"{file}: {report.rows} rows, {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.merged} duplicates merged, "
        f"{report.unsubscribed} unsubscribed, {report.kept_unsubscribed} kept unsubscribed, "
        f"{len(report.errors)} rejected ({report.suppressed} erased addresses)"
    )
    if report.errors:
        raise typer.Exit(1)


@subscribers_app.command("list")
def subscribers_list(
    status: Annotated[
        str | None,
        typer.Option(
            metavar="|".join(MemberStatus),
            help=f"Only members with this status ({', '.join(MemberStatus)}).",
        ),
    ] = None,
    search: Annotated[str, typer.Option(help="Only addresses or names containing this.")] = "",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Show at most this many.")] = 50,
) -> None:
    """Show members (by address) and how many there are of each status."""
    if status is not None and status not in set(MemberStatus):
        raise typer.BadParameter(
            f"{status!r} is not a member status; use one of {', '.join(MemberStatus)}",
            param_hint="--status",
        )
    chosen = MemberStatus(status) if status is not None else None
    services = state.services()
    found = services.read(membership.overview, search, chosen, 1, limit)
    table = Table("id", "email", "name", "status")
    for m in found.members:
        table.add_row(str(m.id), m.email, m.name, m.status)
    console.print(table)
    if found.total > len(found.members):
        console.print(f"{len(found.members)} of {found.total} shown (--limit)")
    counts = found.counts
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no members")
    lost = services.read(erasure.report).unreadable
    if lost:
        err.print(
            f"warning: {lost} erased addresses were hashed with a key no longer configured; "
            "put it back in NEWSLETTER_OLD_SECRET_KEYS or they can be added again"
        )


@subscribers_app.command("add")
def subscribers_add(
    email: Annotated[str, typer.Argument(help="The new member's address.")],
    name: Annotated[str, typer.Option(help="Their name.")] = "",
    attr: Annotated[
        list[str] | None, typer.Option("--attr", help="NAME=VALUE, an attribute (repeatable).")
    ] = None,
) -> None:
    """Add one member, active (you vouch that they asked); an erased address is refused."""
    added = state.services().run(
        actor(), membership.add_member, email, name, _attributes(attr or [])
    )
    console.print(f"added member {added.id}: {added.email}")


@subscribers_app.command("edit")
def subscribers_edit(
    member: MemberArg,
    name: Annotated[str | None, typer.Option(help="A new name ('' clears it).")] = None,
    attr: Annotated[
        list[str] | None,
        typer.Option("--attr", help="NAME=VALUE sets an attribute, NAME= removes it (repeatable)."),
    ] = None,
) -> None:
    """Change a member's name or attributes; what is not given stays as it was."""
    services = state.services()
    member_id = services.read(membership.find, member)
    attributes = None
    if attr:
        attributes = {**services.read(membership.detail, member_id).attributes}
        attributes.update(_attributes(attr))
    done = services.run(
        actor(), membership.edit_member, member_id, name=name, attributes=attributes
    )
    console.print(f"member {done.id}: {done.email}, {done.name or '(no name)'}, {done.status}")


@subscribers_app.command("unsubscribe")
def subscribers_unsubscribe(
    member: MemberArg,
    reason: Annotated[str, typer.Option(help="Why, for the audit log (their request, a ticket).")],
) -> None:
    """Unsubscribe a member who asked you to: no mail goes to them from now on."""
    services = state.services()
    member_id = services.read(membership.find, member)
    done = services.run(actor(), membership.unsubscribe_member, member_id, reason=reason)
    console.print(f"unsubscribed member {done.id}: {done.email}")


@subscribers_app.command("erase")
def subscribers_erase(
    member: MemberArg,
    reason: Annotated[str, typer.Option(help="Why, for the audit log (their request, a ticket).")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a member's personal data for good (counts stay); the address can never be added
    again by an import, the subscribe form or an editor."""
    services = state.services()
    member_id = services.read(membership.find, member)
    if not yes and not typer.confirm(f"Erase member {member_id} ({member}) for good?"):
        raise typer.Exit(1)
    done = services.run(actor(), erasure.erase_member, member_id, reason=reason)
    console.print(f"erased member {done.member_id}: {done.summary}")


@subscribers_app.command("export")
def subscribers_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: standard output).")
    ] = None,
    status: Annotated[
        MemberStatus | None, typer.Option(help="Only members with this status.")
    ] = None,
) -> None:
    """Every member as CSV (email, name, status, created_at, unsubscribed_at, attributes);
    cells a spreadsheet would run as formulas start with an apostrophe."""
    done = state.services().run(actor(), membership.export_members, status)
    if output is None:
        sys.stdout.write(done.text)
        return
    try:
        output.write_text(done.text, encoding="utf-8", newline="")
    except OSError as exc:
        raise NewsletterError(f"{output}: {exc.strerror}") from None
    err.print(f"{done.members} members written to {output}")
