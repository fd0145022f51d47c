"""Front matter: the YAML block that opens a Markdown item, read as plain text values.

The block is bounded before YAML sees it (FRONT_MATTER_LIMIT characters, MAX_DEPTH levels),
aliases are refused (one line of `*a` can stand for gigabytes once expanded: the "billion
laughs"), and nothing is constructed from it but strings: no timestamps, no Python objects,
no integers of a million digits. Every error names the file's line and column.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

FRONT_MATTER_LIMIT = 64 * 1024
MAX_DEPTH = 20
_NULL = "tag:yaml.org,2002:null"


@dataclass(frozen=True, slots=True)
class FrontMatter:
    """The block's top-level keys whose values are single values, and the Markdown after it."""

    values: dict[str, str]  # keys with a null value are left out
    places: dict[str, str]  # key → "line L, column C" of its value, for messages
    nested: frozenset[str]  # keys whose value is a list or a table
    body: str

    def text(self, key: str) -> str:
        """The value of `key`, "" when absent; ValueError when it is a list or a table."""
        if key in self.nested:
            raise ValueError(f"{self.places[key]}: {key} must be a single value, not a list")
        return self.values.get(key, "")


class _Refused(yaml.MarkedYAMLError):
    def __init__(self, mark: Any, problem: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _Loader(yaml.SafeLoader):
    """Composes nodes only; refuses aliases and deep nesting as they come."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(event.start_mark, "aliases (*name) are not allowed in front matter")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def split(text: str) -> FrontMatter:
    """The front matter and body of a Markdown file's text, or ValueError saying where not."""
    block_start, block_end, body_start = _find_block(text)
    root = _compose(text[block_start:block_end])
    body = text[body_start:]
    if root is None:
        return FrontMatter({}, {}, frozenset(), body)
    if not isinstance(root, MappingNode):
        raise ValueError(f"{_place(root.start_mark)}: the front matter must be 'key: value' lines")
    return _read_keys(root, body)


def _find_block(text: str) -> tuple[int, int, int]:
    """Where the block's lines start and end, and where the body starts: after the line
    ('---' or '...') that closes the block, which must come within FRONT_MATTER_LIMIT."""
    first_end = text.find("\n")
    first = text if first_end < 0 else text[:first_end]
    if first.rstrip() != "---":
        raise ValueError("line 1: no front matter: start the file with a '---' line")
    block_start = pos = first_end + 1 if first_end >= 0 else len(text)
    while True:
        if pos >= len(text):
            raise ValueError("line 1: the front matter is not closed by a '---' line")
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        if end - block_start > FRONT_MATTER_LIMIT:
            raise ValueError(
                f"line 1: the front matter runs past {FRONT_MATTER_LIMIT:,} characters "
                "without a closing '---' line"
            )
        if text[pos:end].rstrip() in ("---", "..."):
            return block_start, pos, end + 1
        pos = end + 1


def _read_keys(root: MappingNode, body: str) -> FrontMatter:
    """The top-level keys: plain words, each given once; values kept as text, places noted."""
    values: dict[str, str] = {}
    places: dict[str, str] = {}
    nested: set[str] = set()
    for key_node, value_node in root.value:
        if not isinstance(key_node, ScalarNode):
            raise ValueError(f"{_place(key_node.start_mark)}: a key must be a plain word")
        key = str(key_node.value)
        if key in places:
            raise ValueError(
                f"{_place(key_node.start_mark)}: {key!r} is given twice (first at {places[key]})"
            )
        places[key] = _place(value_node.start_mark)
        if not isinstance(value_node, ScalarNode):
            nested.add(key)  # a list or a table: only an error if the key is one we read
        elif value_node.tag != _NULL:
            values[key] = str(value_node.value)
    return FrontMatter(values, places, frozenset(nested), body)


def _compose(block: str) -> Node | None:
    try:
        loader = _Loader(block)  # the reader refuses unprintable characters here already
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except _Refused as exc:
        raise ValueError(f"{_place(exc.problem_mark)}: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        reason = "; ".join(p for p in (exc.context, exc.problem) if p)
        raise ValueError(f"{_place(exc.problem_mark)}: not valid YAML: {reason}") from None
    except yaml.reader.ReaderError as exc:
        line = block.count("\n", 0, exc.position) + 2
        raise ValueError(
            f"line {line}: not valid YAML: the character {chr(exc.character)!r} is not allowed"
        ) from None
    except yaml.YAMLError as exc:
        raise ValueError(f"line 2: not valid YAML: {exc}") from None


def published(fm: FrontMatter) -> dt.datetime | None:
    """`date:` as an aware datetime (UTC when it names no zone); ValueError when it is not one."""
    raw = fm.values.get("date", "").strip()
    if not raw:
        return None
    try:
        if len(raw) <= len("YYYY-MM-DD"):
            day = dt.date.fromisoformat(raw)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        moment = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(
            f"{fm.places['date']}: date {raw!r} is not a date ({exc}); write YYYY-MM-DD "
            "or YYYY-MM-DD HH:MM:SS+HH:MM"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _place(mark: Any) -> str:
    if mark is None:
        return "line 2"
    # Marks count from 0 within the block, and the block starts on the file's line 2.
    return f"line {mark.line + 2}, column {mark.column + 1}"
