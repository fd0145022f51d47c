"""Member lists as CSV: rows decoded, parsed by their layout, checked and merged before anything touches the database; and written back out."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from newsletter import i18n
from newsletter.content.addresses import CONTROL, clean_name, normalize_address
from newsletter.content.mapping import (
    DELIMITERS,
    OWN_COLUMNS,
    Field,
    Layout,
    check,
    detect_delimiter,
    propose,
)
from newsletter.errors import ImportRowError, NewsletterError
from newsletter.storage.models import MemberStatus

# Every status word of the exports we read (content/mapping.py), in lower case. Each export's
# "no mail to this address" becomes unsubscribed or bounced, which no import undoes.
STATUS_WORDS = {
    **dict.fromkeys(
        (
            "",
            "active",
            "subscribed",
            "enabled",
            "confirmed",
            "regular",
            "premium",
            "gifted",
            "trialed",
            "churning",
            "past_due",
            "unpaid",
        ),
        MemberStatus.ACTIVE,
    ),
    **dict.fromkeys(("pending", "unconfirmed", "unactivated"), MemberStatus.PENDING),
    **dict.fromkeys(
        (
            "unsubscribed",
            "optout",
            "opted-out",
            "opted_out",
            "disabled",
            "blocklisted",
            "blacklisted",
            "removed",
            "complained",
        ),
        MemberStatus.UNSUBSCRIBED,
    ),
    **dict.fromkeys(("bounced", "cleaned", "undeliverable"), MemberStatus.BOUNCED),
}
# When a row's columns disagree, the status furthest from "mail them" wins.
_RANK = {
    MemberStatus.ACTIVE: 0,
    MemberStatus.PENDING: 1,
    MemberStatus.UNSUBSCRIBED: 2,
    MemberStatus.BOUNCED: 3,
}
OPT_OUTS = (MemberStatus.UNSUBSCRIBED, MemberStatus.BOUNCED)
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0", ""}
# Attributes are free text from outside: bounded, so one row cannot store megabytes.
ATTRIBUTE_MAX = 2000
ATTRIBUTES_MAX = 100
# A spreadsheet runs a cell that starts with one of these as a formula (CWE-1236).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(slots=True)
class Row:
    line: int
    email: str
    name: str
    status: MemberStatus
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
    suppressed: int = 0
    errors: list[ImportRowError] = field(default_factory=list)

    def refuse(self, line: int, reason: str) -> None:
        self.errors.append(ImportRowError(line, reason))


# --- reading the text ----------------------------------------------------------------------------


def decode(data: bytes) -> tuple[str, dict[int, str]]:
    """A file's text, line by line: a line that is not UTF-8 becomes empty, and its reason is
    returned by its number, so one bad line costs that line only. A UTF-16 file (with its
    byte order mark, as some spreadsheets save "Unicode text") is read whole."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), {}
        except UnicodeDecodeError as exc:
            raise NewsletterError(f"not UTF-16 text (byte {exc.start + 1})") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    lines, bad = [], {}
    for number, raw in enumerate(_LINE_BREAK_BYTES.split(data), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            lines.append("")
            bad[number] = (
                f"not UTF-8 text (byte {exc.start + 1} of the line); save the file as UTF-8"
            )
    return "\n".join(lines), bad


def layout_of(text: str, bad: Mapping[int, str] | None = None) -> Layout:
    """The proposed layout of a member list (its header read, its delimiter guessed)."""
    lines = _LINE_BREAK.split(text)
    bad = bad or {}
    header_line = next(
        (i for i, line in enumerate(lines, start=1) if line.strip() or i in bad), None
    )
    if header_line is None:
        raise NewsletterError("the file is empty: it needs a header row with an 'email' column")
    if header_line in bad:
        raise NewsletterError(f"line {header_line} (the header): {bad[header_line]}")
    raw = lines[header_line - 1]
    delimiter = detect_delimiter(raw)
    try:
        header = split_line(raw, [], delimiter)
    except ValueError as exc:
        raise NewsletterError(f"line {header_line}: {exc}") from None
    return propose(header_line, delimiter, header)


def read_rows(
    text: str,
    report: ImportReport,
    layout: Layout | None = None,
    bad: Mapping[int, str] | None = None,
) -> Iterator[Row]:
    """Parse CSV text into valid rows; a bad row becomes an ImportRowError in the report.

    Each physical line is one row. No field of a member list may hold a line break (names
    and attributes refuse them), so a quote left open is that line's error alone: it cannot
    swallow the rows below it, as it would if the csv module read on to the next quote.
    `bad` names lines that could not be decoded (see `decode`): each is a refused row.
    """
    bad = bad or {}
    layout = layout or layout_of(text, bad)
    check(layout)
    lines = _LINE_BREAK.split(text)
    for line, raw in enumerate(lines[layout.header_line :], start=layout.header_line + 1):
        if line in bad:
            report.rows += 1
            report.refuse(line, bad[line])
            continue
        if not raw.strip():
            continue
        try:
            values = split_line(raw, list(layout.columns), layout.delimiter)
        except ValueError as exc:
            report.rows += 1
            report.refuse(line, str(exc))
            continue
        if not any(v.strip() for v in values):
            continue
        report.rows += 1
        try:
            row = _row(line, layout, values)
        except ValueError as exc:
            report.refuse(line, str(exc))
            continue
        yield row


def preview(text: str, layout: Layout, count: int = 5) -> list[list[str]]:
    """The first rows as cells (a line that cannot be split shows as its text, whole)."""
    found: list[list[str]] = []
    for raw in _LINE_BREAK.split(text)[layout.header_line :]:
        if len(found) >= count:
            break
        if raw.strip():
            try:
                found.append(split_line(raw, list(layout.columns), layout.delimiter))
            except ValueError:
                found.append([raw])
    return found


def unescape(value: str) -> str:
    """A cell as written before `safe_cell` guarded it ("'=1+2" → "=1+2")."""
    if value.startswith("'") and value[1:2] and value[1] in FORMULA_START:
        return value[1:]
    return value


def _where(layout: Layout, index: int) -> str:
    return f"column {index + 1} ({layout.columns[index]!r})"


_NAMES = (Field.NAME, Field.FIRST_NAME, Field.LAST_NAME)


def _row(line: int, layout: Layout, values: list[str]) -> Row:
    """One line's member, or ValueError saying what is wrong with it."""
    if len(values) != len(layout.columns):
        raise ValueError(f"expected {len(layout.columns)} fields, found {len(values)}")
    email = ""
    names: dict[Field, str] = {}
    status = MemberStatus.ACTIVE
    attributes: dict[str, str] = {}
    for index, (kind, raw) in enumerate(zip(layout.fields, values, strict=True)):
        value = unescape(raw)
        if kind == Field.EMAIL:
            email = normalize_address(value)
        elif kind in _NAMES:
            names[kind] = clean_name(value)
        elif kind == Field.ATTRIBUTE:
            _attribute(attributes, layout.key(index), value)
        elif kind == Field.ATTRIBUTES_JSON:
            for key, item in _json_object(value, _where(layout, index)).items():
                _attribute(attributes, key, item)
        elif kind != Field.SKIP:
            found = _status(kind, value.strip().lower(), _where(layout, index))
            status = max(status, found, key=_RANK.__getitem__)
    name = names.get(Field.NAME, "")
    if not name:
        name = clean_name(f"{names.get(Field.FIRST_NAME, '')} {names.get(Field.LAST_NAME, '')}")
    # A new member's first choices come as the columns `language` and `sections`.
    language, sections = _choices(attributes.pop("language", ""), attributes.pop("sections", ""))
    return Row(line, email, name, status, attributes, language, sections)


def _status(kind: Field, word: str, where: str) -> MemberStatus:
    if kind == Field.STATUS:
        if word not in STATUS_WORDS:
            raise ValueError(
                f"{where}: unknown status {word[:50]!r} (use active, pending, unsubscribed "
                "or bounced, or a status word of Mailchimp, Substack, Buttondown or listmonk)"
            )
        return STATUS_WORDS[word]
    if kind == Field.UNSUBSCRIBED_WHEN_SET:
        return MemberStatus.UNSUBSCRIBED if word else MemberStatus.ACTIVE
    if kind == Field.BOUNCED_WHEN_SET:
        return MemberStatus.BOUNCED if word else MemberStatus.ACTIVE
    if word in _TRUE:
        return MemberStatus.UNSUBSCRIBED
    if word in _FALSE:
        return MemberStatus.ACTIVE
    raise ValueError(f"{where}: {word[:50]!r} is neither true nor false")


def _json_object(value: str, where: str) -> dict[str, str]:
    """A JSON object's keys and values as text (a nested value as compact JSON)."""
    if not value.strip():
        return {}
    try:
        found = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{where}: not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(found, dict):
        raise ValueError(f"{where}: not a JSON object")
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)
        for k, v in found.items()
    }


