"""Item sources: RSS/Atom feeds (file or URL) and folders of Markdown files → sanitised, deduplicated items."""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import html
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import feedparser
import html2text
import markdown
import nh3
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.errors import SourceError
from newsletter.storage.models import Item

DEFAULT_SECTION = "News"
FETCH_TIMEOUT = 30.0
FETCH_LIMIT = 10 * 1024 * 1024

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


def sanitize(body: str) -> str:
    """Make outside HTML safe to embed: nh3 with an allow-list; script/style content is dropped."""
    return nh3.clean(
        body,
        tags=ALLOWED_TAGS,
        clean_content_tags={"script", "style", "template", "noscript", "iframe", "object"},
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
    ).strip()


def html_to_text(body_html: str) -> str:
    """Readable plain text of sanitised HTML: for the text part and for search."""
    h = html2text.HTML2Text()
    h.body_width = 76
    h.unicode_snob = True
    h.ignore_emphasis = True
    h.ignore_images = True
    h.protect_links = True
    return str(h.handle(body_html)).strip()


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


@dataclass
class SourceReport:
    source: str
    found: int = 0
    added: int = 0
    known: int = 0
    problems: list[str] = field(default_factory=list)


def import_source(
    sessions: sessionmaker[Session], source: str, *, section: str | None = None
) -> SourceReport:
    """Import every entry of a feed (path or URL) or Markdown folder; known GUIDs are left alone."""
    report = SourceReport(source)
    path = Path(source)
    if source.startswith(("http://", "https://")):
        entries = list(parse_feed(fetch(source), source, section, report))
    elif path.is_dir():
        entries = list(read_markdown_folder(path, section, report))
    elif path.is_file():
        entries = list(parse_feed(path.read_bytes(), source, section, report))
    else:
        raise SourceError(source, "no such file or folder, and not an http(s) URL")
    report.found = len(entries)
    store_items(sessions, entries, source, report)
    return report


def store_items(
    sessions: sessionmaker[Session], entries: Iterable[NewItem], source: str, report: SourceReport
) -> None:
    unique: dict[str, NewItem] = {}
    for entry in entries:
        unique.setdefault(entry.guid, entry)
    with sessions.begin() as session:
        known: set[str] = set()
        guids = list(unique)
        for start in range(0, len(guids), 500):
            known.update(
                session.scalars(select(Item.guid).where(Item.guid.in_(guids[start : start + 500])))
            )
        for guid, entry in unique.items():
            if guid in known:
                report.known += 1
                continue
            session.add(
                Item(
                    guid=guid,
                    source=source[:1024],
                    section=entry.section,
                    title=entry.title,
                    url=entry.url,
                    body_html=entry.body_html,
                    body_text=html_to_text(entry.body_html),
                    published_at=entry.published_at,
                )
            )
            report.added += 1


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
        raise SourceError(url, f"the feed is larger than {FETCH_LIMIT // (1024 * 1024)} MB")
    return data


def parse_feed(
    data: bytes, source: str, section: str | None, report: SourceReport
) -> Iterator[NewItem]:
    parsed: Any = feedparser.parse(data, sanitize_html=False, resolve_relative_uris=False)
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
            report.problems.append(f"{source}: {where} has no title; skipped")
            continue
        link = entry.get("link", "")
        guid = entry.get("id") or link or _digest(title, entry.get("published", ""))
        if entry.get("content"):
            body = entry["content"][0].get("value", "")
        else:
            body = entry.get("summary", "")
        tags = entry.get("tags") or []
        entry_section = section or (tags[0].get("term") if tags else None) or DEFAULT_SECTION
        yield NewItem(
            guid=guid[:1024],
            title=title[:1000],
            section=" ".join(str(entry_section).split())[:200],
            url=link if _is_web_url(link) else "",
            body_html=sanitize(body),
            published_at=_parsed_time(entry.get("published_parsed") or entry.get("updated_parsed")),
        )


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.S)


def read_markdown_folder(
    folder: Path, section: str | None, report: SourceReport
) -> Iterator[NewItem]:
    """Each *.md file is one item: YAML front matter (title required) and a Markdown body."""
    files = sorted(folder.glob("*.md"))
    if not files:
        raise SourceError(str(folder), "the folder holds no *.md files")
    for path in files:
        try:
            yield _markdown_item(path, section)
        except SourceError as exc:
            report.problems.append(str(exc))


def _markdown_item(path: Path, section: str | None) -> NewItem:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SourceError(str(path), "not UTF-8 text") from None
    match = _FRONT_MATTER.match(text)
    if not match:
        raise SourceError(
            str(path), "no front matter: start the file with a '---' block holding title:"
        )
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise SourceError(str(path), f"the front matter is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise SourceError(str(path), "the front matter must be a mapping of keys to values")
    title = clean_title(str(meta.get("title", "")))
    if not title:
        raise SourceError(str(path), "the front matter has no title")
    body = markdown.markdown(text[match.end() :], extensions=["extra"], output_format="html")
    date = meta.get("date")
    published = None
    if isinstance(date, dt.datetime):
        published = date if date.tzinfo else date.replace(tzinfo=dt.UTC)
    elif isinstance(date, dt.date):
        published = dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC)
    url = str(meta.get("url", ""))
    return NewItem(
        guid=str(meta.get("guid") or f"md:{path.stem}")[:1024],
        title=title[:1000],
        section=" ".join(str(section or meta.get("section") or DEFAULT_SECTION).split())[:200],
        url=url if _is_web_url(url) else "",
        body_html=sanitize(body),
        published_at=published,
    )


def _is_syntax_error(problem: object) -> bool:
    from xml.sax import SAXException

    return isinstance(problem, SAXException)


def _is_web_url(url: str) -> bool:
    return url.startswith(("http://", "https://")) and not any(c in url for c in "\r\n\t \"'<>")


def _parsed_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromtimestamp(calendar.timegm(value), dt.UTC)


def _digest(*parts: str) -> str:
    return "sha1:" + hashlib.sha1("\x1f".join(parts).encode()).hexdigest()
