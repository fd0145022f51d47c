"""Every table's rows, to show that bad input changed nothing stored (or added only the good part)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, MetaData, select
from sqlalchemy.orm import Session, sessionmaker

Snapshot = dict[str, list[tuple[Any, ...]]]

# SQLite's full-text index (FTS5 and its shadow tables) is derived from items by triggers;
# its rows are binary pages that say nothing a reader of the items table cannot see.
DERIVED = ("items_fts",)


def snapshot(target: Engine | sessionmaker[Session]) -> Snapshot:
    """Each table of the database (found by reflection, not from the models) → its rows, sorted."""
    engine = target if isinstance(target, Engine) else target.kw["bind"]
    meta = MetaData()
    meta.reflect(engine)
    tables = [t for t in meta.sorted_tables if not t.name.startswith(DERIVED)]
    with engine.connect() as conn:
        return {t.name: sorted(map(tuple, conn.execute(select(t))), key=repr) for t in tables}


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