def check_attributes(values: Mapping[str, str]) -> dict[str, str]:
    """Attributes as an editor typed them, checked as an import's are (an empty value drops
    its attribute); NewsletterError naming the first that breaks a rule."""
    found: dict[str, str] = {}
    for key, value in values.items():
        name = key.strip()
        if not name:
            raise NewsletterError("attributes: an attribute has no name")
        try:
            _attribute(found, name, value)
        except ValueError as exc:
            raise NewsletterError(f"attributes: {exc}") from None
    return found


def _attribute(attributes: dict[str, str], key: str, value: str) -> None:
    if CONTROL.search(value.replace("\t", " ")) or CONTROL.search(key):
        raise ValueError(f"column {key!r} contains a line break or control character")
    value = value.strip()
    if not value:
        return
    if len(key) > 100:
        raise ValueError(f"the attribute name {key[:40]!r}… is longer than 100 characters")
    if len(value) > ATTRIBUTE_MAX:
        raise ValueError(
            f"column {key!r}: the value is {len(value):,} characters long, over the limit "
            f"of {ATTRIBUTE_MAX:,}"
        )
    attributes[key] = value
    if len(attributes) > ATTRIBUTES_MAX:
        raise ValueError(f"more than {ATTRIBUTES_MAX} attributes")


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
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")


