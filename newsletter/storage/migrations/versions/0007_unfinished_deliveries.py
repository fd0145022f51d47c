"""unfinished deliveries: a partial index in claim order

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UNFINISHED = "status IN ('queued', 'sending', 'deferred')"


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_unfinished",
        "deliveries",
        ["issue_id", "id"],
        postgresql_where=sa.text(UNFINISHED),
        sqlite_where=sa.text(UNFINISHED),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_unfinished", table_name="deliveries")
