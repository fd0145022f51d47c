"""Item sources: RSS/Atom feeds (file or URL) and folders of Markdown files → sanitised, deduplicated items."""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import html
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import feedparser
import nh3
from markdown_it import MarkdownIt

from newsletter.config import ItemsSettings
from newsletter.content import frontmatter
from newsletter.content.text import html_to_text
from newsletter.errors import SourceError

__all__ = ["html_to_text"]  # the text of an item, also for the doors that import it here

DEFAULT_SECTION = "News"
FETCH_TIMEOUT = 30.0
# The most a feed may be, fetched or read from a file alike.
FETCH_LIMIT = 10 * 1024 * 1024
ITEM_LIMIT = ItemsSettings().size_limit

# What an item body may keep: text structure, links and images. No script, style, forms,
# frames, event handlers or inline CSS; links only to http(s) and mailto.
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "dl", "dt",
    "em", "figcaption", "figure", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "li",
    "ol", "p", "pre", "q", "s", "small", "strong", "sub", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
    "abbr": {"title"},
}
URL_SCHEMES = {"http", "https", "mailto"}


def sanitize(body: str, base: str = "") -> str:
    """Make outside HTML safe to embed: nh3 with an allow-list; script/style content is dropped.

    A relative link or image is made absolute against `base` (an http(s) URL): in an email
    there is no page for it to be relative to. Without a base it is dropped.
    """

    def absolute(tag: str, attribute: str, value: str) -> str | None:
        if (tag, attribute) not in (("a", "href"), ("img", "src")):
            return value
        scheme = urllib.parse.urlsplit(value.strip()).scheme.lower()
        if scheme:  # nh3 lets only URL_SCHEMES through; an image is fetched over the web
            return value if tag == "a" or scheme in ("http", "https") else None
        joined = urllib.parse.urljoin(base, value.strip()) if base else ""
        return joined if is_web_url(joined) else None

    return nh3.clean(
        body,
        tags=ALLOWED_TAGS,
        clean_content_tags={"script", "style", "template", "noscript", "iframe", "object"},
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=absolute,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
    ).strip()


def clean_title(raw: str) -> str:
    """A one-line plain-text title: tags stripped, entities decoded, whitespace folded."""
    text = html.unescape(nh3.clean(raw, tags=set()))
    return " ".join(text.split())


@dataclass(slots=True)
class NewItem:
    guid: str
    title: str
    section: str
    url: str
    body_html: str
    published_at: dt.datetime | None
    where: str = ""  # "entry 3" or a file's name, for messages


@dataclass
class SourceReport:
    source: str
    found: int = 0  # entries (or files) in the source, whatever became of them
    added: int = 0
    known: int = 0
    duplicates: int = 0  # entries skipped because an earlier one has their GUID
    rejected: int = 0  # entries or files refused; each has a line in problems
    problems: list[str] = field(default_factory=list)

    def reject(self, problem: str) -> None:
        self.rejected += 1
        self.problems.append(problem)


def read_source(
    source: str, *, section: str | None = None, size_limit: int = ITEM_LIMIT
) -> tuple[dict[str, NewItem], SourceReport]:
    """Every entry of a feed (path or URL) or Markdown folder, one per GUID, and the report.

    An entry (or Markdown file) that is bad is reported and skipped; the rest still counts.
    Nothing is stored here: services/items.py stores what this returns.
    """
    report = SourceReport(source)
    path = Path(source)
    if source.startswith(("http://", "https://")):
        entries = list(parse_feed(fetch(source), source, section, report, size_limit=size_limit))
    elif path.is_dir():
        entries = list(read_markdown_folder(path, section, report, size_limit=size_limit))
    elif path.is_file():
        data = read_feed_file(path)
        entries = list(parse_feed(data, source, section, report, size_limit=size_limit))
    else:
        raise SourceError(source, "no such file or folder, and not an http(s) URL")
    report.found = len(entries) + report.rejected
    return unique_entries(entries, source, report), report


