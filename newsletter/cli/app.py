"""The `newsletter` command's root: the Typer app, the site it works on, output and exit codes."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from newsletter import __version__
from newsletter import config as config_mod
from newsletter.config import Settings
from newsletter.errors import ConfigError, NewsletterError
from newsletter.services.unit import Services
from newsletter.storage import db


# soft_wrap: a line of text is never broken by Rich (a terminal wraps it; a cron log keeps it
# whole, where Rich would otherwise break it at 80 columns). Tables still fit the width.
# markup=False: what is printed quotes files and feeds ("[/b]" in a CSV row, a title), and
# Rich would read it as markup: swallow "[red]", or stop with a MarkupError traceback.
class _Console(Console):
    """A Rich console that reads the width (COLUMNS, else the terminal) at each print.

    Rich reads COLUMNS once, when the console is made, and keeps it; this one is made at
    import, so whatever COLUMNS said then (a parent shell's, a test runner's) would fix the
    width of every table printed later, whatever the environment says by then.
    """

    def __init__(self, *, stderr: bool = False) -> None:
        super().__init__(stderr=stderr, highlight=False, soft_wrap=True, markup=False)
        self._width = None


console = _Console()
err = _Console(stderr=True)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Compile new items into an HTML newsletter and deliver it to every member.",
)


class State:
    """The site the command works on: its settings and database, opened on first use."""

    config_path: Path = Path("config.toml")
    _settings: Settings | None = None
    _sessions: sessionmaker[Session] | None = None
    _services: Services | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = config_mod.load(self.config_path)
        return self._settings

    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            self._sessions = db.open_database(self.settings().database_url)
        return self._sessions

    def services(self) -> Services:
        if self._services is None:
            self._services = Services(self.settings(), self.sessions())
        return self._services

    def use(self, settings: Settings) -> Services:
        """Work on other settings from here on (the demo's generated signing key)."""
        self._settings, self._services = settings, None
        return self.services()

    def close(self) -> None:
        if self._sessions is not None:
            self._sessions.kw["bind"].dispose()
        self._settings = self._sessions = self._services = None


state = State()


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"newsletter {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[
        Path,
        typer.Option(
            "--config", "-c", help="The site's config.toml; templates/ is read from beside it."
        ),
    ] = Path("config.toml"),
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    state.close()
    state.config_path = config
    ctx.call_on_close(state.close)


def group(name: str, help: str) -> typer.Typer:
    """A command group (`newsletter NAME ...`)."""
    sub = typer.Typer(no_args_is_help=True, help=help)
    app.add_typer(sub, name=name)
    return sub


def actor() -> str:
    """Who the audit log names for a command: the user running it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid, as in some containers
        return f"cli:uid-{os.getuid()}"


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class RateColumn(ProgressColumn):
    """Items per second, from Rich's own speed estimate."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f}/s" if task.speed else "–/s")


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        refresh_per_second=4,
    )


def main() -> None:
    # The command groups register themselves on `app` when imported.
    from newsletter.cli import commands  # noqa: F401

    try:
        app()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except NewsletterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
