"""`newsletter survey ...` and `newsletter editor ...`: survey results and closing; editors' passwords."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from newsletter.cli.app import actor, console, group, state
from newsletter.errors import NewsletterError
from newsletter.services import editors, votes

survey_app = group("survey", "Survey results, and closing a survey.")
editor_app = group("editor", "Editors' accounts for the editor's pages.")


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
    services = state.services()
    survey_id = services.read(votes.find, survey)
    # Clicks whose quiet period has passed are decided first, as the web pages do.
    results = services.run(actor(), votes.settled_results, survey_id)
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
        rows = services.read(votes.counted_votes, survey_id)
        with csv_path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["email", "option", "label", "counted_at"])
            for email, option, counted_at in rows:
                writer.writerow(
                    [
                        email,
                        option,
                        results.label(option),
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
    key = state.services().run(actor(), votes.close, survey)
    console.print(f"survey {key!r} closed")


@editor_app.command("hash-password")
def editor_hash_password() -> None:
    """Ask for a password and print the password_hash line for an [[editor]] in config.toml."""
    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 12:
        raise NewsletterError("use a password of at least 12 characters")
    console.print(f'password_hash = "{editors.hash_password(password)}"')
