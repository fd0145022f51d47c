from __future__ import annotations

import html
import http.server
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urljoin
from xml.sax.saxutils import escape as xml_escape

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter.cli.main import app
from newsletter.content.sources import (
    FETCH_LIMIT,
    SourceReport,
    parse_feed,
    sanitize,
)
from newsletter.errors import SourceError
from newsletter.storage import db
from newsletter.storage.models import Item
from tests.checks import seed_titles
from tests.snapshot import added, snapshot
from tests.steps import import_source
from tests.test_front_matter import ALIAS_BOMB

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
    assert "script" not in item.body_html
    assert "alert" not in item.body_html
    assert "javascript:" not in item.body_html
    assert "onclick" not in item.body_html
    assert "Body" in item.body_html
    assert ">link</a>" in item.body_html


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
    assert "<strong>bold</strong>" in item.body_html
    assert "script" not in item.body_html
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


# --- hostile Markdown folders: each bad file named, the others imported -----------------------

GOOD = "---\ntitle: {title}\n---\nBody of {title}.\n"
# kind: (the file's bytes, what its problem line says)
BAD_FILES: dict[str, tuple[Callable[[int], bytes], str]] = {
    "bad date": (
        lambda n: f"---\ntitle: T\ndate: 2017-{13 + n % 80}-45\n---\n".encode(),
        ": line 3, column 7: date '2017-",
    ),
    "no front matter": (lambda n: b"Just text.\n", ": line 1: no front matter"),
    "yaml": (lambda n: b"---\ntitle: [unclosed\n---\n", ": line 3, column 1: not valid YAML"),
    "alias bomb": (lambda n: ALIAS_BOMB.encode(), ": line 3, column 10: aliases"),
    "latin-1": (lambda n: "---\ntitle: Jos\xe9\n---\n".encode("latin-1"), ": line 2: not UTF-8"),
    "title list": (lambda n: b"---\ntitle: [a, b]\n---\n", "title must be a single value"),
    "unclosed": (lambda n: b"---\ntitle: T\n", ": line 1: the front matter is not closed"),
    "oversize": (lambda n: GOOD.format(title="T").encode() + b"x" * 70_000, "over the 65,536"),
    "body oversize": (
        lambda n: GOOD.format(title="T").encode() + b"&" * 20_000,  # 5 bytes each as HTML
        "its body is 100,",
    ),
}
KINDS = ["good", "bom", *BAD_FILES]


@hypothesis_settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(kinds=["bad date", "good"])  # the issue: 2017-13-45 stopped the whole folder
@example(kinds=["bom"])  # the issue: a BOM was "no front matter"
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=8))
def test_bad_markdown_files_are_named_and_the_rest_imports(
    sessions: sessionmaker[Session], tmp_path_factory: pytest.TempPathFactory, kinds: list[str]
) -> None:
    folder = tmp_path_factory.mktemp("posts")
    stem = folder.name.replace("_", "-")  # GUIDs md:<stem>-N are new in every example
    expected_titles: dict[str, str] = {}
    expected_problems: dict[str, str] = {}
    for n, kind in enumerate(kinds):
        path = folder / f"{stem}-{n}.md"
        if kind in ("good", "bom"):
            title = f"Post {n} & O'Brien's \"deal\""
            text = GOOD.format(title=json.dumps(title)).encode()
            path.write_bytes(b"\xef\xbb\xbf" + text if kind == "bom" else text)
            expected_titles[f"md:{path.stem}"] = title
        else:
            make, says = BAD_FILES[kind]
            path.write_bytes(make(n))
            expected_problems[str(path)] = says
    before = snapshot(sessions)
    report = import_source(sessions, str(folder))
    assert (report.found, report.added, report.rejected) == (
        len(kinds),
        len(expected_titles),
        len(expected_problems),
    )
    assert len(report.problems) == len(expected_problems)
    for path_name, says in expected_problems.items():
        (line,) = [p for p in report.problems if p.startswith(path_name + ":")]
        assert says in line, line
        assert "\n" not in line, line
    new = added(before, snapshot(sessions))
    assert set(new) <= {"items", "audit_log"}  # the good items, and the import's own entry
    assert len(new["audit_log"]) == 1
    with sessions() as s:
        stored = {
            i.guid: i.title for i in s.scalars(select(Item).where(Item.source == str(folder)))
        }
    assert stored == expected_titles


# --- feeds: duplicates, missing titles and oversized bodies are named by entry --------------


