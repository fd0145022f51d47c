"""Every command group, imported once so that each registers its commands on the app."""

from newsletter.cli import (
    board,
    bounces,
    content,
    doctor,
    issues,
    sending,
    site,
    subscribers,
    survey,
)

__all__ = [
    "board",
    "bounces",
    "content",
    "doctor",
    "issues",
    "sending",
    "site",
    "subscribers",
    "survey",
]
