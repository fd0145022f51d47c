"""The root error and every domain error; each names the place the problem is."""

from __future__ import annotations


class NewsletterError(Exception):
    """Root of every error this package raises on purpose; the CLI prints it as one line."""


class ConfigError(NewsletterError, ValueError):
    """A config key is unknown, mistyped or missing, or a secret is absent."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.problem = message
        super().__init__(f"config key {key!r}: {message}")


class MissingSecret(ConfigError):
    """A secret that must come from the environment is not set."""

    def __init__(self, key: str, env: str, why: str) -> None:
        self.env = env
        super().__init__(key, f"{why}; set the environment variable {env}")


class DatabaseError(NewsletterError, RuntimeError):
    """The database cannot be opened or migrated."""


class ImportRowError(NewsletterError, ValueError):
    """One row of a member list is bad; the rest of the file still imports."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.reason = message
        super().__init__(f"line {line}: {message}")


class SourceError(NewsletterError, ValueError):
    """A feed or Markdown source cannot be read or parsed."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"{source}: {message}")


class HeaderError(NewsletterError, ValueError):
    """A header value would carry CR/LF or another control character (header injection)."""

    def __init__(self, header: str, value: str) -> None:
        self.header = header
        super().__init__(
            f"header {header!r} would contain a line break or control character: {value!r}"
        )


class IssueTooLarge(NewsletterError, ValueError):
    """The compiled HTML would be clipped by Gmail (about 102 KB)."""

    def __init__(self, size: int, limit: int, items: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the issue's HTML is {size:,} bytes after inlining, over the {limit:,}-byte limit "
            f"(Gmail clips at about 102 KB); it has {items} items: lower issue.max_items "
            "or shorten the item bodies"
        )


class NothingToSend(NewsletterError):
    """There are no new items, so no issue is made."""


class TokenError(NewsletterError, ValueError):
    """A link token is forged, altered, expired or of the wrong kind."""
