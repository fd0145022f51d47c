"""The `newsletter` entry point: the app with every command registered, and `main`."""

from newsletter.cli import commands  # noqa: F401  (registers the commands on `app`)
from newsletter.cli.app import app, main, state

__all__ = ["app", "main", "state"]
