"""members managed by editors: the suppression list of erased addresses, votes kept unlinked

Revision ID: 0011_members
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_members"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_suppressions")),
    )
    # An erased member's counted votes stay in the results with no member.
    with op.batch_alter_table("votes", schema=None) as batch_op:
        batch_op.alter_column("member_id", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    # The code before this revision needs a member for every vote: the unlinked votes of
    # erased members go (their surveys' counts drop by as many).
    op.execute("DELETE FROM votes WHERE member_id IS NULL")
    with op.batch_alter_table("votes", schema=None) as batch_op:
        batch_op.alter_column("member_id", existing_type=sa.Integer(), nullable=False)
    op.drop_table("suppressions")
