"""Item use-cases: import a source, list, hold back, release and remove items not yet gone out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from newsletter.content.sources import NewItem, SourceReport, html_to_text, read_source
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


def _info(item: Item) -> ItemInfo:
    return ItemInfo(
        item.id,
        item.guid,
        item.section,
        item.title,
        item.published_at,
        item.held,
        len(item.body_html.encode()),
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
