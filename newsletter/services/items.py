"""Item use-cases: import a source, list, hold back, release and remove items not yet gone out."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from newsletter.content.sources import (
    DEFAULT_SECTION,
    NewItem,
    SourceReport,
    clean_title,
    html_to_text,
    is_web_url,
    read_source,
    render_markdown,
)
from newsletter.errors import NewsletterError
from newsletter.services.unit import Permission, Services, Unit, requires, use_case
from newsletter.storage import items as rows
from newsletter.storage.models import Item


class NoSuchItem(NewsletterError, LookupError):
    """No item has the GUID (or number) given."""


class ItemGoneOut(NewsletterError):
    """The item has gone out in an issue: what members received stays as it was."""


@dataclass(frozen=True, slots=True)
class ItemInfo:
    id: int
    guid: str
    section: str
    title: str
    published_at: dt.datetime | None
    held: bool
    size: int  # bytes of body HTML
    position: int | None = None  # its place in the next issue, as an editor ordered it
    source: str = ""


def _info(item: Item) -> ItemInfo:
    return ItemInfo(
        item.id,
        item.guid,
        item.section,
        item.title,
        item.published_at,
        item.held,
        len(item.body_html.encode()),
        item.position,
        item.source,
    )


@use_case
@requires(Permission.WRITE)
def add(unit: Unit, entries: dict[str, NewItem], report: SourceReport) -> SourceReport:
    """Store a source's entries (one per GUID); a GUID stored already is left as it is."""
    known = rows.known_guids(unit.session, list(entries))
    fresh = []
    for guid, entry in entries.items():
        if guid in known:
            report.known += 1
            continue
        fresh.append(
            Item(
                guid=guid,
                source=report.source[:1024],
                section=entry.section,
                title=entry.title,
                url=entry.url,
                body_html=entry.body_html,
                body_text=html_to_text(entry.body_html),
                published_at=entry.published_at,
            )
        )
    rows.add_items(unit.session, fresh)
    report.added += len(fresh)
    unit.audit(
        "import-items",
        detail=f"{report.source[:300]}: {report.found} entries, {report.added} new, "
        f"{report.known} known, {report.duplicates} duplicates, {report.rejected} refused",
    )
    return report


def import_source(
    services: Services,
    source: str,
    *,
    actor: str,
    section: str | None = None,
    size_limit: int | None = None,
) -> SourceReport:
    """Read a feed (file or URL) or Markdown folder, then store its new items (one use-case).
    Reading and parsing happen before the transaction: a slow feed holds no lock."""
    limit = services.settings.items.size_limit if size_limit is None else size_limit
    entries, report = read_source(source, section=section, size_limit=limit)
    return services.run(actor, add, entries, report)


def upcoming(unit: Unit) -> list[ItemInfo]:
    """Every item not gone out yet, in the next issue's order (held ones too, marked)."""
    found = rows.all_items(unit.session, new_only=True)

    def order(item: Item) -> tuple[bool, int, float, int]:
        when = (item.published_at or item.created_at).timestamp()
        return (item.position is None, item.position or 0, -when, -item.id)

    return [_info(i) for i in sorted(found, key=order)]


def listing(unit: Unit, *, new_only: bool = False) -> list[ItemInfo]:
    """Items in the order they were added; with new_only, those in no issue yet."""
    return [_info(i) for i in rows.all_items(unit.session, new_only=new_only)]


def _find(unit: Unit, ref: str) -> Item:
    """An item by GUID, or by its number (as `items list` shows it)."""
    item = rows.by_guid(unit.session, ref)
    if item is None and ref.isdigit() and len(ref) < 10:
        item = rows.get(unit.session, int(ref))
    if item is None:
        raise NoSuchItem(f"no item has the GUID or number {ref!r} (see `newsletter items list`)")
    return item


def _not_gone_out(unit: Unit, item: Item, doing: str) -> None:
    issue_id = rows.issue_of(unit.session, item.id)
    if issue_id is not None:
        raise ItemGoneOut(f"item {item.guid!r} went out in issue #{issue_id}: it cannot be {doing}")


@dataclass(frozen=True, slots=True)
class ItemDraft:
    """An item as an editor writes it on the desk (or with `items add`)."""

    title: str
    body_md: str
    section: str = ""
    url: str = ""
    date: dt.date | None = None


