"""A member list's layout: its delimiter, whose export it is, and which column holds what.

An import reads the header line, guesses the delimiter (comma, semicolon or tab: whichever
the header has most of outside quotes), recognises the exports of Mailchimp, Substack,
Buttondown and listmonk (and this program's own) by their column names, and proposes a
field for each column. The editor confirms or changes the proposal (the desk's mapping step,
`subscribers import --map COLUMN=FIELD`) before anything is stored.

The header lines below were written from each service's documentation of its export or
import format, not copied from a file of theirs:
  - Mailchimp: "Export your audience" / "View unsubscribed and cleaned addresses" in its
    knowledge base: an audience export is a ZIP of three CSVs (subscribed, unsubscribed,
    cleaned) with "Email Address", "First Name", "Last Name", the merge fields, then
    MEMBER_RATING, OPTIN_TIME, OPTIN_IP, CONFIRM_TIME, CONFIRM_IP, LATITUDE, LONGITUDE,
    GMTOFF, DSTOFF, TIMEZONE, CC, REGION, LAST_CHANGED, LEID, EUID, NOTES, TAGS; the
    unsubscribed file adds UNSUB_TIME (and the campaign and reason of it), the cleaned one
    CLEAN_TIME (a hard bounce, or repeated soft ones).
  - Substack: the subscriber export (the email_list CSV of "Export your data", as Ghost's
    Substack migrator reads it): email, active_subscription, expiry, plan, email_disabled,
    created_at, first_payment_at; email_disabled=true means no mail goes to the address.
  - Buttondown: the subscriber export and its API's subscriber object: id, email (or
    email_address), notes, metadata (a JSON object), tags, creation_date, referrer_url,
    secondary_id, source, subscriber_type (regular, premium, gifted, trialed, churning,
    past_due, unpaid, unactivated, unsubscribed, removed, complained, undeliverable).
  - listmonk: its import format and subscriber export: (uuid,) email, name, status
    (enabled, disabled, blocklisted), attributes (a JSON object), created_at, updated_at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from newsletter.errors import NewsletterError

DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}


class Field(StrEnum):
    """What a column of a member list becomes."""

    EMAIL = "email"
    NAME = "name"
    FIRST_NAME = "first_name"  # joined with last_name into the name, when no name column
    LAST_NAME = "last_name"
    STATUS = "status"  # a status word (STATUS_WORDS)
    UNSUBSCRIBED_WHEN_SET = "unsubscribed_when_set"  # any value: unsubscribed (UNSUB_TIME)
    BOUNCED_WHEN_SET = "bounced_when_set"  # any value: bounced (Mailchimp's CLEAN_TIME)
    UNSUBSCRIBED_WHEN_TRUE = "unsubscribed_when_true"  # true/false (email_disabled)
    ATTRIBUTES_JSON = "attributes_json"  # a JSON object, each key an attribute
    ATTRIBUTE = "attribute"  # kept as an attribute named after the column
    SKIP = "skip"  # not stored


# At most one column each; the status kinds may come together (Mailchimp's two times).
SINGLE = (Field.EMAIL, Field.NAME, Field.FIRST_NAME, Field.LAST_NAME, Field.STATUS)


@dataclass(frozen=True)
class Profile:
    """An export recognised by its column names (any one signature, all of its names)."""

    name: str
    signatures: tuple[frozenset[str], ...]
    fields: Mapping[str, Field]
    other: Field = Field.ATTRIBUTE  # columns the profile does not name

    def matches(self, names: set[str]) -> bool:
        return any(signature <= names for signature in self.signatures)


def _all(names: str, field: Field) -> dict[str, Field]:
    return dict.fromkeys(names.split(","), field)


GENERIC = {
    **_all("email,e-mail,email address,email_address", Field.EMAIL),
    **_all("name,full name,full_name", Field.NAME),
    **_all("first name,first_name,firstname", Field.FIRST_NAME),
    **_all("last name,last_name,lastname,surname", Field.LAST_NAME),
    "status": Field.STATUS,
}

OWN = "this newsletter's export"
OWN_COLUMNS = ("email", "name", "status", "created_at", "unsubscribed_at")
PROFILES = (
    Profile(
        OWN,
        (frozenset(OWN_COLUMNS),),
        {**GENERIC, **_all("created_at,unsubscribed_at", Field.SKIP)},
    ),
    Profile(
        "Mailchimp",
        (frozenset({"email address", "first name"}), frozenset({"email address", "euid"})),
        {
            **GENERIC,
            "unsub_time": Field.UNSUBSCRIBED_WHEN_SET,
            "clean_time": Field.BOUNCED_WHEN_SET,
            # Tracking and bookkeeping of Mailchimp's own (IP addresses, places, ids): not
            # kept unless the editor asks, as the member gains nothing by our storing them.
            **_all(
                "member_rating,optin_time,optin_ip,confirm_time,confirm_ip,latitude,longitude,"
                "gmtoff,dstoff,timezone,cc,region,last_changed,leid,euid,unsub_campaign_title,"
                "unsub_campaign_id,unsub_reason,unsub_reason_other,clean_campaign_title,"
                "clean_campaign_id",
                Field.SKIP,
            ),
        },
    ),
    Profile(
        "Substack",
        (frozenset({"email", "active_subscription"}), frozenset({"email", "email_disabled"})),
        {
            **GENERIC,
            "email_disabled": Field.UNSUBSCRIBED_WHEN_TRUE,
            **_all("created_at,first_payment_at,prefer_digests", Field.SKIP),
        },
    ),
    Profile(
        "Buttondown",
        (frozenset({"email", "subscriber_type"}), frozenset({"email", "notes", "metadata"})),
        {
            **GENERIC,
            "subscriber_type": Field.STATUS,
            "metadata": Field.ATTRIBUTES_JSON,
            **_all(
                "id,creation_date,referrer_url,secondary_id,utm_campaign,utm_medium,utm_source",
                Field.SKIP,
            ),
        },
    ),
    Profile(
        "listmonk",
        (frozenset({"email", "name", "attributes"}), frozenset({"uuid", "email", "attributes"})),
        {
            **GENERIC,
            "attributes": Field.ATTRIBUTES_JSON,
            **_all("uuid,created_at,updated_at", Field.SKIP),
        },
    ),
)
PLAIN = Profile("a plain list", (frozenset({"email"}),), GENERIC)


@dataclass(frozen=True)
class Layout:
    """How to read a member list: where its header is, its delimiter, its columns as written,
    whose export it looks like, and the field of each column."""

    header_line: int
    delimiter: str
    columns: tuple[str, ...]
    source: str
    fields: tuple[Field, ...]

    @property
    def delimiter_name(self) -> str:
        return DELIMITERS.get(self.delimiter, repr(self.delimiter))

    def key(self, index: int) -> str:
        """The attribute a column becomes (its name in lower case; in our own export, a
        column "attribute X" is attribute X, named so beside a column of ours)."""
        name = self.columns[index].strip().lower()
        if self.source == OWN and name.startswith("attribute ") and name[10:] in OWN_COLUMNS:
            return name[10:]
        return name

    def describe(self) -> list[str]:
        """One line a column: its name and field."""
        return [f"{c} → {f}" for c, f in zip(self.columns, self.fields, strict=True)]


_QUOTED = re.compile(r'"(?:[^"]|"")*"?')


def detect_delimiter(header: str) -> str:
    """The delimiter the header line uses most outside quoted names (a comma on a tie, or when
    there is one column only)."""
    bare = _QUOTED.sub("", header)
    counts = {d: bare.count(d) for d in DELIMITERS}
    best = max(counts.values())
    return next(d for d in DELIMITERS if counts[d] == best) if best else ","


def propose(header_line: int, delimiter: str, columns: list[str]) -> Layout:
    """The layout of a header: whose export it is and the field of each column."""
    names = [c.strip().lower() for c in columns]
    if len(set(names)) != len(names):
        raise NewsletterError(f"line {header_line}: the header repeats a column name")
    profile = next((p for p in PROFILES if p.matches(set(names))), PLAIN)
    fields = [profile.fields.get(name, profile.other if name else Field.SKIP) for name in names]
    # A name split in two is the name only when no column holds it whole.
    if Field.NAME in fields:
        fields = [Field.SKIP if f in (Field.FIRST_NAME, Field.LAST_NAME) else f for f in fields]
    # A header without an address column still has a layout: the editor may choose one.
    return Layout(
        header_line, delimiter, tuple(c.strip() for c in columns), profile.name, tuple(fields)
    )


def choose(layout: Layout, overrides: Mapping[str, str]) -> Layout:
    """The layout with the editor's choices (column name → field name) in place of the
    proposal; NewsletterError naming the column or field that does not fit."""
    fields = list(layout.fields)
    by_name = {c.strip().lower(): i for i, c in enumerate(layout.columns)}
    for column, field in overrides.items():
        index = by_name.get(column.strip().lower())
        if index is None:
            raise NewsletterError(
                f"{column}={field}: the file has no column {column!r} "
                f"(its columns: {', '.join(layout.columns)})"
            )
        try:
            fields[index] = Field(field.strip().lower())
        except ValueError:
            raise NewsletterError(
                f"{column}={field}: {field!r} is not a field (use one of: "
                f"{', '.join(f.value for f in Field)})"
            ) from None
    chosen = replace(layout, fields=tuple(fields))
    check(chosen)
    return chosen


def check(layout: Layout) -> None:
    """One column holds the address; no other field but the attributes and status kinds twice."""
    for field in SINGLE:
        where = [layout.columns[i] for i, f in enumerate(layout.fields) if f == field]
        if len(where) > 1:
            raise NewsletterError(
                f"the columns {', '.join(map(repr, where))} are all mapped to {field}: choose one"
            )
    if Field.EMAIL not in layout.fields:
        found = ", ".join(c.lower() for c in layout.columns)
        raise NewsletterError(
            f"line {layout.header_line}: the header has no 'email' column (found: {found}); "
            "name the column that holds the addresses (COLUMN=email)"
        )


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`COLUMN=FIELD` pairs as typed on a command line (the last '=' splits them)."""
    found: dict[str, str] = {}
    for pair in pairs:
        column, sep, field = pair.rpartition("=")
        if not sep or not column.strip() or not field.strip():
            raise NewsletterError(f"--map {pair!r}: write COLUMN=FIELD, e.g. 'E-Mail=email'")
        found[column] = field
    return found