def atom(entries: list[str], *, base: str = "", link: str = "") -> str:
    feed_base = f' xml:base="{base}"' if base else ""
    feed_link = f'<link href="{link}"/>' if link else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<feed xmlns="http://www.w3.org/2005/Atom"{feed_base}><title>F</title><id>urn:f</id>'
        f"{feed_link}<updated>2017-12-01T00:00:00Z</updated>{''.join(entries)}</feed>"
    )


def atom_entry(guid: str, title: str, body: str, *, href: str = "", base: str = "") -> str:
    entry_base = f' xml:base="{xml_escape(base)}"' if base else ""
    link = f'<link href="{xml_escape(href)}"/>' if href else ""
    return (
        f"<entry{entry_base}><title>{xml_escape(title)}</title><id>{guid}</id>{link}"
        f"<updated>2017-12-01T08:00:00Z</updated>"
        f'<content type="html">{xml_escape(body)}</content></entry>'
    )


@hypothesis_settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The issue: two entries with one GUID were "1 new, 0 already known".
@example(kinds=["good", "duplicate"])
@example(kinds=["oversize", "good", "untitled", "duplicate", "duplicate"])
@given(
    kinds=st.lists(
        st.sampled_from(["good", "duplicate", "untitled", "oversize"]), min_size=1, max_size=8
    )
)
def test_feed_entries_are_counted_and_named(
    sessions: sessionmaker[Session], tmp_path_factory: pytest.TempPathFactory, kinds: list[str]
) -> None:
    folder = tmp_path_factory.mktemp("feed")
    prefix = f"urn:{folder.name}"
    entries: list[str] = []
    first_of: dict[str, int] = {}
    expected: dict[str, int] = {"added": 0, "duplicates": 0, "rejected": 0}
    problems: list[str] = []
    for n, kind in enumerate(kinds, start=1):
        guid = f"{prefix}:{n}"
        body = "<p>Fine.</p>"
        title = f"Entry {n}"
        if kind == "duplicate" and first_of:
            guid = f"{prefix}:{min(first_of.values())}"
        elif kind == "duplicate":
            kind = "good"  # nothing before it to repeat
        if kind == "untitled":
            title = "  "
            problems.append(f"entry {n} has no title")
            expected["rejected"] += 1
        elif kind == "oversize":
            body = "<p>" + "x" * 70_000 + "</p>"
            problems.append(f"entry {n} ('Entry {n}'): its body is 70,007 bytes, over the 65,536")
            expected["rejected"] += 1
        elif kind == "duplicate":
            expected["duplicates"] += 1
        else:
            first_of[guid] = n
            expected["added"] += 1
        entries.append(atom_entry(guid, title, body))
    path = folder / "feed.atom"
    path.write_text(atom(entries), encoding="utf-8")

    before = snapshot(sessions)
    report = import_source(sessions, str(path))
    assert report.found == len(kinds)
    assert (report.added, report.duplicates, report.rejected, report.known) == (
        expected["added"],
        expected["duplicates"],
        expected["rejected"],
        0,
    )
    for problem in problems:
        assert any(problem in p for p in report.problems), (problem, report.problems)
    if expected["duplicates"]:
        (line,) = [p for p in report.problems if "the same GUID" in p]
        first = min(first_of.values())
        repeats = [n for n, k in enumerate(kinds, start=1) if k == "duplicate" and n > first]
        assert f"{first} and" in line or f"{first}, " in line
        assert all(str(n) in line for n in repeats)
    new = added(before, snapshot(sessions))
    assert len(new.get("items", [])) == expected["added"]
    assert set(new) <= {"items", "audit_log"}
    assert len(new["audit_log"]) == 1


