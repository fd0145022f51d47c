"""Queries on items: what is new (in no issue, not held), what an issue carried, adding and removing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from newsletter.storage.models import IssueItem, Item


def new_items(session: Session, limit: int) -> Sequence[Item]:
    """Items that have gone out in no issue yet and are not held, oldest first."""
    return session.scalars(
        select(Item)
        .where(Item.id.not_in(select(IssueItem.item_id)), Item.held.is_(False))
        .order_by(func.coalesce(Item.published_at, Item.created_at), Item.id)
        .limit(limit)
    ).all()


def count_new_items(session: Session) -> int:
    """How many items the next issue could carry (new and not held)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Item)
            .where(Item.id.not_in(select(IssueItem.item_id)), Item.held.is_(False))
        )
        or 0
    )


def all_items(session: Session, *, new_only: bool = False, limit: int = 10_000) -> Sequence[Item]:
    """Items in the order they were added; with new_only, those in no issue yet (held ones too)."""
    query = select(Item).order_by(Item.id).limit(limit)
    if new_only:
        query = query.where(Item.id.not_in(select(IssueItem.item_id)))
    return session.scalars(query).all()


def issue_items(session: Session, issue_id: int) -> Sequence[Item]:
    return session.scalars(
        select(Item)
        .join(IssueItem, IssueItem.item_id == Item.id)
        .where(IssueItem.issue_id == issue_id)
        .order_by(IssueItem.position)
    ).all()


def known_guids(session: Session, guids: Sequence[str]) -> set[str]:
    """Which of `guids` are stored already (asked 500 at a time)."""
    known: set[str] = set()
    for start in range(0, len(guids), 500):
        known.update(
            session.scalars(select(Item.guid).where(Item.guid.in_(guids[start : start + 500])))
        )
    return known


def add_items(session: Session, items: Iterable[Item]) -> None:
    session.add_all(items)
    session.flush()


def get(session: Session, item_id: int) -> Item | None:
    return session.get(Item, item_id)


def by_guid(session: Session, guid: str) -> Item | None:
    return session.scalar(select(Item).where(Item.guid == guid))


def issue_of(session: Session, item_id: int) -> int | None:
    """The issue that carried the item, if it has gone out."""
    return session.scalar(select(IssueItem.issue_id).where(IssueItem.item_id == item_id))


def delete_item(session: Session, item_id: int) -> None:
    session.execute(delete(Item).where(Item.id == item_id))


def set_held(session: Session, item_id: int, held: bool) -> None:
    session.execute(update(Item).where(Item.id == item_id).values(held=held))


def set_positions(session: Session, ordered: list[int]) -> None:
    """The next issue's order: these items first, in this order; every other new item after."""
    session.execute(
        update(Item).where(Item.id.not_in(select(IssueItem.item_id))).values(position=None)
    )
    for position, item_id in enumerate(ordered):
        session.execute(update(Item).where(Item.id == item_id).values(position=position))


def claim_for_issue(session: Session, issue_id: int, item_ids: Sequence[int]) -> None:
    """An item goes out in one issue only: the unique item_id makes a second claim fail."""
    session.add_all(
        IssueItem(issue_id=issue_id, item_id=item_id, position=pos)
        for pos, item_id in enumerate(item_ids)
    )
