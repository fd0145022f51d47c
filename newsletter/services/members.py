"""Member lists: address normalisation and CSV import that never re-subscribes anyone."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.errors import ImportRowError, NewsletterError
from newsletter.storage.models import ACTIVE, BOUNCED, PENDING, UNSUBSCRIBED, Member, utcnow

_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NAME_MAX = 200


def normalize_address(raw: str) -> str:
    """Return the canonical form of an address, or raise ValueError saying what is wrong.

    The domain is lower-cased and IDNA-encoded, so an internationalised domain is stored in
    its ASCII form. A non-ASCII local part would need SMTPUTF8 end to end (RFC 6531); it is
    refused here, clearly, rather than failing later at some relay.
    """
    addr = raw.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if not addr:
        raise ValueError("the email address is empty")
    if _CONTROL.search(addr) or " " in addr:
        raise ValueError(f"the email address {addr!r} contains spaces or control characters")
    if addr.count("@") != 1:
        raise ValueError(f"{addr!r} is not an email address (it needs exactly one @)")
    local, domain = addr.split("@")
    if not local.isascii():
        raise ValueError(
            f"{addr!r} has a non-ASCII local part; internationalised mailboxes need SMTPUTF8 "
            "on every relay and are not accepted"
        )
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise ValueError(f"{addr!r} has an invalid local part")
    if len(local) > 64:
        raise ValueError(f"{addr!r} has a local part longer than 64 characters")
    try:
        ascii_domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"{addr!r} has an invalid domain") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{addr!r} has an invalid domain")
    full = f"{local.lower()}@{ascii_domain}"
    if len(full) > 254:
        raise ValueError(f"{addr!r} is longer than 254 characters")
    return full


def clean_name(raw: str) -> str:
    """A display name fit for a header: trimmed, no line breaks or control characters."""
    if "\r" in raw or "\n" in raw:
        raise ValueError("the name contains a line break")
    if _CONTROL.search(raw):
        raise ValueError("the name contains a control character")
    name = " ".join(raw.split())
    if len(name) > NAME_MAX:
        raise ValueError(f"the name is longer than {NAME_MAX} characters")
    return name


_STATUS_WORDS = {
    "": ACTIVE,
    "active": ACTIVE,
    "subscribed": ACTIVE,
    "unsubscribed": UNSUBSCRIBED,
    "optout": UNSUBSCRIBED,
    "opted-out": UNSUBSCRIBED,
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
                if _CONTROL.search(v.replace("\t", " ")):
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
        if row.status == UNSUBSCRIBED:
            seen.status = UNSUBSCRIBED
    return merged


def import_csv(
    sessions: sessionmaker[Session],
    path: Path,
    *,
    progress: Callable[[int], None] | None = None,
    chunk: int = 500,
) -> ImportReport:
    """Import a member list. Good rows are stored even when others are bad."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise NewsletterError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise NewsletterError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        ) from None
    report = ImportReport()
    rows = list(merge_duplicates(read_rows(text, report), report).values())
    now = utcnow()
    with sessions.begin() as session:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            existing = {
                m.email: m
                for m in session.scalars(
                    select(Member).where(Member.email.in_([r.email for r in part]))
                )
            }
            for row in part:
                _apply(session, existing.get(row.email), row, report, now)
            session.flush()
            if progress:
                progress(len(part))
    return report


def _apply(
    session: Session, member: Member | None, row: Row, report: ImportReport, now: dt.datetime
) -> None:
    if member is None:
        session.add(
            Member(
                email=row.email,
                name=row.name,
                status=row.status,
                attributes=row.attributes,
                unsubscribed_at=now if row.status == UNSUBSCRIBED else None,
            )
        )
        report.added += 1
        if row.status == UNSUBSCRIBED:
            report.unsubscribed += 1
        return
    changed = False
    if row.name and row.name != member.name:
        member.name = row.name
        changed = True
    if row.attributes and {**member.attributes, **row.attributes} != member.attributes:
        member.attributes = {**member.attributes, **row.attributes}
        changed = True
    if member.status in (UNSUBSCRIBED, BOUNCED):
        # An import never re-subscribes: only the member can undo an opt-out.
        if row.status == ACTIVE:
            report.kept_unsubscribed += 1
    elif row.status == UNSUBSCRIBED:
        member.status = UNSUBSCRIBED
        member.unsubscribed_at = now
        report.unsubscribed += 1
        changed = True
    if changed:
        report.updated += 1
    else:
        report.unchanged += 1


def unsubscribe(session: Session, member: Member, now: dt.datetime) -> bool:
    """Stop all mail to the member at once, including rows of sends already released."""
    from newsletter.storage.models import DEFERRED, QUEUED, SKIPPED, Delivery

    if member.status == UNSUBSCRIBED:
        return False
    member.status, member.unsubscribed_at, member.updated_at = UNSUBSCRIBED, now, now
    session.execute(
        update(Delivery)
        .where(Delivery.member_id == member.id, Delivery.status.in_((QUEUED, DEFERRED)))
        .values(status=SKIPPED, last_message="member unsubscribed", updated_at=now)
    )
    return True


def resubscribe(session: Session, member: Member, now: dt.datetime) -> bool:
    """Undo the member's own unsubscribe (a bounced address stays bounced)."""
    if member.status != UNSUBSCRIBED:
        return False
    member.status, member.unsubscribed_at, member.updated_at = ACTIVE, None, now
    return True


def confirm(session: Session, member: Member, now: dt.datetime) -> bool:
    """Double opt-in: the person confirmed the address, so it may be mailed."""
    if member.status not in (PENDING, UNSUBSCRIBED):
        return False
    member.status, member.unsubscribed_at, member.updated_at = ACTIVE, None, now
    return True
