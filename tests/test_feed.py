"""The archive's Atom feed (/archive.atom), the favicon, and error pages in the site's style."""

from __future__ import annotations

import asyncio
from pathlib import Path
from xml.etree import ElementTree as ET

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.web.app import create_app
from tests import steps
from tests.checks import seed_titles
from tests.smtpd import RecordingHandler

NS = {"a": "http://www.w3.org/2005/Atom"}


def test_the_archive_feed_holds_only_issues_that_went_out(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> None:
    base = settings.list.base_url.rstrip("/")
    with TestClient(create_app(settings, sessions, background=False)) as client:
        empty = client.get("/archive.atom")
        assert empty.status_code == 200
        assert empty.headers["content-type"].startswith("application/atom+xml")
        assert ET.fromstring(empty.content).findall("a:entry", NS) == []

        steps.import_csv(sessions, site / "subscribers" / "example.csv")
        steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
        (sent,) = asyncio.run(steps.send(settings, sessions))
        # An issue no one has received yet is not public: released, its rows still queued.
        (site / "posts").mkdir()
        (site / "posts" / "later.md").write_text("---\ntitle: Later news\n---\nx\n")
        steps.import_source(sessions, str(site / "posts"))
        queued = steps.release_next(settings, sessions)

        feed = ET.fromstring(client.get("/archive.atom").content)
        entries = feed.findall("a:entry", NS)
        assert len(entries) == 1
        (entry,) = entries
        assert entry.findtext("a:id", namespaces=NS) == f"{base}/archive/{sent.issue_id}"
        assert entry.findtext("a:title", namespaces=NS) == sent.subject
        link = entry.find("a:link", NS)
        assert link is not None
        assert link.get("href") == f"{base}/archive/{sent.issue_id}"
        content = entry.findtext("a:content", namespaces=NS) or ""
        for title in seed_titles():
            assert title.replace("&", "&amp;") in content
        assert f"/archive/{queued.issue.id}" not in client.get("/archive.atom").text
        assert feed.findtext("a:updated", namespaces=NS) == entry.findtext(
            "a:updated", namespaces=NS
        )
        # The archive page (where List-Archive points) names the feed for readers to find.
        page = client.get("/archive").text
        assert '<link rel="alternate" type="application/atom+xml"' in page
        assert 'href="/archive.atom"' in page
        assert client.head("/archive.atom").status_code == 200


def test_favicon_and_error_pages(settings: Settings, sessions: sessionmaker[Session]) -> None:
    with TestClient(create_app(settings, sessions, background=False)) as client:
        icon = client.get("/favicon.ico")
        assert icon.status_code == 200
        assert icon.headers["content-type"] == "image/x-icon"
        assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO header, one image
        assert icon.content[22:26] == b"\x89PNG"
        missing = client.get("/no-such-page")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("text/html")
        assert "<h1>Not found</h1>" in missing.text
        assert settings.list.name in missing.text
