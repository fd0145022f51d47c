"""Board messages as text: Markdown rendered and sanitised (nh3) under the board's limits, and excerpts.

A member's message is Markdown with raw HTML switched off (markdown-it-py escapes any tag a
member types), then cleaned by nh3 with a small allow-list, as a second guard: text structure
and links only, no images (they would load from elsewhere), no attributes but a link's
address, and links only to http(s) and mailto, marked nofollow and ugc for search engines.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from dataclasses import dataclass

import nh3
from markdown_it import MarkdownIt

from newsletter.config import BoardSettings
from newsletter.content.sources import html_to_text
from newsletter.errors import NewsletterError

TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "hr", "li", "ol", "p", "pre", "s", "strong", "ul",
}  # fmt: skip
ATTRIBUTES = {"a": {"href"}}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "nofollow ugc noopener noreferrer"
EXCERPT_CHARS = 280
ANONYMOUS = "A member"
# What a reader would take for a link, written out or in Markdown's link syntax.
_WRITTEN_LINK = re.compile(r"(?i)(?:\b(?:https?|ftp)://|\bwww\.|\bmailto:)")


class MessageRefused(NewsletterError, ValueError):
    """A message breaks one of the board's rules; the reason names it (and the config key)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    markdown: str  # as stored: line breaks normalised, control characters dropped
    html: str  # sanitised
    text: str  # plain text, for mail, the digest and search
    links: int


def _markdown() -> MarkdownIt:
    # CommonMark in linear time; raw HTML off, so "<script>" is shown as text, not run.
    return MarkdownIt("commonmark", {"html": False}).enable(["strikethrough"])


_MD = _markdown()


def tidy(text: str) -> str:
    """Line breaks as \\n, no control characters (NUL, bidi overrides stay visible text),
    no surrounding blank space."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(
        c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs")
    ).strip()


def count_links(markdown: str, html: str) -> int:
    """The links a message carries: written addresses and Markdown links, whichever is more."""
    return max(len(_WRITTEN_LINK.findall(markdown)), html.count("<a "))


def _absolute_only(tag: str, attribute: str, value: str) -> str | None:
    # A relative address means nothing in a notice or an issue, and "//host" would leave the
    # site while looking local: a link must name its scheme.
    if (tag, attribute) == ("a", "href"):
        return value if urllib.parse.urlsplit(value.strip()).scheme.lower() in URL_SCHEMES else None
    return value


def sanitize(html: str) -> str:
    return nh3.clean(
        html,
        tags=TAGS,
        clean_content_tags={"script", "style", "template", "noscript", "iframe", "object"},
        attributes=ATTRIBUTES,
        attribute_filter=_absolute_only,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
    ).strip()


def render(raw: str, limits: BoardSettings) -> Rendered:
    """The message as the board stores it; MessageRefused, with the reason, when it is empty,
    too long or carries too many links."""
    markdown = tidy(raw)
    if not markdown:
        raise MessageRefused("the message is empty; write something first")
    if len(markdown) > limits.max_chars:
        raise MessageRefused(
            f"the message is {len(markdown):,} characters long; the most is "
            f"{limits.max_chars:,} (board.max_chars)"
        )
    html = sanitize(_MD.render(markdown))
    links = count_links(markdown, html)
    if links > limits.max_links:
        raise MessageRefused(
            f"the message carries {links} links; the most is {limits.max_links} (board.max_links)"
        )
    return Rendered(markdown, html, html_to_text(html) if html else "", links)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The start of a message's text for the digest: whole words, on one paragraph."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat.rfind(" ", 0, limit)
    return flat[: cut if cut > limit // 2 else limit].rstrip(" ,.;:") + "…"


def display_name(name: str) -> str:
    """How the board names a member: their name (no control characters), never their address."""
    return " ".join(tidy(name).split()) or ANONYMOUS
