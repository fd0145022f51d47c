"""`newsletter survey ...` (make, list, open, close, results) and `newsletter editor ...`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from newsletter.cli.app import actor, console, group, state
from newsletter.errors import NewsletterError
from newsletter.services import editors, surveys, votes
from newsletter.storage.models import SurveySource

survey_app = group("survey", "Surveys: make, list, open and close them; their results.")
editor_app = group("editor", "Editors' accounts for the editor's pages.")


@survey_app.command("results")
def survey_results(
    survey: Annotated[
        str | None, typer.Argument(help="Survey key or number (default: the newest one asked).")
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write every counted vote to this CSV file.")
    ] = None,
) -> None:
    """Print the results as counts, percentages and a bar chart; optionally export the votes."""
    services = state.services()
    survey_id = services.read(surveys.find, survey)
    # Clicks whose quiet period has passed are decided first, as the web pages do.
    results = services.run(actor(), votes.settled_results, survey_id, drafts=True)
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
        export = services.run(actor(), surveys.votes_csv, survey_id)
        # newline="": the csv module's own CRLF line ends, as the desk's download has them.
        csv_path.write_text(export.text, encoding="utf-8", newline="")
        console.print(f"wrote {export.votes} votes to {csv_path}")


@survey_app.command("list")
def survey_list() -> None:
    """Every survey, newest first, and which one the next issue carries."""
    services = state.services()
    found = services.read(surveys.listing)
    default = found.default
    table = Table(title="Surveys", title_justify="left")
    for column in ("#", "key", "from", "status", "votes", "question", "next issue"):
        table.add_column(column, justify="right" if column in ("#", "votes") else "left")
    for s in found.surveys:
        carried = "carries it" if default is not None and default.id == s.id else ""
        source = "config.toml" if s.source == SurveySource.CONFIG else "editor"
        table.add_row(str(s.id), s.key, source, s.status, str(s.votes), s.question, carried)
    console.print(table)
    if default is None:
        console.print("no survey is open: the next issue carries none")
    elif not default.stored:
        console.print(f"the next issue makes and carries config.toml's survey {default.key!r}")


@survey_app.command("create")
def survey_create(
    question: Annotated[str, typer.Argument(help="The question, on one line (1-1000 characters).")],
    option: Annotated[
        list[str],
        typer.Option(
            "--option", "-o", help="An option (2 to 10 of them, each up to 200 characters)."
        ),
    ],
) -> None:
    """Make a survey as a draft; `survey open` then lets issues carry it."""
    made = state.services().run(actor(), surveys.create_survey, question, option)
    console.print(
        f"survey #{made.id} ({made.key}) made as a draft with {len(made.options)} options; "
        f"open it with: newsletter survey open {made.key}"
    )


@survey_app.command("open")
def survey_open(
    survey: Annotated[str, typer.Argument(help="Survey key or number.")],
) -> None:
    """Open a draft, or reopen a closed survey: issues may carry it, its links record votes."""
    opened = state.services().run(actor(), surveys.open_survey, survey)
    console.print(f"survey #{opened.id} ({opened.key}) is open")


@survey_app.command("close")
def survey_close(
    survey: Annotated[
        str | None,
        typer.Argument(help="Survey key or number (default: the one the next issue carries)."),
    ] = None,
) -> None:
    """Close a survey: its links then show the final results and record nothing."""
    closed = state.services().run(actor(), surveys.close_survey, survey)
    console.print(f"survey {closed.key!r} closed: {closed.votes} votes counted")


@editor_app.command("hash-password")
def editor_hash_password(
    stdin: Annotated[
        bool,
        typer.Option(
            "--stdin",
            help="Read the password from standard input (its first line), as from a pipe or "
            "a secrets manager, instead of asking twice without echo.",
        ),
    ] = False,
) -> None:
    """Ask for a password and print the password_hash line for an [[editor]] in config.toml."""
    if stdin:
        # The first line, without its line ending; nothing is echoed or asked.
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        if not password:
            raise NewsletterError("--stdin: standard input holds no password (an empty line)")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 12:
        raise NewsletterError("use a password of at least 12 characters")
    console.print(f'password_hash = "{editors.hash_password(password)}"')
