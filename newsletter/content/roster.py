"""Member lists as CSV: rows parsed, checked and merged before anything touches the database."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field

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
    """Parse CSV text into valid rows; a bad row becomes an ImportRowError in the report."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise NewsletterError(
            "the file is empty: it needs a header row with an 'email' column"
        ) from None
    columns = [h.strip().lower() for h in header]
    if "email" not in columns:
        raise NewsletterError(
            f"line 1: the header has no 'email' column (found: {', '.join(columns)})"
        )
    if len(set(columns)) != len(columns):
        raise NewsletterError("line 1: the header repeats a column name")
    start = reader.line_num + 1
    for values in reader:
        line, start = start, reader.line_num + 1
        if not any(v.strip() for v in values):
            continue
        report.rows += 1
        try:
            if len(values) != len(columns):
                raise ValueError(f"expected {len(columns)} fields, found {len(values)}")
            record = dict(zip(columns, values, strict=True))
            email = normalize_address(record.pop("email"))
            name = clean_name(record.pop("name", ""))
            status_word = record.pop("status", "").strip().lower()
            if status_word not in _STATUS_WORDS:
                raise ValueError(f"unknown status {status_word!r} (use active or unsubscribed)")
            attributes = {}
            for k, v in record.items():
                if CONTROL.search(v.replace("\t", " ")):
                    raise ValueError(f"column {k!r} contains a line break or control character")
                if v.strip():
                    attributes[k] = v.strip()
        except ValueError as exc:
            report.errors.append(ImportRowError(line, str(exc)))
            continue
        yield Row(line, email, name, _STATUS_WORDS[status_word], attributes)


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
        if row.status == MemberStatus.UNSUBSCRIBED:
            seen.status = MemberStatus.UNSUBSCRIBED
    return merged
