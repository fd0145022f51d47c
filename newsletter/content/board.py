"""Board messages as text: Markdown rendered and sanitised (nh3) under the board's limits, and excerpts.

A member's message is Markdown with raw HTML switched off (markdown-it-py escapes any tag a
member types), then cleaned by nh3 with a small allow-list, as a second guard: text structure
and links only, no images (they would load from elsewhere), no attributes but a link's
address, and links only to http(s) and mailto, marked nofollow and ugc for search engines.
"""

from __future__ import annotations

import html as html_lib
import re
import urllib.parse
from dataclasses import dataclass

import nh3
from markdown_it import MarkdownIt

from newsletter.config import BoardSettings
from newsletter.errors import NewsletterError
from newsletter.i18n import N_, Said

TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "hr", "li", "ol", "p", "pre", "s", "strong", "ul",
}  # fmt: skip
ATTRIBUTES = {"a": {"href"}}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "nofollow ugc noopener noreferrer"
EXCERPT_CHARS = 280
ANONYMOUS = "A member"
_ANCHOR = re.compile(r'<a href="([^"]*)"[^>]*>(.*?)</a>', re.S)
_BREAK = re.compile(r"</(?:p|li|blockquote|pre)>|<br>|<hr>")
_BLANK_LINES = re.compile(r"\n\s*\n\s*")
# What a reader would take for a link, written out or in Markdown's link syntax.
_WRITTEN_LINK = re.compile(r"(?i)(?:\b(?:https?|ftp)://|\bwww\.|\bmailto:)")


class MessageRefused(NewsletterError, ValueError):
    """A message breaks one of the board's rules; the reason names it (and the config key),
    in words a page can say in the member's language (`said`)."""

    def __init__(self, said: Said) -> None:
        super().__init__(said)
        self.said = said


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


# Unicode's control characters (Cc) but tab and line feed, and lone surrogates (Cs).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def tidy(text: str) -> str:
    """Line breaks as \\n, no control characters (NUL, bidi overrides stay visible text),
    no surrounding blank space."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def count_links(markdown: str, html: str) -> int:
    """The links a message carries: written addresses and Markdown links, whichever is more."""
    return max(len(_WRITTEN_LINK.findall(markdown)), html.count("<a "))


def _absolute_only(tag: str, attribute: str, value: str) -> str | None:
    # A relative address means nothing in a notice or an issue, and "//host" would leave the
    # site while looking local: a link must name its scheme.
    if (tag, attribute) == ("a", "href"):
        return value if urllib.parse.urlsplit(value.strip()).scheme.lower() in URL_SCHEMES else None
    return value


# Built once: making a cleaner costs more than cleaning a message with it.
_CLEANER = nh3.Cleaner(
    tags=TAGS,
    clean_content_tags={"script", "style", "template", "noscript", "iframe", "object"},
    attributes=ATTRIBUTES,
    attribute_filter=_absolute_only,
    url_schemes=URL_SCHEMES,
    link_rel=LINK_REL,
)
_TEXT_ONLY = nh3.Cleaner(tags=set())


def sanitize(html: str) -> str:
    return _CLEANER.clean(html).strip()


def plain_text(html: str) -> str:
    """The text of a sanitised message (the shape `sanitize` leaves): a link's address after
    its words, one line a paragraph or list item. A fraction of html2text's cost, which
    counts on the posting path."""
    html = _ANCHOR.sub(lambda m: f"{m.group(2)} ({m.group(1)})", html).replace("<li>", "<li>- ")
    text = html_lib.unescape(_TEXT_ONLY.clean(_BREAK.sub("\n", html)))
    return _BLANK_LINES.sub("\n\n", "\n".join(line.strip() for line in text.split("\n"))).strip()


def render(raw: str, limits: BoardSettings) -> Rendered:
    """The message as the board stores it; MessageRefused, with the reason, when it is empty,
    too long or carries too many links."""
    markdown = tidy(raw)
    if not markdown:
        raise MessageRefused(Said(N_("the message is empty; write something first")))
    if len(markdown) > limits.max_chars:
        raise MessageRefused(
            Said(
                N_(
                    "the message is %(length)s characters long; the most is %(most)s "
                    "(board.max_chars)"
                ),
                length=f"{len(markdown):,}",
                most=f"{limits.max_chars:,}",
            )
        )
    html = sanitize(_MD.render(markdown))
    links = count_links(markdown, html)
    if links > limits.max_links:
        raise MessageRefused(
            Said(
                N_("the message carries %(links)s links; the most is %(most)s (board.max_links)"),
                links=links,
                most=limits.max_links,
            )
        )
    return Rendered(markdown, html, plain_text(html), links)


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