def unique_entries(
    entries: Iterable[NewItem], source: str, report: SourceReport
) -> dict[str, NewItem]:
    """One entry per GUID, the first; the others are reported as duplicates."""
    groups: dict[str, list[NewItem]] = {}
    for entry in entries:
        groups.setdefault(entry.guid, []).append(entry)
    unique: dict[str, NewItem] = {}
    for guid, group in groups.items():
        unique[guid] = group[0]
        if len(group) > 1:
            report.duplicates += len(group) - 1
            wheres = [e.where for e in group]
            report.problems.append(
                f"{source}: {_listing(wheres)} have the same GUID {guid[:200]!r}; "
                f"{wheres[0]} is imported, {_listing(wheres[1:])} skipped as "
                + ("duplicates" if len(wheres) > 2 else "a duplicate")
            )
    return unique


def read_feed_file(path: Path) -> bytes:
    """A feed file's bytes, refused unread when it is larger than a fetched feed may be."""
    try:
        size = path.stat().st_size
        if size <= FETCH_LIMIT:
            with path.open("rb") as f:
                data = f.read(FETCH_LIMIT + 1)  # the file may have grown since
            size = len(data)
    except OSError as exc:
        raise SourceError(str(path), f"cannot read the file: {exc.strerror}") from None
    if size > FETCH_LIMIT:
        raise SourceError(str(path), _feed_too_large(size))
    return data


def _feed_too_large(size: int | None) -> str:
    found = f"{size:,} bytes" if size is not None else "larger"
    return f"the feed is {found}, over the {FETCH_LIMIT:,}-byte limit for a feed"


def fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "newsletter (+feed import)"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
            data: bytes = response.read(FETCH_LIMIT + 1)
    except urllib.error.HTTPError as exc:
        raise SourceError(url, f"the server answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(url, f"cannot fetch: {reason}") from None
    if len(data) > FETCH_LIMIT:
        raise SourceError(url, _feed_too_large(None))
    return data


def parse_feed(
    data: bytes,
    source: str,
    section: str | None,
    report: SourceReport,
    *,
    size_limit: int = ITEM_LIMIT,
) -> Iterator[NewItem]:
    # A relative link means nothing in an email, so every entry gets a base: its xml:base,
    # relative to the document's base, which is the URL the feed came from (RFC 3986 5.1.3)
    # or, for a file, the site the feed names as its link.
    document = source if is_web_url(source) else ""
    parsed = _parse(data, document)
    home = parsed.feed.get("link", "")
    if not document and is_web_url(home):
        parsed = _parse(data, home)
    if not parsed.get("version"):
        why = parsed.get("bozo_exception") or "no RSS or Atom elements found"
        raise SourceError(source, f"not an RSS or Atom feed: {why}")
    problem = parsed.get("bozo_exception")
    if parsed.get("bozo") and (not parsed.entries or _is_syntax_error(problem)):
        # A truncated or ill-formed document may parse into half an entry: refuse it whole.
        raise SourceError(source, f"the feed is not well-formed XML: {problem}")
    if problem is not None:
        report.problems.append(f"{source}: {problem}")
    for index, entry in enumerate(parsed.entries, start=1):
        where = f"entry {index}"
        title = clean_title(entry.get("title", ""))
        if not title:
            report.reject(f"{source}: {where} has no title; skipped")
            continue
        # feedparser has resolved the entry's link already; the body is left to sanitize().
        link = entry.get("link", "")
        guid = entry.get("id") or link or _digest(title, entry.get("published", ""))
        if entry.get("content"):
            detail = entry["content"][0]
        else:
            detail = entry.get("summary_detail") or {"value": entry.get("summary", "")}
        base = detail.get("base", "")
        body_html = sanitize(detail.get("value", ""), base if is_web_url(base) else "")
        size = len(body_html.encode())
        if size > size_limit:
            report.reject(f"{source}: {where} ({title[:80]!r}): {_too_large(size, size_limit)}")
            continue
        tags = entry.get("tags") or []
        entry_section = section or (tags[0].get("term") if tags else None) or DEFAULT_SECTION
        yield NewItem(
            guid=guid[:1024],
            title=title[:1000],
            section=" ".join(str(entry_section).split())[:200],
            url=link if is_web_url(link) else "",
            body_html=body_html,
            published_at=_parsed_time(entry.get("published_parsed") or entry.get("updated_parsed")),
            where=where,
        )


def read_markdown_folder(
    folder: Path, section: str | None, report: SourceReport, *, size_limit: int = ITEM_LIMIT
) -> Iterator[NewItem]:
    """Each *.md file is one item: YAML front matter (title required) and a Markdown body.

    A bad file is reported and skipped; the others are read all the same.
    """
    files = sorted(folder.glob("*.md"))
    if not files:
        raise SourceError(str(folder), "the folder holds no *.md files")
    for path in files:
        try:
            yield _markdown_item(path, section, size_limit)
        except SourceError as exc:
            report.reject(str(exc))


def _markdown_item(path: Path, section: str | None, size_limit: int) -> NewItem:
    try:
        size = path.stat().st_size
        if size > size_limit:
            raise SourceError(str(path), _too_large(size, size_limit, "the file"))
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(str(path), f"cannot read the file: {exc.strerror}") from None
    try:
        # utf-8-sig: a byte order mark (as some editors write) is not part of the text.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SourceError(
            str(path),
            f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8",
        ) from None
    try:
        meta = frontmatter.split(text)
        title = clean_title(meta.text("title"))
        if not title:
            raise ValueError("the front matter has no title")
        published = frontmatter.published(meta)
        url, guid = meta.text("url"), meta.text("guid")
        item_section = section or meta.text("section") or DEFAULT_SECTION
    except ValueError as exc:
        raise SourceError(str(path), str(exc)) from None
    url = url if is_web_url(url) else ""
    body_html = sanitize(_markdown().render(meta.body), base=url)
    if len(body_html.encode()) > size_limit:
        raise SourceError(str(path), _too_large(len(body_html.encode()), size_limit))
    return NewItem(
        guid=(guid or f"md:{path.stem}")[:1024],
        title=title[:1000],
        section=" ".join(item_section.split())[:200],
        url=url,
        body_html=body_html,
        published_at=published,
        where=path.name,
    )


