"""rate buckets: rate limits shared by every sender, per relay

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_buckets",
        sa.Column("relay", sa.String(length=300), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("refilled_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("relay", "period", name=op.f("pk_rate_buckets")),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
