"""what comes back: members' bounce scores and history, an issue's links, click evidence and counts

Revision ID: 0013_bounces
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_bounces"
down_revision = "0014_prefs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("bounce_score", sa.Float(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("bounce_day", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("bounced_at", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("left_reason", sa.String(length=300), server_default="", nullable=False)
        )
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.add_column(sa.Column("links", sa.JSON(), nullable=True))
    op.create_table(
        "bounce_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("diagnostic", sa.String(length=1000), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_bounce_events_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounce_events")),
        sa.UniqueConstraint("digest", name=op.f("uq_bounce_events_digest")),
    )
    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.create_index("ix_bounce_events_member_at", ["member_id", "at"])
        batch_op.create_index(batch_op.f("ix_bounce_events_issue_id"), ["issue_id"])
    op.create_table(
        "click_hits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("link", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("decided", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_click_hits_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_click_hits")),
    )
    with op.batch_alter_table("click_hits", schema=None) as batch_op:
        batch_op.create_index("ix_click_hits_member_at", ["member_id", "at"])
        batch_op.create_index("ix_click_hits_decided_at", ["decided", "at"])
    op.create_table(
        "click_counts",
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("link", sa.Integer(), nullable=False),
        sa.Column("people", sa.Integer(), nullable=False),
        sa.Column("scanners", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("issue_id", "link", name=op.f("pk_click_counts")),
    )
    op.create_table(
        "member_clicks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("link", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_member_clicks_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_member_clicks")),
    )
    with op.batch_alter_table("member_clicks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_member_clicks_member_id"), ["member_id"])


def downgrade() -> None:
    op.drop_table("member_clicks")
    op.drop_table("click_counts")
    op.drop_table("click_hits")
    op.drop_table("bounce_events")
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.drop_column("links")
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_column("left_reason")
        batch_op.drop_column("bounced_at")
        batch_op.drop_column("bounce_day")
        batch_op.drop_column("bounce_score")