def render_markdown(text: str, *, base: str = "") -> str:
    """Markdown (CommonMark, tables, strikethrough) → sanitised HTML, as every item gets."""
    return sanitize(_markdown().render(text), base=base)


def _markdown() -> MarkdownIt:
    # markdown-it-py: CommonMark in linear time. (Python-Markdown took 9 s on 8 KB of "[" and
    # minutes on an item's worth, quadratic in unmatched brackets.) Raw HTML is allowed in,
    # because sanitize() runs on the result.
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def _too_large(size: int, limit: int, what: str = "its body") -> str:
    return (
        f"{what} is {size:,} bytes, over the {limit:,}-byte limit for one item "
        "(items.size_limit); skipped"
    )


# Not hierarchical, so a relative reference stays relative against it (urljoin leaves it).
_NO_BASE = "urn:newsletter:no-base"


def _parse(data: bytes, base: str) -> Any:
    # feedparser scopes xml:base per element only under a document base: without one, an
    # entry's xml:base leaks into the entries after it. The content type is given with it
    # (else feedparser flags the feed); application/xml lets the XML declaration name the
    # encoding, as it does for a feed read without headers.
    headers = {"content-location": base or _NO_BASE, "content-type": "application/xml"}
    return feedparser.parse(
        data, sanitize_html=False, resolve_relative_uris=False, response_headers=headers
    )


def _listing(wheres: list[str]) -> str:
    """ "entry 3", "entries 3, 7 and 9", or file names joined the same way."""
    if len(wheres) > 1 and all(w.startswith("entry ") for w in wheres):
        wheres = ["entries " + wheres[0].removeprefix("entry ")] + [
            w.removeprefix("entry ") for w in wheres[1:]
        ]
    return " and ".join([", ".join(wheres[:-1]), wheres[-1]]) if len(wheres) > 1 else wheres[0]


def _is_syntax_error(problem: object) -> bool:
    from xml.sax import SAXException

    return isinstance(problem, SAXException)


def is_web_url(url: str) -> bool:
    return url.startswith(("http://", "https://")) and not any(c in url for c in "\r\n\t \"'<>")


def _parsed_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromtimestamp(calendar.timegm(value), dt.UTC)


def _digest(*parts: str) -> str:
    return "sha1:" + hashlib.sha1("\x1f".join(parts).encode()).hexdigest()