class BadItem(NewsletterError, ValueError):
    """A field of an item is not acceptable; nothing was stored."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _checked(unit: Unit, draft: ItemDraft) -> tuple[str, str, str, str, dt.datetime | None]:
    """(title, section, url, body_html, published_at) of a valid draft; BadItem names the field."""
    title = clean_title(draft.title)
    if not title:
        raise BadItem("title", "is empty")
    if len(title) > 1000:
        raise BadItem("title", f"is {len(title):,} characters, over 1,000")
    section = " ".join(draft.section.split()) or DEFAULT_SECTION
    if len(section) > 200 or any(c in section for c in "\r\n"):
        raise BadItem("section", "must be one line of at most 200 characters")
    url = draft.url.strip()
    if url and not is_web_url(url):
        raise BadItem("url", f"{url[:80]!r} is not an http(s) address")
    body_html = render_markdown(draft.body_md, base=url)
    limit = unit.settings.items.size_limit
    if len(body_html.encode()) > limit:
        raise BadItem(
            "body",
            f"is {len(body_html.encode()):,} bytes as HTML, over the {limit:,}-byte limit "
            "for one item (items.size_limit)",
        )
    published = None
    if draft.date is not None:
        published = dt.datetime(draft.date.year, draft.date.month, draft.date.day, tzinfo=dt.UTC)
    return title, section, url, body_html, published


@use_case
@requires(Permission.WRITE)
def write(unit: Unit, draft: ItemDraft) -> ItemInfo:
    """A new item, written in Markdown on the desk: it is new, so the next issue may carry it."""
    title, section, url, body_html, published = _checked(unit, draft)
    item = Item(
        guid=f"desk:{secrets.token_hex(8)}",
        source="desk",
        section=section,
        title=title,
        url=url,
        body_html=body_html,
        body_text=html_to_text(body_html),
        body_md=draft.body_md,
        published_at=published,
        created_at=unit.now,
    )
    rows.add_items(unit.session, [item])
    unit.audit("write-item", detail=f"{item.guid}: {title[:200]}")
    return _info(item)


@use_case
@requires(Permission.WRITE)
def edit(unit: Unit, ref: str, draft: ItemDraft) -> ItemInfo:
    """Change an item that has not gone out (an imported one too: its body becomes the
    Markdown given)."""
    item = _find(unit, ref)
    _not_gone_out(unit, item, "edited")
    item.title, item.section, item.url, item.body_html, item.published_at = _checked(unit, draft)
    item.body_text = html_to_text(item.body_html)
    item.body_md = draft.body_md
    unit.audit("edit-item", detail=f"{item.guid}: {item.title[:200]}")
    return _info(item)


@use_case
@requires(Permission.WRITE)
def reorder(unit: Unit, refs: list[str]) -> list[ItemInfo]:
    """The next issue's order: these items first, in this order (within their sections, whose
    order is issue.sections'), every other new item after them, newest first."""
    found = [_find(unit, ref) for ref in refs]
    for item in found:
        _not_gone_out(unit, item, "reordered")
    if len({i.id for i in found}) != len(found):
        raise BadItem("order", "names an item twice")
    rows.set_positions(unit.session, [i.id for i in found])
    unit.audit("reorder-items", detail=", ".join(i.guid for i in found)[:2000])
    for item in found:
        unit.session.expire(item)
    return [_info(i) for i in found]


def body_md(unit: Unit, ref: str) -> tuple[ItemInfo, str, str]:
    """An item for the editor's form: its info, its Markdown (or, for an imported item, its
    HTML, which Markdown passes through) and its URL."""
    item = _find(unit, ref)
    return _info(item), item.body_md if item.body_md is not None else item.body_html, item.url


def preview(unit: Unit, body: str) -> str:
    """Markdown as the item will show it (sanitised HTML), for the editor's live preview."""
    return render_markdown(body[:200_000])


@use_case
@requires(Permission.WRITE)
def remove(unit: Unit, ref: str) -> ItemInfo:
    """Delete an item that has not gone out (a bad import, an item too large to send)."""
    item = _find(unit, ref)
    _not_gone_out(unit, item, "removed")
    info = _info(item)
    rows.delete_item(unit.session, item.id)
    unit.audit("remove-item", detail=f"{info.guid}: {info.title[:200]}")
    return info


@use_case
@requires(Permission.WRITE)
def hold(unit: Unit, ref: str, held: bool = True) -> ItemInfo:
    """Hold an item back (it never goes out until released), or release it."""
    item = _find(unit, ref)
    _not_gone_out(unit, item, "held" if held else "released")
    rows.set_held(unit.session, item.id, held)
    unit.session.expire(item)
    unit.audit("hold-item" if held else "release-item", detail=f"{item.guid}: {item.title[:200]}")
    return _info(item)
