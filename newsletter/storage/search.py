"""Search over items and board messages: SQLite FTS5 or PostgreSQL full-text, ranked, highlighted."""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import TextClause, text
from sqlalchemy.orm import Session

# The objects migration 0003 makes and the ORM models do not know about.
FTS_TABLE = "items_fts"  # SQLite: FTS5 table; its shadow tables are items_fts_*
PG_INDEX = "ix_items_fts"  # PostgreSQL: GIN expression index on items
BOARD_FTS_TABLE = "board_fts"  # the same for board messages (migration 0012_board)
BOARD_PG_INDEX = "ix_board_fts"

MAX_QUERY_CHARS = 500  # longer input is cut: a search box needs no more
MAX_TERMS = 16  # more words than this are dropped: each one costs an index lookup
MAX_LIMIT = 100

_START, _STOP = "\x02", "\x03"  # marks around a match, swapped for <mark> after escaping

# An item is public once an issue carrying it has gone out (a message delivered): until then
# it may be embargoed, and search must not show it. The EXISTS reads ix_deliveries_issue_status.
_GONE_OUT = (
    "EXISTS (SELECT 1 FROM deliveries AS d WHERE d.issue_id = ii.issue_id AND d.status = 'sent')"
)
_PUBLIC_ITEMS = f"SELECT ii.item_id FROM issue_items AS ii WHERE {_GONE_OUT}"
_ISSUE_ID = f"CASE WHEN {_GONE_OUT} THEN ii.issue_id END AS issue_id"


def _sqlite_sql(public_only: bool) -> TextClause:
    only = f"AND rowid IN ({_PUBLIC_ITEMS})" if public_only else ""
    return text(
        f"""
        SELECT i.id, i.title, i.url, {_ISSUE_ID}, f.snip, -f.rank AS rank
        FROM (
            SELECT rowid AS id, bm25({FTS_TABLE}, 5.0, 1.0) AS rank,
                   snippet({FTS_TABLE}, 1, char(2), char(3), '…', 24) AS snip
            FROM {FTS_TABLE}
            WHERE {FTS_TABLE} MATCH :q {only}
            ORDER BY rank, rowid DESC
            LIMIT :n
        ) AS f
        JOIN items AS i ON i.id = f.id
        LEFT JOIN issue_items AS ii ON ii.item_id = i.id
        ORDER BY f.rank, i.id DESC
        """
    )


# The WHERE expression is the migration's index expression, word for word. The rank weighs
# a title match (A) above a body match (D); it is computed for matching rows only.
def _postgres_sql(public_only: bool) -> TextClause:
    only = f"AND i.id IN ({_PUBLIC_ITEMS})" if public_only else ""
    return text(
        f"""
        WITH hits AS (
            SELECT i.id, q.query,
                   ts_rank(
                       setweight(to_tsvector('simple', coalesce(i.title, '')), 'A')
                       || setweight(to_tsvector('simple', coalesce(i.body_text, '')), 'D'),
                       q.query
                   ) AS rank
            FROM items AS i, websearch_to_tsquery('simple', :q) AS q(query)
            WHERE to_tsvector('simple', coalesce(title, '') || ' ' || coalesce(body_text, ''))
                  @@ q.query {only}
            ORDER BY rank DESC, i.id DESC
            LIMIT :n
        )
        SELECT i.id, i.title, i.url, {_ISSUE_ID},
               ts_headline('simple', i.body_text, h.query, :options) AS snip,
               h.rank
        FROM hits AS h
        JOIN items AS i ON i.id = h.id
        LEFT JOIN issue_items AS ii ON ii.item_id = i.id
        ORDER BY h.rank DESC, i.id DESC
        """
    )


_SQL = {
    ("sqlite", True): _sqlite_sql(True),
    ("sqlite", False): _sqlite_sql(False),
    ("postgresql", True): _postgres_sql(True),
    ("postgresql", False): _postgres_sql(False),
}
_HEADLINE_OPTIONS = (
    f'StartSel="{_START}", StopSel="{_STOP}", MaxFragments=2, MaxWords=30, MinWords=10'
)


@dataclass(frozen=True, slots=True)
class Hit:
    item_id: int
    title: str
    url: str
    issue_id: int | None  # the issue that carried the item, once it has gone out
    snippet_html: str  # escaped body text, <mark>…</mark> around matches
    rank: float  # higher is better, on both backends


def search(session: Session, query: str, *, limit: int = 20, public_only: bool = True) -> list[Hit]:
    """Items matching every word of `query`, best first; no words (or limit < 1) → [].

    Only items of issues that have gone out, unless public_only is False (the desk's search).
    """
    query = _clean(query)
    terms = words(query)[:MAX_TERMS]
    limit = min(limit, MAX_LIMIT)
    if not terms or limit < 1:
        return []
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            _SQL["postgresql", public_only],
            {"q": query, "n": limit, "options": _HEADLINE_OPTIONS},
        )
    else:
        rows = session.execute(_SQL["sqlite", public_only], {"q": fts5_query(terms), "n": limit})
    return [
        Hit(
            item_id=int(row.id),
            title=str(row.title),
            url=str(row.url),
            issue_id=None if row.issue_id is None else int(row.issue_id),
            snippet_html=highlight(str(row.snip or "")),
            rank=float(row.rank) if row.rank is not None else 0.0,
        )
        for row in rows
    ]


