"""Member lists as CSV: rows parsed, checked and merged before anything touches the database."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from newsletter import i18n
from newsletter.content.addresses import CONTROL, clean_name, normalize_address
from newsletter.errors import ImportRowError, NewsletterError
from newsletter.storage.models import (
    MemberStatus,
)

_STATUS_WORDS = {
    "": MemberStatus.ACTIVE,
    "active": MemberStatus.ACTIVE,
    "subscribed": MemberStatus.ACTIVE,
    "unsubscribed": MemberStatus.UNSUBSCRIBED,
    "optout": MemberStatus.UNSUBSCRIBED,
    "opted-out": MemberStatus.UNSUBSCRIBED,
}


@dataclass(slots=True)
class Row:
    line: int
    email: str
    name: str
    status: str
    attributes: dict[str, str]
    # A new member's first choices (the `language` and `sections` columns); None: none made.
    language: str | None = None
    sections: tuple[str, ...] | None = None


@dataclass
class ImportReport:
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    merged: int = 0
    unsubscribed: int = 0
    kept_unsubscribed: int = 0
    errors: list[ImportRowError] = field(default_factory=list)


def read_rows(text: str, report: ImportReport) -> Iterator[Row]:
    """Parse CSV text into valid rows; a bad row becomes an ImportRowError in the report.

    Each physical line is one row. No field of a member list may hold a line break (names
    and attributes refuse them), so a quote left open is that line's error alone: it cannot
    swallow the rows below it, as it would if the csv module read on to the next quote.
    """
    lines = _LINE_BREAK.split(text)
    header_line, columns = _read_header(lines)
    for line, raw in enumerate(lines[header_line:], start=header_line + 1):
        if not raw.strip():
            continue
        try:
            values = split_line(raw, columns)
        except ValueError as exc:
            report.rows += 1
            report.errors.append(ImportRowError(line, str(exc)))
            continue
        if not any(v.strip() for v in values):
            continue
        report.rows += 1
        try:
            row = _row(line, columns, values)
        except ValueError as exc:
            report.errors.append(ImportRowError(line, str(exc)))
            continue
        yield row


def _read_header(lines: list[str]) -> tuple[int, list[str]]:
    """The header's line number (the first line that is not blank) and its column names."""
    if not any(line.strip() for line in lines):
        raise NewsletterError("the file is empty: it needs a header row with an 'email' column")
    header_line = next(i for i, line in enumerate(lines, start=1) if line.strip())
    try:
        header = split_line(lines[header_line - 1], [])
    except ValueError as exc:
        raise NewsletterError(f"line {header_line}: {exc}") from None
    columns = [h.strip().lower() for h in header]
    if "email" not in columns:
        raise NewsletterError(
            f"line {header_line}: the header has no 'email' column (found: {', '.join(columns)})"
        )
    if len(set(columns)) != len(columns):
        raise NewsletterError(f"line {header_line}: the header repeats a column name")
    return header_line, columns


def _row(line: int, columns: list[str], values: list[str]) -> Row:
    """One line's member, or ValueError saying what is wrong with it."""
    if len(values) != len(columns):
        raise ValueError(f"expected {len(columns)} fields, found {len(values)}")
    record = dict(zip(columns, values, strict=True))
    email = normalize_address(record.pop("email"))
    name = clean_name(record.pop("name", ""))
    status_word = record.pop("status", "").strip().lower()
    if status_word not in _STATUS_WORDS:
        raise ValueError(f"unknown status {status_word!r} (use active or unsubscribed)")
    language, sections = _choices(record.pop("language", ""), record.pop("sections", ""))
    attributes = {}
    for k, v in record.items():
        if CONTROL.search(v.replace("\t", " ")):
            raise ValueError(f"column {k!r} contains a line break or control character")
        if v.strip():
            attributes[k] = v.strip()
    return Row(line, email, name, _STATUS_WORDS[status_word], attributes, language, sections)


def _choices(language: str, sections: str) -> tuple[str | None, tuple[str, ...] | None]:
    """The `language` column (en, zh_Hans, zh-CN …; empty: the list's) and the `sections`
    column (names separated by ";"; empty: every section)."""
    code = None
    if language.strip():
        code = i18n.normalize(language)
        if code is None:
            raise ValueError(
                f"column 'language': {language.strip()!r} is not a language we have "
                f"(one of: {', '.join(i18n.languages())})"
            )
    names = tuple(dict.fromkeys(" ".join(s.split()) for s in sections.split(";") if s.strip()))
    for name in names:
        if CONTROL.search(name) or len(name) > 200:
            raise ValueError(f"column 'sections': {name[:40]!r} is not a section name")
    return code, names or None


# csv's own idea of a line end: CR LF, CR or LF (not str.splitlines' form feeds and U+2028).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def split_line(line: str, columns: list[str]) -> list[str]:
    """One line's fields, or ValueError naming the column and character that break it."""
    try:
        return next(csv.reader([line], strict=True), [])
    except csv.Error as exc:
        field, why = csv_problem(line) or (0, str(exc))
        if not field:
            raise ValueError(why) from None
        name = f" ({columns[field - 1]!r})" if field <= len(columns) else ""
        raise ValueError(f"column {field}{name}: {why}") from None


def csv_problem(line: str) -> tuple[int, str] | None:
    """Where and why strict csv refuses one line: (field number from 1, reason), or None."""
    limit = csv.field_size_limit()
    field, i, end = 1, 0, len(line)
    while True:
        start = i
        if i < end and line[i] == '"':
            length, i = 0, i + 1
            while True:
                close = line.find('"', i)
                if close < 0:
                    return field, (
                        f"the quote at character {start + 1} is not closed on this line "
                        "(a field cannot span lines)"
                    )
                length += close - i
                if line.startswith('"', close + 1):  # "" is a quote inside the field
                    length, i = length + 1, close + 2
                    continue
                i = close + 1
                break
            if length > limit:
                return field, _too_long(length, limit)
            if i < end and line[i] != ",":
                return field, (
                    f"{line[i]!r} at character {i + 1} follows the closing quote; a quoted "
                    'field ends at a comma (write "" for a quote inside it)'
                )
        else:
            comma = line.find(",", i)
            i = end if comma < 0 else comma
            if i - start > limit:
                return field, _too_long(i - start, limit)
        if i >= end:
            return None
        field, i = field + 1, i + 1


def _too_long(length: int, limit: int) -> str:
    return f"the field is {length:,} characters long, over the limit of {limit:,}"


def merge_duplicates(rows: Iterator[Row], report: ImportReport) -> dict[str, Row]:
    """One row per address; a later row fills in or overrides, and an opt-out always wins."""
    merged: dict[str, Row] = {}
    for row in rows:
        seen = merged.get(row.email)
        if seen is None:
            merged[row.email] = row
            continue
        report.merged += 1
        seen.name = row.name or seen.name
        seen.attributes.update(row.attributes)
        seen.language = row.language or seen.language
        seen.sections = row.sections or seen.sections
        if row.status == MemberStatus.UNSUBSCRIBED:
            seen.status = MemberStatus.UNSUBSCRIBED
    return merged