def test_duplicate_guid_message_reads_well(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    path = tmp_path / "feed.atom"
    path.write_text(
        atom([atom_entry(g, f"T{i}", "<p>x</p>") for i, g in enumerate("abcab", start=1)])
    )
    report = import_source(sessions, str(path))
    assert (report.found, report.added, report.duplicates) == (5, 3, 2)
    assert sorted(p.split(": ", 1)[1] for p in report.problems) == [
        "entries 1 and 4 have the same GUID 'a'; entry 1 is imported, entry 4 skipped as a "
        "duplicate",
        "entries 2 and 5 have the same GUID 'b'; entry 2 is imported, entry 5 skipped as a "
        "duplicate",
    ]


# --- relative links: resolved against xml:base, else the feed's link or URL --------------------

HREFS = ["one.html", "/abs/two.html", "../up.html", "?q=1", "#top", "//cdn.example/i.png",
         "https://absolute.example/y", "mailto:news@example.org"]  # fmt: skip


@hypothesis_settings(max_examples=60, deadline=None)
@example(feed_base="https://example.org/blog/", entry_base="posts/", link="", href="one.html")
@example(feed_base="", entry_base="", link="", href="one.html")  # nothing to resolve against
@given(
    feed_base=st.sampled_from(["", "https://example.org/blog/", "https://cdn.example.net/a/b/"]),
    entry_base=st.sampled_from(["", "posts/", "/root/", "https://other.example/x/"]),
    link=st.sampled_from(["", "https://site.example/news/"]),
    href=st.sampled_from(HREFS),
)
def test_relative_links_are_made_absolute(
    tmp_path_factory: pytest.TempPathFactory, feed_base: str, entry_base: str, link: str, href: str
) -> None:
    body = f'<p><a href="{href}">a</a><img src="{href}" alt="i"></p>'
    entries = [
        atom_entry("urn:a", "First", body, href=href, base=entry_base),
        atom_entry("urn:b", "Second", body, href=href),  # no xml:base of its own
    ]
    path = tmp_path_factory.mktemp("feed") / "feed.atom"
    path.write_text(atom(entries, base=feed_base, link=link))
    report = SourceReport(str(path))
    first, second = parse_feed(path.read_bytes(), str(path), None, report)
    # The document's base is the feed's link (a file has no URL of its own); xml:base is
    # relative to the base around it.
    document = urljoin(link, feed_base) if link else feed_base
    for item, own in ((first, entry_base), (second, "")):
        base = urljoin(document, own) if document else own
        expected = urljoin(base, href) if base.startswith("https://") else href
        web = expected.startswith(("http://", "https://"))
        assert item.url == (expected if web else "")
        hrefs = re.findall(r'<a href="([^"]*)"', item.body_html)
        srcs = re.findall(r'<img src="([^"]*)"', item.body_html)
        kept = expected if web or expected.startswith("mailto:") else None
        assert hrefs == ([html.escape(kept)] if kept else [])
        assert srcs == ([html.escape(expected)] if web else [])


def test_rss_links_resolve_against_the_channel_link(tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    path.write_text(
        '<rss version="2.0"><channel><title>t</title><link>https://site.example/news/</link>'
        "<item><title>a</title><guid>g1</guid><link>one.html</link>"
        '<description>&lt;a href="rel.html"&gt;y&lt;/a&gt;&lt;img src="/i.png"&gt;</description>'
        "</item></channel></rss>"
    )
    (item,) = parse_feed(path.read_bytes(), str(path), None, SourceReport(str(path)))
    assert item.url == "https://site.example/news/one.html"
    assert 'href="https://site.example/news/rel.html"' in item.body_html
    assert 'src="https://site.example/i.png"' in item.body_html


# --- sizes: a local feed over the URL cap is refused unread ------------------------------------


@hypothesis_settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@example(extra=1)
@example(extra=39 * 1024 * 1024)  # the 49 MB file, stored as one item before
@given(extra=st.integers(1, 40 * 1024 * 1024))
def test_a_feed_file_over_the_cap_is_refused_unread(
    sessions: sessionmaker[Session], tmp_path_factory: pytest.TempPathFactory, extra: int
) -> None:
    path = tmp_path_factory.mktemp("feed") / "huge.xml"
    with path.open("wb") as f:
        f.truncate(FETCH_LIMIT + extra)  # sparse: costs no disk and, refused, no reading
    before = snapshot(sessions)
    with pytest.raises(SourceError) as info:
        import_source(sessions, str(path))
    assert str(info.value) == (
        f"{path}: the feed is {FETCH_LIMIT + extra:,} bytes, over the {FETCH_LIMIT:,}-byte "
        "limit for a feed"
    )
    assert added(before, snapshot(sessions)) == {}


# --- the command line: exit 1 when anything was refused, and what was good is stored --------


def test_items_import_exits_1_naming_what_it_refused(
    site: Path, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "feed.atom"
    path.write_text(
        atom(
            [
                atom_entry("urn:1", "Kept", "<p>x</p>"),
                atom_entry("urn:1", "Again", "<p>x</p>"),
                atom_entry("urn:3", "[/b] Big", "<p>" + "x" * 70_000 + "</p>"),
            ]
        )
    )
    runner = CliRunner()
    env = {"NEWSLETTER_DATABASE_URL": database_url, "COLUMNS": "200"}
    args = ["--config", str(site / "config.toml"), "items", "import", str(path)]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"{path}: entry 3 ('[/b] Big'): its body is 70,007 bytes, over the 65,536-byte limit "
        "for one item (items.size_limit); skipped",
        f"{path}: entries 1 and 2 have the same GUID 'urn:1'; entry 1 is imported, entry 2 "
        "skipped as a duplicate",
    ]
    assert result.stdout.strip() == (
        f"{path}: 3 items, 1 new, 0 already known, 1 duplicates, 1 rejected"
    )
    clean = tmp_path / "clean.atom"
    clean.write_text(atom([atom_entry("urn:9", "Fine", "<p>x</p>")]))
    result = runner.invoke(app, [*args[:-1], str(clean)], env=env)
    assert result.exit_code == 0, result.output


FEED_KINDS = ("good", "duplicate", "untitled", "oversize")


def feed_with(path: Path, kinds: list[str]) -> tuple[int, int]:
    """An Atom feed of entries of these kinds at `path`: (entries refused or skipped as
    duplicates, entries stored). A "duplicate" repeats the first entry's GUID; the first one
    with that GUID that is not refused for itself is stored, the later ones are duplicates."""
    entries, refused, stored, claimed = [], 0, 0, False
    for n, kind in enumerate(kinds, start=1):
        guid, title, body = f"urn:{path.parent.name}:{n}", f"Entry {n}", "<p>Fine.</p>"
        if kind == "duplicate":
            guid = f"urn:{path.parent.name}:1"
        elif kind == "untitled":
            title = " "
        elif kind == "oversize":
            body = "<p>" + "x" * 70_000 + "</p>"
        if kind in ("untitled", "oversize"):
            refused += 1
        elif guid.endswith(":1"):  # the first entry's GUID: stored once
            refused += claimed
            stored += not claimed
            claimed = True
        else:
            stored += 1
        entries.append(atom_entry(guid, title, body))
    path.write_text(atom(entries), encoding="utf-8")
    return refused, stored


@hypothesis_settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(case=(True, ["good"]))  # nothing refused: 0
@example(case=(True, ["bad date", "good"]))  # the issue: it said 0
@example(case=(False, ["good", "duplicate"]))
@example(case=(False, ["oversize", "duplicate", "duplicate"]))
@given(
    case=st.one_of(
        st.tuples(st.just(True), st.lists(st.sampled_from(KINDS), min_size=1, max_size=6)),
        st.tuples(st.just(False), st.lists(st.sampled_from(FEED_KINDS), min_size=1, max_size=6)),
    )
)
def test_items_import_exits_1_exactly_when_something_is_refused(
    site: Path,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[bool, list[str]],
) -> None:
    """`newsletter items import` on generated Markdown folders and feeds: exit 1 when any file
    or entry was refused or repeated (each named on stderr with its file), 0 otherwise; the
    good ones are stored either way, and nothing else is."""
    folder, kinds = case
    where = tmp_path_factory.mktemp("src")
    stem = where.name.replace("_", "-")
    if folder:  # Markdown files, good or bad in every way test_bad_markdown_files_... knows
        for n, kind in enumerate(kinds):
            path = where / f"{stem}-{n}.md"
            if kind in ("good", "bom"):
                text = GOOD.format(title=f"Post {n}").encode()
                path.write_bytes(b"\xef\xbb\xbf" + text if kind == "bom" else text)
            else:
                path.write_bytes(BAD_FILES[kind][0](n))
        bad = {str(where / f"{stem}-{n}.md") for n, k in enumerate(kinds) if k in BAD_FILES}
        refused, stored = len(bad), len(kinds) - len(bad)
        target = where
    else:
        target = where / "feed.atom"
        refused, stored = feed_with(target, kinds)
    sessions = db.open_database(database_url)
    try:
        before = snapshot(sessions)
        result = CliRunner().invoke(
            app,
            ["--config", str(site / "config.toml"), "items", "import", str(target)],
            env={"NEWSLETTER_DATABASE_URL": database_url, "COLUMNS": "300"},
        )
        assert result.exit_code == (1 if refused else 0), (result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        problems = result.stderr.splitlines()
        assert all(p.startswith(f"{target}") for p in problems), problems
        if folder:
            assert {p.split(": ", 1)[0] for p in problems} == bad
        else:
            assert bool(problems) == bool(refused)
        new = added(before, snapshot(sessions))
        assert set(new) <= {"items", "audit_log"}
        assert len(new.get("items", [])) == stored
    finally:
        sessions.kw["bind"].dispose()
