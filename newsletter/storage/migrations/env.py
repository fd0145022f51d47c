"""Alembic environment: runs against the engine newsletter.db hands in."""

from __future__ import annotations

from alembic import context

from newsletter.storage.models import Base
from newsletter.storage.search import include_name

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=include_name,  # type: ignore[arg-type]  # the search index lives outside the models
    )
    context.run_migrations()