def split_line(line: str, columns: list[str], delimiter: str = ",") -> list[str]:
    """One line's fields, or ValueError naming the column and character that break it."""
    try:
        return next(csv.reader([line], delimiter=delimiter, strict=True), [])
    except csv.Error as exc:
        field, why = csv_problem(line, delimiter) or (0, str(exc))
        if not field:
            raise ValueError(why) from None
        name = f" ({columns[field - 1]!r})" if field <= len(columns) else ""
        raise ValueError(f"column {field}{name}: {why}") from None


def csv_problem(line: str, delimiter: str = ",") -> tuple[int, str] | None:
    """Where and why strict csv refuses one line: (field number from 1, reason), or None."""
    named = DELIMITERS.get(delimiter, repr(delimiter))
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
            if i < end and line[i] != delimiter:
                return field, (
                    f"{line[i]!r} at character {i + 1} follows the closing quote; a quoted "
                    f'field ends at a {named} (write "" for a quote inside it)'
                )
        else:
            comma = line.find(delimiter, i)
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
        if _RANK[row.status] > _RANK[seen.status]:
            seen.status = row.status
    return merged


# --- writing -------------------------------------------------------------------------------------


def safe_cell(value: str) -> str:
    """A cell no spreadsheet runs: one starting with = + - @ (or a tab or CR) gets a leading
    apostrophe, which spreadsheets show as text and this program's import takes off again."""
    return "'" + value if value.startswith(FORMULA_START) else value


EXPORT_COLUMNS = OWN_COLUMNS


def write_csv(rows: Iterable[Sequence[str]], header: Sequence[str]) -> str:
    """CSV text (CRLF lines, RFC 4180) with every cell made safe."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([safe_cell(h) for h in header])
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
    return out.getvalue()
