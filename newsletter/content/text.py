"""Plain text of an item's sanitised HTML, as a person reads it in a mail client's text view.

Links read "text (URL)", lists as "- " and "1. " bullets (nested ones indented), tables as
columns aligned by their display width (a CJK character takes two), quotes with "> ", code
as it is. Paragraphs are wrapped at 76 columns; a URL or a word is never broken.
"""

from __future__ import annotations

import html.parser
import re
import textwrap
import unicodedata
from dataclasses import dataclass, field

WIDTH = 76
_BLOCKS = {
    "p", "div", "ul", "ol", "li", "table", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "figure", "figcaption", "dl", "dt", "dd", "caption",
}  # fmt: skip
_VOID = {"br", "hr", "img", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node | str] = field(default_factory=list)


class _Tree(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("root")
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def html_to_text(body_html: str) -> str:
    """Readable plain text of sanitised HTML: for the text part and for search."""
    parser = _Tree()
    parser.feed(body_html)
    parser.close()
    text = "\n\n".join(b for b in _blocks(parser.root.children) if b.strip())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _blocks(children: list[Node | str], width: int = WIDTH) -> list[str]:
    """The children as blocks of text, inline runs gathered into wrapped paragraphs."""
    out: list[str] = []
    run: list[Node | str] = []

    def flush() -> None:
        paragraph = _inline(run)
        if paragraph.strip():
            out.append(_wrap(paragraph, width))
        run.clear()

    for child in children:
        if isinstance(child, Node) and child.tag in _BLOCKS:
            flush()
            out.append(_block(child, width))
        else:
            run.append(child)
    flush()
    return out


def _block(node: Node, width: int) -> str:
    tag = node.tag
    if tag in ("ul", "ol"):
        return _list(node, 0, width)
    if tag == "table":
        return _table(node)
    if tag == "pre":
        return "\n".join("    " + line for line in _raw(node).strip("\n").splitlines())
    if tag == "blockquote":
        inner = "\n\n".join(_blocks(node.children, width - 2))
        return "\n".join(("> " + line).rstrip() for line in inner.splitlines())
    if tag == "hr":
        return "-" * 20
    if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
        title = _wrap(" ".join(_inline(node.children).split()), width)
        rule = "-" * max((_width(line) for line in title.splitlines()), default=0)
        return f"{title}\n{rule}" if title else ""
    return "\n\n".join(_blocks(node.children, width))


def _list(node: Node, depth: int, width: int) -> str:
    lines: list[str] = []
    items = [c for c in node.children if isinstance(c, Node) and c.tag == "li"]
    start = int(node.attrs.get("start", "1")) if node.attrs.get("start", "").isdigit() else 1
    for n, item in enumerate(items, start):
        bullet = f"{n}. " if node.tag == "ol" else "- "
        own = [c for c in item.children if not (isinstance(c, Node) and c.tag in ("ul", "ol"))]
        text = "\n".join(_blocks(own))
        indent = " " * (2 * depth)
        wrapped = textwrap.fill(
            " ".join(text.split()),
            width=width,
            initial_indent=indent + bullet,
            subsequent_indent=indent + " " * len(bullet),
            break_long_words=False,
            break_on_hyphens=False,
        )
        lines.append(wrapped or indent + bullet.rstrip())
        for sub in item.children:
            if isinstance(sub, Node) and sub.tag in ("ul", "ol"):
                lines.append(_list(sub, depth + 1, width))
    return "\n".join(lines)


def _table(node: Node) -> str:
    rows: list[list[str]] = []
    header_rows = 0
    caption = ""
    for row, heading in _rows(node):
        cells = [
            " ".join(_inline(c.children).split())
            for c in row.children
            if isinstance(c, Node) and c.tag in ("td", "th")
        ]
        if cells:
            if heading and len(rows) == header_rows:  # header rows are those on top
                header_rows += 1
            rows.append(cells)
    for child in node.children:
        if isinstance(child, Node) and child.tag == "caption":
            caption = " ".join(_inline(child.children).split())
    if not rows:
        return caption
    columns = max(len(r) for r in rows)
    rows = [r + [""] * (columns - len(r)) for r in rows]
    widths = [max(_width(r[i]) for r in rows) for i in range(columns)]
    lines = [caption] if caption else []
    for index, cells in enumerate(rows):
        line = "  ".join(_pad(cell, w) for cell, w in zip(cells, widths, strict=True))
        lines.append(line.rstrip())
        if index + 1 == header_rows:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _rows(node: Node, in_head: bool = False) -> list[tuple[Node, bool]]:
    """The table's rows in order, each with whether it is a header row (in thead, or all th)."""
    found: list[tuple[Node, bool]] = []
    for child in node.children:
        if not isinstance(child, Node):
            continue
        if child.tag == "tr":
            cells = [c for c in child.children if isinstance(c, Node) and c.tag in ("td", "th")]
            heading = in_head or (bool(cells) and all(c.tag == "th" for c in cells))
            found.append((child, heading))
        elif child.tag in ("thead", "tbody", "tfoot"):
            found += _rows(child, child.tag == "thead")
    return found


def _inline(children: list[Node | str]) -> str:
    parts: list[str] = []
    for child in children:
        if isinstance(child, str):
            parts.append(child)
        elif child.tag == "br":
            parts.append("\n")
        elif child.tag == "a":
            parts.append(_link(child))
        elif child.tag == "img":
            continue  # an image has no text to read; its alt text is not the item's
        elif child.tag in _BLOCKS:
            parts.append("\n" + "\n\n".join(_blocks([child])) + "\n")
        else:
            parts.append(_inline(child.children))
    return "".join(parts)


def _link(node: Node) -> str:
    text = " ".join(_inline(node.children).split())
    href = node.attrs.get("href", "").strip()
    shown = href.removeprefix("mailto:")
    if not href or not text:
        return text or shown
    return text if text in (href, shown) else f"{text} ({shown})"


def _raw(node: Node) -> str:
    return "".join(c if isinstance(c, str) else _raw(c) for c in node.children)


def _wrap(paragraph: str, width: int) -> str:
    lines = []
    for line in paragraph.split("\n"):
        lines.append(
            textwrap.fill(
                " ".join(line.split()),
                width=width,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines).strip("\n")


def _width(text: str) -> int:
    """Columns the text takes in a monospace font: wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(cell: str, width: int) -> str:
    return cell + " " * (width - _width(cell))
