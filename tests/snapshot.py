"""Every table's rows, to show that bad input changed nothing stored (or added only the good part)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, MetaData, Table, select
from sqlalchemy.orm import Session, sessionmaker

Snapshot = dict[str, list[tuple[Any, ...]]]

# SQLite's full-text indexes (FTS5 and their shadow tables) are derived from items and board
# messages by triggers; their rows are binary pages that say nothing a reader of those tables
# cannot see.
DERIVED = ("items_fts", "board_fts")


def _engine(target: Engine | sessionmaker[Session]) -> Engine:
    return target if isinstance(target, Engine) else target.kw["bind"]


def tables_of(target: Engine | sessionmaker[Session]) -> list[Table]:
    """The database's tables, found by reflection (not from the models), less derived ones."""
    meta = MetaData()
    meta.reflect(_engine(target))
    return [t for t in meta.sorted_tables if not t.name.startswith(DERIVED)]


def snapshot(
    target: Engine | sessionmaker[Session], tables: Sequence[Table] | None = None
) -> Snapshot:
    """Each table of the database → its rows, sorted. Reflection costs more than reading a
    small database (~75 ms on PostgreSQL): a test taking many snapshots of one schema may
    reflect once with tables_of and pass the tables."""
    engine = _engine(target)
    with engine.connect() as conn:
        return {
            t.name: sorted(map(tuple, conn.execute(select(t))), key=repr)
            for t in (tables_of(engine) if tables is None else tables)
        }


def added(before: Snapshot, after: Snapshot) -> Snapshot:
    """The rows `after` has that `before` had not; fails if any row was changed or removed."""
    assert set(after) == set(before), f"tables changed: {set(after) ^ set(before)}"
    new: Snapshot = {}
    for name, rows in before.items():
        remaining = list(after[name])
        for row in rows:
            assert row in remaining, f"{name}: row changed or removed: {row!r}"
            remaining.remove(row)
        if remaining:
            new[name] = remaining
    return new
