from __future__ import annotations

import random
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, delete, inspect, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.storage import db
from newsletter.storage.models import (
    Base,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueItem,
    IssueStatus,
    Item,
    Member,
)
from newsletter.storage.search import (
    FTS_TABLE,
    PG_INDEX,
    Hit,
    fts5_query,
    highlight,
    include_name,
    search,
    words,
)
from tests.steps import import_source

XIAOMI = "Xiaomi and Nokia Signs Patent Licensing Agreement to Explore Artificial Intelligence"
SILK = "IP-Silk Road Russian-Chinese IP Center Established in December 17"

HOSTILE = [
    '"',
    '""',
    '"patent',
    "AND OR NOT",
    "AND",
    "NOT patent",
    "patent OR",
    "col:foo",
    "title:patent",
    "items_fts:patent",
    "*",
    "patent*",
    "^patent",
    "NEAR(",
    "NEAR(patent nokia, 2)",
    "'; DROP TABLE items; --",
    "') OR 1=1 --",
    "{title body_text}: patent",
    "-patent",
    "+patent",
    "patent -nokia",
    "(((",
    ")",
    "a <-> b",
    "!!&|:*",
    "\x00",
    "patent\x00nokia",
    "\ud800",
    "\x02patent\x03",
    "́",  # a lone combining accent
    "%",
    "_",
    "\\",
    "   ",
    "",
    "x" * 10_000,
    "patent " * 1000,
]


def seed(sessions: sessionmaker[Session], site: Path) -> None:
    report = import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    assert report.added == 8


def add_item(
    sessions: sessionmaker[Session], guid: str, title: str, body_text: str, url: str = ""
) -> int:
    with sessions.begin() as s:
        item = Item(guid=guid, title=title, body_text=body_text, body_html="", url=url)
        s.add(item)
        s.flush()
        return item.id


def find(
    sessions: sessionmaker[Session], query: str, *, limit: int = 20, public_only: bool = False
) -> list[Hit]:
    """Search every item (the tests of matching and ranking), or only the public ones."""
    with sessions() as s:
        return search(s, query, limit=limit, public_only=public_only)


def titles(hits: list[Hit]) -> list[str]:
    return [h.title for h in hits]


def test_patent_finds_the_xiaomi_item_with_a_marked_snippet(
    sessions: sessionmaker[Session], site: Path
) -> None:
    seed(sessions, site)
    hits = find(sessions, "patent")
    assert hits[0].title == XIAOMI
    assert hits[0].url == "https://chinaip.example.org/reports/xiaomi-nokia-patent-licensing"
    assert hits[0].issue_id is None
    assert "<mark>Patent</mark>" in hits[0].snippet_html
    assert "<mark>patent</mark>" in hits[0].snippet_html
    assert SILK in titles(hits)  # "patent" in the body only
    # "simple" / unicode61: no stemming, so "patents" alone does not match "patent".
    assert not any(h.title.startswith("Zhongguancun") for h in hits)
    ranks = [h.rank for h in hits]
    assert all(r > 0 for r in ranks)
    assert ranks == sorted(ranks, reverse=True)
    with sessions() as s:
        xiaomi_id = s.scalars(select(Item.id).where(Item.title == XIAOMI)).one()
    assert hits[0].item_id == xiaomi_id


def test_search_is_case_insensitive(sessions: sessionmaker[Session], site: Path) -> None:
    seed(sessions, site)
    assert titles(find(sessions, "XIAOMI"))[:1] == [XIAOMI]
    assert titles(find(sessions, "xiaomi")) == titles(find(sessions, "Xiaomi"))


def test_a_title_match_outranks_a_body_only_match(sessions: sessionmaker[Session]) -> None:
    body_only = add_item(
        sessions,
        "g-body",
        "Other news of the week",
        "The quasar, the quasar and again the quasar: a quasar is bright. " * 3,
    )
    in_title = add_item(sessions, "g-title", "Quasar found", "Astronomers found something.")
    hits = find(sessions, "quasar")
    assert [h.item_id for h in hits] == [in_title, body_only]
    assert hits[0].rank > hits[1].rank
    # The title-only hit still gets a (mark-free) snippet of its body.
    assert hits[0].snippet_html.startswith("Astronomers found")
    assert "<mark>" not in hits[0].snippet_html
    assert "<mark>quasar</mark>" in hits[1].snippet_html


