"""service layer: held items, members in the audit log, system mail, folded link hits

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held", sa.Boolean(), server_default="0", nullable=False))
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("member_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_audit_log_member_id"), ["member_id"], unique=False)
    with op.batch_alter_table("link_hits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_link_hits_at"), ["at"], unique=False)
    op.create_index("ix_deliveries_member_status", "deliveries", ["member_id", "status"])
    op.create_table(
        "link_hit_counts",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "kind", "method", "issue_id", name=op.f("pk_link_hit_counts")
        ),
    )
    op.create_table(
        "system_mail",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=True),
        sa.Column("signup_id", sa.Integer(), nullable=True),
        sa.Column("to_address", sa.String(length=320), nullable=False),
        sa.Column("envelope_from", sa.String(length=320), nullable=False),
        sa.Column("message_id", sa.String(length=300), nullable=False),
        sa.Column("message", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_code", sa.Integer(), nullable=True),
        sa.Column("last_message", sa.String(length=1000), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("retry_until", sa.DateTime(), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_system_mail")),
    )
    with op.batch_alter_table("system_mail", schema=None) as batch_op:
        batch_op.create_index("ix_system_mail_status_next", ["status", "next_attempt_at"])
        batch_op.create_index(batch_op.f("ix_system_mail_member_id"), ["member_id"])
        batch_op.create_index(batch_op.f("ix_system_mail_to_address"), ["to_address"])


def downgrade() -> None:
    op.drop_table("system_mail")
    op.drop_table("link_hit_counts")
    op.drop_index("ix_deliveries_member_status", table_name="deliveries")
    with op.batch_alter_table("link_hits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_link_hits_at"))
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_member_id"))
        batch_op.drop_column("member_id")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("held")
