from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from newsletter.storage import db
from newsletter.storage.models import Base
from newsletter.storage.search import include_name


def test_migrations_build_exactly_the_models(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": include_name})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []
    assert db.is_current(engine)
    db.upgrade(engine)  # a second upgrade is a no-op
    engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path: object) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path}/var/x.db")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