# Board messages the board shows: shown, in a thread whose first message is shown
# (storage/board.py's rule).
_VISIBLE = (
    "SELECT m.id FROM board_messages AS m LEFT JOIN board_messages AS p ON p.id = m.parent_id "
    "WHERE m.status = 'shown' AND (m.parent_id IS NULL OR p.status = 'shown')"
)
_BOARD_SQLITE = text(
    f"""
    SELECT m.id, coalesce(m.parent_id, m.id) AS thread_id, mem.name, f.snip, -f.rank AS rank
    FROM (
        SELECT rowid AS id, bm25({BOARD_FTS_TABLE}) AS rank,
               snippet({BOARD_FTS_TABLE}, 0, char(2), char(3), '…', 24) AS snip
        FROM {BOARD_FTS_TABLE}
        WHERE {BOARD_FTS_TABLE} MATCH :q AND rowid IN ({_VISIBLE})
        ORDER BY rank, rowid DESC
        LIMIT :n
    ) AS f
    JOIN board_messages AS m ON m.id = f.id
    JOIN members AS mem ON mem.id = m.member_id
    ORDER BY f.rank, m.id DESC
    """
)
# The WHERE expression and status condition are migration 0012_board's partial index's, word
# for word. (SQLite's index holds shown messages only; so does this one.)
_BOARD_POSTGRES = text(
    f"""
    WITH hits AS (
        SELECT b.id, q.query,
               ts_rank(to_tsvector('simple', coalesce(b.body_text, '')), q.query) AS rank
        FROM board_messages AS b, websearch_to_tsquery('simple', :q) AS q(query)
        WHERE to_tsvector('simple', coalesce(body_text, '')) @@ q.query AND status = 'shown'
              AND b.id IN ({_VISIBLE})
        ORDER BY rank DESC, b.id DESC
        LIMIT :n
    )
    SELECT m.id, coalesce(m.parent_id, m.id) AS thread_id, mem.name,
           ts_headline('simple', m.body_text, h.query, :options) AS snip, h.rank
    FROM hits AS h
    JOIN board_messages AS m ON m.id = h.id
    JOIN members AS mem ON mem.id = m.member_id
    ORDER BY h.rank DESC, m.id DESC
    """
)


@dataclass(frozen=True, slots=True)
class BoardHit:
    message_id: int
    thread_id: int
    name: str  # the author's name as stored ("" when they gave none)
    snippet_html: str  # escaped text, <mark>…</mark> around matches
    rank: float


def search_board(session: Session, query: str, *, limit: int = 20) -> list[BoardHit]:
    """Board messages the board shows that match every word of `query`, best first."""
    query = _clean(query)
    terms = words(query)[:MAX_TERMS]
    limit = min(limit, MAX_LIMIT)
    if not terms or limit < 1:
        return []
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            _BOARD_POSTGRES, {"q": query, "n": limit, "options": _HEADLINE_OPTIONS}
        )
    else:
        rows = session.execute(_BOARD_SQLITE, {"q": fts5_query(terms), "n": limit})
    return [
        BoardHit(
            message_id=int(row.id),
            thread_id=int(row.thread_id),
            name=str(row.name or ""),
            snippet_html=highlight(str(row.snip or "")),
            rank=float(row.rank) if row.rank is not None else 0.0,
        )
        for row in rows
    ]


def _clean(query: str) -> str:
    """NFKC form, cut to MAX_QUERY_CHARS; control characters (NUL!) and lone surrogates → space."""
    query = unicodedata.normalize("NFKC", query[: MAX_QUERY_CHARS * 2])[:MAX_QUERY_CHARS]
    return "".join(" " if unicodedata.category(c) in ("Cc", "Cs") else c for c in query)


def words(query: str) -> list[str]:
    """The words of `query`: runs of letters, digits and marks (so CJK too); all else splits."""
    found: list[str] = []
    current: list[str] = []
    for char in query:
        if unicodedata.category(char)[0] in "LNM":
            current.append(char)
        elif current:
            found.append("".join(current))
            current = []
    if current:
        found.append("".join(current))
    return found


def fts5_query(terms: list[str]) -> str:
    """An FTS5 query that requires every term: each one a quoted string, so never syntax."""
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


def highlight(snippet: str) -> str:
    """Escape `snippet`, then turn its match markers into balanced <mark> elements."""
    out: list[str] = []
    open_ = False
    for part in _split_markers(html.escape(snippet, quote=True)):
        if part == _START:
            if not open_:
                out.append("<mark>")
                open_ = True
        elif part == _STOP:
            if open_:
                out.append("</mark>")
                open_ = False
        else:
            out.append(part)
    if open_:
        out.append("</mark>")
    return "".join(out)


def _split_markers(value: str) -> list[str]:
    parts: list[str] = []
    start = 0
    for index, char in enumerate(value):
        if char in (_START, _STOP):
            if index > start:
                parts.append(value[start:index])
            parts.append(char)
            start = index + 1
    if start < len(value):
        parts.append(value[start:])
    return parts


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic include_name filter: leave the search objects out of autogenerate comparisons."""
    if type_ == "table" and name is not None:
        return not any(name == t or name.startswith(t + "_") for t in (FTS_TABLE, BOARD_FTS_TABLE))
    if type_ == "index":
        return name not in (PG_INDEX, BOARD_PG_INDEX)
    return True
