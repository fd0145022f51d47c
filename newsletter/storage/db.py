"""Open the database (SQLite in WAL mode, or PostgreSQL by URL) and bring its schema to head."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import url_problem
from newsletter.errors import DatabaseError

MIGRATIONS = str(Path(__file__).with_name("migrations"))


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, foreign keys and a busy timeout."""
    problem = url_problem(url)
    if problem:
        raise DatabaseError(f"database URL {_hide_password(url)!r}: {problem}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(unparseable)"


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the sender's writes
    cur.execute("PRAGMA synchronous=NORMAL")  # safe under WAL; a crash loses no committed row
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", MIGRATIONS)
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied (a new database gets the whole schema)."""
    try:
        command.upgrade(_alembic_config(engine), "head")
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot migrate {engine.url!r}: {exc.__class__.__name__}: {exc}"
        ) from None


def revision(engine: Engine) -> str | None:
    """The schema revision the database is at; None for a new (empty) database."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot open {engine.url!r}: {exc.__class__.__name__}: {exc}"
        ) from None


def is_current(engine: Engine) -> bool:
    script = ScriptDirectory.from_config(_alembic_config(engine))
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == script.get_current_head()


def open_database(url: str, *, migrate: bool = True) -> sessionmaker[Session]:
    """A session factory for `url`, its schema brought to head first unless migrate=False."""
    engine = make_engine(url)
    try:
        if migrate:
            if not is_current(engine):
                upgrade(engine)
        elif not is_current(engine):
            raise DatabaseError(
                f"{engine.url!r} is not at the current schema: run `newsletter db upgrade`"
            )
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot open {engine.url!r}: {exc.__class__.__name__}: {exc}"
        ) from None
    return sessionmaker(engine, expire_on_commit=False)
