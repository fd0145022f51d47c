"""Every command group, imported once so that each registers its commands on the app."""

from newsletter.cli import content, issues, sending, site, subscribers, survey

__all__ = ["content", "issues", "sending", "site", "subscribers", "survey"]
