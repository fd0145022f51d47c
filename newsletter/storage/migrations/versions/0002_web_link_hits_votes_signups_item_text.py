"""web: link hits, votes, signups, item text

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "signup_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("mailed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signup_requests")),
    )
    with op.batch_alter_table("signup_requests", schema=None) as batch_op:
        batch_op.create_index("ix_signup_requests_email_at", ["email", "at"], unique=False)
        batch_op.create_index("ix_signup_requests_ip_at", ["ip", "at"], unique=False)

    op.create_table(
        "link_hits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("survey_id", sa.Integer(), nullable=True),
        sa.Column("option", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=300), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_link_hits_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_link_hits")),
    )
    with op.batch_alter_table("link_hits", schema=None) as batch_op:
        batch_op.create_index("ix_link_hits_member_at", ["member_id", "at"], unique=False)

    op.create_table(
        "votes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("survey_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("option", sa.Integer(), nullable=True),
        sa.Column("counted_at", sa.DateTime(), nullable=True),
        sa.Column("pending_option", sa.Integer(), nullable=True),
        sa.Column("pending_at", sa.DateTime(), nullable=True),
        sa.Column("evidence", sa.String(length=300), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_votes_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["survey_id"],
            ["surveys.id"],
            name=op.f("fk_votes_survey_id_surveys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_votes")),
        sa.UniqueConstraint("survey_id", "member_id", name=op.f("uq_votes_survey_id")),
    )
    with op.batch_alter_table("votes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_votes_pending_at"), ["pending_at"], unique=False)

    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body_text", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:

    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("body_text")

    with op.batch_alter_table("votes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_votes_pending_at"))

    op.drop_table("votes")
    with op.batch_alter_table("link_hits", schema=None) as batch_op:
        batch_op.drop_index("ix_link_hits_member_at")

    op.drop_table("link_hits")
    with op.batch_alter_table("signup_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_signup_requests_ip_at")
        batch_op.drop_index("ix_signup_requests_email_at")

    op.drop_table("signup_requests")