def test_several_words_must_all_match(sessions: sessionmaker[Session], site: Path) -> None:
    seed(sessions, site)
    assert len(find(sessions, "patent")) >= 2
    assert titles(find(sessions, "patent licensing")) == [XIAOMI]
    assert titles(find(sessions, "Nokia   Xiaomi")) == [XIAOMI]  # any order, any spacing
    assert titles(find(sessions, "xiaomi, nokia & samsung!")) == [XIAOMI]  # punctuation splits
    assert find(sessions, "patent zhongguancun") == []
    assert find(sessions, "patent nosuchwordanywhere") == []


@pytest.mark.parametrize("query", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_never_raises(
    sessions: sessionmaker[Session], site: Path, query: str
) -> None:
    seed(sessions, site)
    hits = find(sessions, query)
    assert isinstance(hits, list)
    with sessions() as s:  # nothing was dropped or changed
        assert s.scalar(select(Item.id).where(Item.title == XIAOMI)) is not None
        assert len(list(s.scalars(select(Item.id)))) == 8


@pytest.mark.parametrize("query", ["", " ", "!!!", "*", '"', "--", "()", "\x00", "·・。"])
def test_a_query_without_words_finds_nothing(
    sessions: sessionmaker[Session], site: Path, query: str
) -> None:
    seed(sessions, site)
    assert find(sessions, query) == []


def test_fuzzed_queries_never_raise(sessions: sessionmaker[Session], site: Path) -> None:
    seed(sessions, site)
    alphabet = [
        *"\"'*:^(){}[]-+&|!<>,.;%_\\/ \t\n\x00\x02\x03",
        "AND", "OR", "NOT", "NEAR", "patent", "nokia", "title", "body_text", "items_fts",
        "é", "́", "专利", "\ud800", "🙂", "ﬁ",
    ]  # fmt: skip
    rng = random.Random(1234)
    with sessions() as s:
        for _ in range(300):
            query = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
            assert isinstance(search(s, query, public_only=False), list), query
            assert isinstance(search(s, query), list), query


def test_snippets_are_escaped(sessions: sessionmaker[Session]) -> None:
    item_id = add_item(
        sessions,
        "g-xss",
        "Harmless <b>title</b>",
        "see <script>alert(1)</script> patent now <img src=x onerror=alert(2)> patent & co",
    )
    (hit,) = find(sessions, "patent")
    assert hit.item_id == item_id
    assert hit.title == "Harmless <b>title</b>"  # plain text: the web layer escapes it
    snippet = hit.snippet_html
    assert "<mark>patent</mark>" in snippet
    assert "<script" not in snippet
    assert "<img" not in snippet
    assert "&lt;" in snippet
    # Nothing but <mark> and </mark> is markup.
    assert snippet.replace("<mark>", "").replace("</mark>", "").count("<") == 0


def test_marker_characters_in_a_body_cannot_unbalance_the_markup(
    sessions: sessionmaker[Session],
) -> None:
    add_item(sessions, "g-markers", "Markers", "stray \x03 close, \x02 <b> open, patent here")
    (hit,) = find(sessions, "patent")
    snippet = hit.snippet_html
    # Stray markers may move a highlight (harmless), but the markup stays balanced.
    assert snippet.count("<mark>") == snippet.count("</mark>") >= 1
    assert "\x02" not in snippet
    assert "\x03" not in snippet
    assert "patent" in snippet
    assert "<b>" not in snippet


def test_an_item_added_after_the_migration_is_searchable(
    sessions: sessionmaker[Session], site: Path
) -> None:
    assert find(sessions, "xiaomi") == []
    seed(sessions, site)  # import_source after the schema exists
    assert titles(find(sessions, "xiaomi")) == [XIAOMI]
    item_id = add_item(sessions, "g-new", "Brand new zeppelin", "Lighter than air.")
    assert [h.item_id for h in find(sessions, "zeppelin")] == [item_id]
    assert [h.item_id for h in find(sessions, "lighter air")] == [item_id]


def test_updates_and_deletes_reindex(sessions: sessionmaker[Session]) -> None:
    item_id = add_item(sessions, "g-upd", "Old walrus title", "body about penguins")
    assert [h.item_id for h in find(sessions, "walrus")] == [item_id]
    with sessions.begin() as s:
        s.execute(update(Item).where(Item.id == item_id).values(title="New narwhal title"))
    assert find(sessions, "walrus") == []
    assert [h.item_id for h in find(sessions, "narwhal")] == [item_id]
    with sessions.begin() as s:
        s.execute(update(Item).where(Item.id == item_id).values(body_text="body about puffins"))
    assert find(sessions, "penguins") == []
    assert [h.item_id for h in find(sessions, "puffins narwhal")] == [item_id]
    with sessions.begin() as s:  # a column the index does not hold: still found
        s.execute(update(Item).where(Item.id == item_id).values(section="Birds"))
    assert [h.item_id for h in find(sessions, "puffins")] == [item_id]
    with sessions.begin() as s:
        s.execute(delete(Item).where(Item.id == item_id))
    assert find(sessions, "narwhal") == []
    assert find(sessions, "puffins") == []


def test_only_items_of_issues_that_have_gone_out_are_public(
    sessions: sessionmaker[Session], site: Path
) -> None:
    """An item is public once an issue carrying it has delivered a message: before that (not
    released, or released but nobody has received it) search shows it to nobody."""
    seed(sessions, site)
    with sessions.begin() as s:
        xiaomi = s.scalars(select(Item.id).where(Item.title == XIAOMI)).one()
        silk = s.scalars(select(Item.id).where(Item.title == SILK)).one()
        reader = Member(email="reader@example.org", name="")
        out = Issue(subject="Out", status=IssueStatus.SENDING, html="", text="", nonce="n1")
        waiting = Issue(subject="Waiting", status=IssueStatus.SENDING, html="", text="", nonce="n2")
        s.add_all([reader, out, waiting])
        s.flush()
        s.add_all(
            [
                IssueItem(issue_id=out.id, item_id=xiaomi, position=0),
                IssueItem(issue_id=waiting.id, item_id=silk, position=0),
                Delivery(issue_id=out.id, member_id=reader.id, status=DeliveryStatus.SENT),
                Delivery(issue_id=waiting.id, member_id=reader.id, status=DeliveryStatus.QUEUED),
            ]
        )
        out_id = out.id
    everything = {h.title: h for h in find(sessions, "patent")}
    assert everything[XIAOMI].issue_id == out_id
    assert everything[SILK].issue_id is None  # its issue has not gone out
    public = find(sessions, "patent", public_only=True)
    assert [(h.title, h.issue_id) for h in public] == [(XIAOMI, out_id)]


def test_limit(sessions: sessionmaker[Session], site: Path) -> None:
    seed(sessions, site)
    everything = find(sessions, "the")
    assert len(everything) == 8
    assert find(sessions, "the", limit=3) == everything[:3]
    assert find(sessions, "the", limit=0) == []
    assert find(sessions, "the", limit=-5) == []


def test_unicode_words(sessions: sessionmaker[Session]) -> None:
    cjk = add_item(sessions, "g-cjk", "专利 许可 协议", "中文 正文")
    accent = add_item(sessions, "g-accent", "Crème brûlée café", "Déjà vu")
    assert [h.item_id for h in find(sessions, "许可")] == [cjk]
    assert [h.item_id for h in find(sessions, "许可，协议")] == [cjk]  # CJK punctuation splits
    assert [h.item_id for h in find(sessions, "协议 专利")] == [cjk]
    assert [h.item_id for h in find(sessions, "brûlée")] == [accent]
    assert [h.item_id for h in find(sessions, "CAFÉ")] == [accent]


def test_diacritics_by_backend(sessions: sessionmaker[Session]) -> None:
    accent = add_item(sessions, "g-accent", "Crème brûlée café", "Déjà vu")
    with sessions() as s:
        sqlite = s.get_bind().dialect.name == "sqlite"
    # SQLite's unicode61 tokenizer folds accents; PostgreSQL's 'simple' configuration keeps them.
    expected = [accent] if sqlite else []
    assert [h.item_id for h in find(sessions, "creme brulee")] == expected
    assert [h.item_id for h in find(sessions, "deja")] == expected
    assert [h.item_id for h in find(sessions, "brûlée")] == [accent]


def _alembic(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", db.MIGRATIONS)
    cfg.attributes["engine"] = engine
    return cfg


def test_the_migration_indexes_existing_rows_and_downgrades(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        command.upgrade(_alembic(engine), "0002")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO items (guid, source, section, title, url, body_html,"
                    " body_text, created_at) VALUES ('old', '', '', 'Old aardvark',"
                    " '', '', 'from before the search index', '2020-01-01 00:00:00')"
                )
            )
        db.upgrade(engine)
        sessions = sessionmaker(engine)
        assert titles(find(sessions, "aardvark")) == ["Old aardvark"]
        assert titles(find(sessions, "search index")) == ["Old aardvark"]

        command.downgrade(_alembic(engine), "0002")
        names = set(inspect(engine).get_table_names())
        assert not {n for n in names if n.startswith(FTS_TABLE)}
        assert PG_INDEX not in {ix["name"] for ix in inspect(engine).get_indexes("items")}
        with engine.begin() as conn:  # no trigger is left pointing at a dropped table
            conn.execute(text("UPDATE items SET title = 'Old anteater'"))

        db.upgrade(engine)
        assert titles(find(sessions, "anteater")) == ["Old anteater"]
    finally:
        engine.dispose()


def test_the_search_objects_exist_and_are_hidden_from_autogenerate(database_url: str) -> None:
    """The filter tests/test_db.py needs (include_name) leaves exactly the models to compare."""
    engine = db.make_engine(database_url)
    try:
        db.upgrade(engine)
        insp = inspect(engine)
        if engine.dialect.name == "sqlite":
            assert FTS_TABLE in insp.get_table_names()
        else:
            assert PG_INDEX in {ix["name"] for ix in insp.get_indexes("items")}
        with engine.connect() as conn:
            unfiltered = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            context = MigrationContext.configure(conn, opts={"include_name": include_name})
            filtered = compare_metadata(context, Base.metadata)
        assert unfiltered != []
        assert filtered == []
    finally:
        engine.dispose()


def test_search_uses_the_index(sessions: sessionmaker[Session], site: Path) -> None:
    seed(sessions, site)
    with sessions() as s:
        if s.get_bind().dialect.name == "sqlite":
            plan = " ".join(
                str(row[-1])
                for row in s.execute(
                    text(
                        "EXPLAIN QUERY PLAN SELECT rowid FROM items_fts WHERE items_fts MATCH 'patent'"
                    )
                )
            )
            assert "VIRTUAL TABLE INDEX" in plan
            return
        s.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            s.scalars(
                text(
                    "EXPLAIN SELECT id FROM items WHERE to_tsvector('simple', "
                    "coalesce(title, '') || ' ' || coalesce(body_text, '')) "
                    "@@ websearch_to_tsquery('simple', 'patent')"
                )
            )
        )
    assert PG_INDEX in plan


def test_words_and_the_fts5_query() -> None:
    assert words("Hello, wörld! 专利。许可 x2 under_score C++ e-mail") == [
        "Hello", "wörld", "专利", "许可", "x2", "under", "score", "C", "e", "mail",
    ]  # fmt: skip
    assert words("'; DROP TABLE items; --") == ["DROP", "TABLE", "items"]
    assert words("") == []
    assert words('!!! * " ()') == []
    assert fts5_query(["patent", "NEAR", "AND"]) == '"patent" "NEAR" "AND"'
    assert fts5_query(['a"b']) == '"a""b"'


def test_highlight() -> None:
    assert highlight("a \x02<b>\x03 & c") == "a <mark>&lt;b&gt;</mark> &amp; c"
    assert highlight("\x03x\x02y") == "x<mark>y</mark>"  # unbalanced markers are repaired
    assert highlight("\x02\x02x\x03\x03") == "<mark>x</mark>"
    assert highlight("\"'") == "&quot;&#x27;"
