"""Shared fixtures: a site folder per test, the database on SQLite and PostgreSQL, a recording SMTP server."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config
from newsletter.config import Settings
from newsletter.delivery.sink import ServerThread
from newsletter.storage import db
from tests.smtpd import RecordingHandler

# Headless Chromium fixtures (`browser`, `page`) for the web pages' tests.
pytest_plugins = ["tests.browser"]

REPO = Path(__file__).resolve().parent.parent
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SECRET = "test-secret-key-0123456789abcdef"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first: with several workers (make test runs two), the longest ones then
    start at once instead of being left to run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _postgres_up() -> bool:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    up = _postgres_up()
    if not up and IN_CI:
        pytest.fail("PostgreSQL at 127.0.0.1:5432 is required in CI but is not reachable")
    return up


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new schema in the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'newsletter.db'}"
        return
    if not request.getfixturevalue("postgres_available"):
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    with postgres_schema() as url:
        yield url


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """The URL of a new schema in the machine's PostgreSQL, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def smtp_server() -> Iterator[RecordingHandler]:
    """A real SMTP server on 127.0.0.1, port 0, recording every message it accepts."""
    handler = RecordingHandler()
    with ServerThread(handler) as server:
        handler.port = server.port
        yield handler


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site folder: the repository's config.toml and sample files, templates from the package."""
    folder = tmp_path / "site"
    folder.mkdir()
    shutil.copy(REPO / "config.toml", folder / "config.toml")
    shutil.copytree(REPO / "examples", folder / "examples")
    (folder / "subscribers").mkdir()
    shutil.copy(REPO / "subscribers" / "example.csv", folder / "subscribers" / "example.csv")
    return folder


def make_settings(
    site: Path, database_url: str, smtp_port: int = 8025, **overrides: Any
) -> Settings:
    merged: dict[str, Any] = {
        "database": {"url": database_url},
        "smtp": {"port": smtp_port},
        # Tests do not wait for deferred rows unless they ask to.
        "delivery": {"linger_seconds": 0.0},
    }
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return config.load(site / "config.toml", env={config.SECRET_ENV: SECRET}, overrides=merged)


@pytest.fixture
def settings(site: Path, database_url: str, smtp_server: RecordingHandler) -> Settings:
    return make_settings(site, database_url, smtp_server.port)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    factory = db.open_database(settings.database_url)
    yield factory
    factory.kw["bind"].dispose()
