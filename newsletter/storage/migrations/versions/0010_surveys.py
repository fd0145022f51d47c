"""surveys made by editors: where a survey came from, and when it was last opened

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("surveys", schema=None) as batch_op:
        # Every survey stored so far was made from config.toml's [survey].
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), server_default="config", nullable=False)
        )
        batch_op.add_column(sa.Column("opened_at", sa.DateTime(), nullable=True))
    # Those surveys were open from the moment they were made.
    op.execute("UPDATE surveys SET opened_at = created_at")


def downgrade() -> None:
    # The code before this revision knows no drafts: a draft is kept, as a closed survey.
    op.execute("UPDATE surveys SET status = 'closed' WHERE status = 'draft'")
    with op.batch_alter_table("surveys", schema=None) as batch_op:
        batch_op.drop_column("opened_at")
        batch_op.drop_column("source")
