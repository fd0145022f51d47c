from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.content.sources import import_source, sanitize
from newsletter.errors import SourceError
from newsletter.storage.models import Item
from tests.checks import seed_titles

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Atom test</title>
  <id>urn:uuid:feed</id>
  <updated>2017-12-01T00:00:00Z</updated>
  <entry>
    <title>专利  许可
    协议</title>
    <id>urn:uuid:entry-1</id>
    <link href="https://example.org/a1"/>
    <updated>2017-12-01T08:00:00Z</updated>
    <category term="Patents"/>
    <content type="html">&lt;p onclick="steal()"&gt;Body &lt;script&gt;alert(1)&lt;/script&gt;&lt;a href="javascript:alert(2)"&gt;link&lt;/a&gt;&lt;/p&gt;</content>
  </entry>
</feed>
"""


def items(sessions: sessionmaker[Session]) -> list[Item]:
    with sessions() as s:
        return list(s.scalars(select(Item).order_by(Item.id)))


def test_seed_feed_imports_once_by_guid(sessions: sessionmaker[Session], site: Path) -> None:
    feed = str(site / "examples" / "seed-feed.xml")
    first = import_source(sessions, feed)
    assert (first.found, first.added, first.known) == (8, 8, 0)
    stored = items(sessions)
    assert sorted(i.title for i in stored) == sorted(seed_titles())
    assert {i.section for i in stored} == {"Comprehensive Reports"}
    again = import_source(sessions, feed)
    assert (again.added, again.known) == (0, 8)
    assert [(i.id, i.title, i.body_html) for i in items(sessions)] == [
        (i.id, i.title, i.body_html) for i in stored
    ]


def test_atom_entries_are_sanitised(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    path = tmp_path / "feed.atom"
    path.write_text(ATOM, encoding="utf-8")
    import_source(sessions, str(path))
    (item,) = items(sessions)
    assert item.title == "专利 许可 协议"  # line breaks in a title are folded away
    assert item.section == "Patents"
    assert item.guid == "urn:uuid:entry-1"
    assert "script" not in item.body_html and "alert" not in item.body_html
    assert "javascript:" not in item.body_html and "onclick" not in item.body_html
    assert "Body" in item.body_html and ">link</a>" in item.body_html


@pytest.mark.parametrize(
    "dirty",
    [
        '<img src="x" onerror="alert(1)">',
        '<a href="JaVaScRiPt:alert(1)">x</a>',
        '<a href="&#106;avascript:alert(1)">x</a>',
        "<style>body{display:none}</style>",
        '<iframe src="https://evil.example"></iframe>',
        '<p style="background:url(javascript:alert(1))">x</p>',
        "<svg><script>alert(1)</script></svg>",
        '<form action="https://evil.example"><input name=a></form>',
    ],
)
def test_sanitize_removes_active_content(dirty: str) -> None:
    clean = sanitize(dirty).lower()
    for word in (
        "script",
        "javascript",
        "onerror",
        "iframe",
        "<style",
        "style=",
        "<form",
        "<input",
    ):
        assert word not in clean


def test_broken_feed_is_refused_and_nothing_is_lost(
    sessions: sessionmaker[Session], site: Path, tmp_path: Path
) -> None:
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    before = [(i.id, i.guid) for i in items(sessions)]
    for name, body in [
        ("broken.xml", "<rss><channel><item><title>x"),
        ("text.xml", "just some text"),
    ]:
        path = tmp_path / name
        path.write_text(body)
        with pytest.raises(SourceError) as info:
            import_source(sessions, str(path))
        assert str(path) in str(info.value)
    with pytest.raises(SourceError, match="no such file"):
        import_source(sessions, str(tmp_path / "missing.xml"))
    assert [(i.id, i.guid) for i in items(sessions)] == before


def test_markdown_folder(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    folder = tmp_path / "posts"
    folder.mkdir()
    (folder / "one.md").write_text(
        "---\ntitle: First post\nsection: Editorials\ndate: 2017-12-01\nurl: https://example.org/1\n---\n"
        "Some **bold** text.\n\n<script>alert(1)</script>\n",
        encoding="utf-8",
    )
    (folder / "two.md").write_text("no front matter here\n", encoding="utf-8")
    (folder / "three.md").write_text("---\ntitle: [unclosed\n---\nbody\n", encoding="utf-8")
    report = import_source(sessions, str(folder))
    assert report.added == 1
    assert any("two.md" in p and "front matter" in p for p in report.problems)
    assert any("three.md" in p and "YAML" in p for p in report.problems)
    (item,) = items(sessions)
    assert (item.guid, item.title, item.section, item.url) == (
        "md:one",
        "First post",
        "Editorials",
        "https://example.org/1",
    )
    assert "<strong>bold</strong>" in item.body_html and "script" not in item.body_html
    assert import_source(sessions, str(folder)).added == 0


class _FeedHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/feed.xml":
            body = ATOM.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/atom+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def feed_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FeedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_feed_by_url(sessions: sessionmaker[Session], feed_server: str) -> None:
    assert import_source(sessions, f"{feed_server}/feed.xml").added == 1
    with pytest.raises(SourceError, match="HTTP 404"):
        import_source(sessions, f"{feed_server}/missing.xml")
