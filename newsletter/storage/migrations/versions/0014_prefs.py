"""members' preferences (sections, language, survey, pause, a change of address) and issue variants

Revision ID: 0014_prefs
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_prefs"
down_revision = "0011_members"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, not a batch copy: on SQLite, rebuilding members would trip the foreign
    # keys deliveries and votes hold on it, and take long on a large list.
    for column in (
        sa.Column("language", sa.String(length=16), nullable=True),
        sa.Column("sections", sa.Text(), nullable=True),
        sa.Column("survey", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("paused_until", sa.DateTime(), nullable=True),
        # Every member stored so far has chosen nothing: the default variant.
        sa.Column("variant_key", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("new_email", sa.String(length=320), nullable=True),
        sa.Column("new_email_nonce", sa.Integer(), nullable=True),
        sa.Column("new_email_at", sa.DateTime(), nullable=True),
    ):
        op.add_column("members", column)
    op.create_index("ix_members_status_variant", "members", ["status", "variant_key"])
    op.create_table(
        "issue_variants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("sections", sa.Text(), nullable=False),
        sa.Column("survey", sa.Boolean(), nullable=False),
        sa.Column("subject", sa.String(length=1000), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["issue_id"],
            ["issues.id"],
            name="fk_issue_variants_issue_id_issues",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_issue_variants"),
        sa.UniqueConstraint("issue_id", "key", name="uq_issue_variants_issue_id"),
    )
    # A plain ADD COLUMN (no foreign key): the deliveries table is not rebuilt, however large.
    op.add_column("deliveries", sa.Column("variant_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    # The code before this revision sends every member the issue's own copy: rows that still
    # wait for a variant get that copy; the variants and the choices are dropped. Plain DROP
    # COLUMN (SQLite 3.35+), not a batch copy: rebuilding members would trip the foreign keys
    # that deliveries and votes hold on it.
    _drop("deliveries", "variant_id")
    op.drop_table("issue_variants")
    op.drop_index("ix_members_status_variant", table_name="members")
    for column in (
        "new_email_at",
        "new_email_nonce",
        "new_email",
        "variant_key",
        "paused_until",
        "survey",
        "sections",
        "language",
    ):
        _drop("members", column)


def _drop(table: str, column: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Alembic would copy the table; SQLite drops a plain column in place.
        op.execute(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
    else:
        op.drop_column(table, column)
