"""search: full-text index over items (SQLite FTS5 table and triggers, PostgreSQL GIN index)

Revision ID: 0003
Revises: 0002

The objects made here are dialect-specific and unknown to the ORM models; newsletter.storage.search
names them (FTS_TABLE, PG_INDEX) and its include_name() hides them from autogenerate.
Note for later migrations on SQLite: a batch_alter_table("items") recreates the items table,
which drops these triggers; such a migration must run sqlite_drop() first and
sqlite_create() after.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Written out, not imported from newsletter.storage.search: a migration must not change when the
# application code does.
SQLITE_CREATE = [
    """
    CREATE VIRTUAL TABLE items_fts USING fts5(
        title, body_text,
        content='items', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER items_fts_ai AFTER INSERT ON items BEGIN
        INSERT INTO items_fts(rowid, title, body_text)
        VALUES (new.id, new.title, new.body_text);
    END
    """,
    """
    CREATE TRIGGER items_fts_ad AFTER DELETE ON items BEGIN
        INSERT INTO items_fts(items_fts, rowid, title, body_text)
        VALUES ('delete', old.id, old.title, old.body_text);
    END
    """,
    # Only a change to an indexed column touches the index.
    """
    CREATE TRIGGER items_fts_au AFTER UPDATE OF id, title, body_text ON items BEGIN
        INSERT INTO items_fts(items_fts, rowid, title, body_text)
        VALUES ('delete', old.id, old.title, old.body_text);
        INSERT INTO items_fts(rowid, title, body_text)
        VALUES (new.id, new.title, new.body_text);
    END
    """,
    # Index the rows that exist already.
    "INSERT INTO items_fts(items_fts) VALUES ('rebuild')",
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS items_fts_au",
    "DROP TRIGGER IF EXISTS items_fts_ad",
    "DROP TRIGGER IF EXISTS items_fts_ai",
    "DROP TABLE IF EXISTS items_fts",
]

# The expression must stay identical to the one newsletter.storage.search queries with, or the
# planner will not use the index.
POSTGRES_CREATE = """
    CREATE INDEX ix_items_fts ON items USING gin (
        to_tsvector('simple', coalesce(title, '') || ' ' || coalesce(body_text, ''))
    )
"""
POSTGRES_DROP = "DROP INDEX IF EXISTS ix_items_fts"


def sqlite_create() -> None:
    for statement in SQLITE_CREATE:
        op.execute(statement)


def sqlite_drop() -> None:
    for statement in SQLITE_DROP:
        op.execute(statement)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        sqlite_create()
    elif dialect == "postgresql":
        op.execute(POSTGRES_CREATE)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        sqlite_drop()
    elif dialect == "postgresql":
        op.execute(POSTGRES_DROP)
