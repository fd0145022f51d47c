"""board: the members' board (messages, reports), members' board standing, sign-in links

Revision ID: 0012_board
Revises: 0013_bounces

The full-text index over board messages is dialect-specific and unknown to the ORM models
(like items' in 0003): newsletter.storage.search names it (BOARD_FTS_TABLE, BOARD_PG_INDEX)
and its include_name() hides it from autogenerate.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_board"
down_revision = "0013_bounces"
branch_labels = None
depends_on = None

# Written out, not imported from newsletter.storage.search: a migration must not change when
# the application code does.
# The index holds the messages the board shows (status 'shown') and no others: held posts
# (every new member's first) and deleted ones cost it nothing. For an external-content FTS5
# table, 'delete' must be given the values that were indexed, so a trigger removes a row only
# if it was shown and adds it only if it is.
SQLITE_CREATE = [
    """
    CREATE VIRTUAL TABLE board_fts USING fts5(
        body_text,
        content='board_messages', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER board_fts_ai AFTER INSERT ON board_messages
    WHEN new.status = 'shown' BEGIN
        INSERT INTO board_fts(rowid, body_text) VALUES (new.id, new.body_text);
    END
    """,
    """
    CREATE TRIGGER board_fts_ad AFTER DELETE ON board_messages
    WHEN old.status = 'shown' BEGIN
        INSERT INTO board_fts(board_fts, rowid, body_text)
        VALUES ('delete', old.id, old.body_text);
    END
    """,
    # One trigger, its statements in order: two triggers on one event fire in an order
    # SQLite does not promise, and adding the new row before removing the old corrupts.
    """
    CREATE TRIGGER board_fts_au AFTER UPDATE OF id, body_text, status ON board_messages BEGIN
        INSERT INTO board_fts(board_fts, rowid, body_text)
        SELECT 'delete', old.id, old.body_text WHERE old.status = 'shown';
        INSERT INTO board_fts(rowid, body_text)
        SELECT new.id, new.body_text WHERE new.status = 'shown';
    END
    """,
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS board_fts_au",
    "DROP TRIGGER IF EXISTS board_fts_ad",
    "DROP TRIGGER IF EXISTS board_fts_ai",
    "DROP TABLE IF EXISTS board_fts",
]
# The expression and the condition must stay identical to the ones newsletter.storage.search
# queries with, or the planner will not use the index.
POSTGRES_CREATE = """
    CREATE INDEX ix_board_fts ON board_messages
    USING gin (to_tsvector('simple', coalesce(body_text, '')))
    WHERE status = 'shown'
"""
POSTGRES_DROP = "DROP INDEX IF EXISTS ix_board_fts"


def upgrade() -> None:
    op.create_table(
        "board_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("body_md", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("edited_at", sa.DateTime(), nullable=True),
        sa.Column("approved_at", sa.DateTime(), nullable=True),
        sa.Column("notified_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_board_messages_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["board_messages.id"],
            name=op.f("fk_board_messages_parent_id_board_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_board_messages")),
    )
    op.create_index(
        "ix_board_messages_parent_status",
        "board_messages",
        ["parent_id", "status", "created_at"],
    )
    op.create_index(
        "ix_board_messages_member_created", "board_messages", ["member_id", "created_at"]
    )
    op.create_index("ix_board_messages_ip_created", "board_messages", ["ip", "created_at"])
    op.create_index(op.f("ix_board_messages_status"), "board_messages", ["status"])
    op.create_table(
        "board_reports",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_board_reports_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["board_messages.id"],
            name=op.f("fk_board_reports_message_id_board_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "member_id", name=op.f("pk_board_reports")),
    )
    op.create_table(
        "board_members",
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("blocked_at", sa.DateTime(), nullable=True),
        sa.Column("blocked_until", sa.DateTime(), nullable=True),
        sa.Column("block_reason", sa.String(length=500), nullable=False),
        sa.Column("notices", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_board_members_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_board_members")),
    )
    op.create_table(
        "board_signins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_board_signins_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_board_signins")),
    )
    op.create_index("ix_board_signins_member_created", "board_signins", ["member_id", "created_at"])
    op.create_index("ix_board_signins_ip_created", "board_signins", ["ip", "created_at"])
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in SQLITE_CREATE:
            op.execute(statement)
    elif dialect == "postgresql":
        op.execute(POSTGRES_CREATE)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in SQLITE_DROP:
            op.execute(statement)
    elif dialect == "postgresql":
        op.execute(POSTGRES_DROP)
    op.drop_table("board_signins")
    op.drop_table("board_members")
    op.drop_table("board_reports")
    op.drop_table("board_messages")
