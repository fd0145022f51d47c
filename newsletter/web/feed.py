"""The archive as an Atom feed (RFC 4287), so readers can follow the newsletter without subscribing."""

from __future__ import annotations

import datetime as dt
from xml.etree import ElementTree as ET

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter.services import issues
from newsletter.services.boundary import Gateway
from newsletter.storage.models import utcnow
from newsletter.web.pages import CSP_NONE, security_headers

ATOM = "http://www.w3.org/2005/Atom"
ENTRIES = 20  # the newest issues; older ones are on the archive page


def atom(entries: list[issues.FeedEntry], *, title: str, base: str, now: dt.datetime) -> bytes:
    """The feed document: one entry per issue, linking to its archive page."""
    ET.register_namespace("", ATOM)

    def sub(parent: ET.Element, tag: str, text: str = "", **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
        if text:
            element.text = text
        return element

    feed = ET.Element(f"{{{ATOM}}}feed")
    sub(feed, "title", title)
    sub(feed, "id", f"{base}/archive")
    sub(feed, "link", rel="self", type="application/atom+xml", href=f"{base}/archive.atom")
    sub(feed, "link", rel="alternate", type="text/html", href=f"{base}/archive")
    # A feed's time is its newest entry's (a feed with none: now), so it only changes with them.
    sub(feed, "updated", _stamp(entries[0].published if entries else now))
    author = sub(feed, "author")
    sub(author, "name", title)
    for entry in entries:
        item = sub(feed, "entry")
        link = f"{base}/archive/{entry.id}"
        sub(item, "title", entry.subject)
        sub(item, "id", link)
        sub(item, "link", rel="alternate", type="text/html", href=link)
        sub(item, "updated", _stamp(entry.published))
        sub(item, "published", _stamp(entry.published))
        if entry.items:
            sub(item, "content", _contents(entry.items), type="html")
    document: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return document


def _contents(items: tuple[tuple[str, str], ...]) -> str:
    """The issue's items as an HTML list (the feed escapes it once more, as type="html" says)."""
    rows = []
    for title, url in items:
        li = ET.Element("li")
        if url:
            ET.SubElement(li, "a", href=url).text = title
        else:
            li.text = title
        rows.append(ET.tostring(li, encoding="unicode", method="html"))
    return "<ul>" + "".join(rows) + "</ul>"


def _stamp(when: dt.datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def feed_route(gateway: Gateway, title: str, base: str) -> Route:
    async def archive_atom(request: Request) -> Response:
        entries = await gateway.read(issues.feed_entries, ENTRIES)
        body = atom(entries, title=title, base=base, now=utcnow())
        headers = {**security_headers(CSP_NONE), "Cache-Control": "max-age=300"}
        return Response(body, media_type="application/atom+xml", headers=headers)

    return Route("/archive.atom", archive_atom, methods=["GET", "HEAD"])
