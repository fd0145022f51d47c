"""Variants of an issue: what a member chose (sections, language, survey) → the copy they get.

An issue is compiled once per distinct variant among its members, never once per member.
A member's choices are kept as one short key (`member_key`), so an issue's snapshot can give
every member their variant in a single INSERT … SELECT; at release each key present in the
audience is resolved against what the issue holds (`effective`): sections with nothing new
drop out, a member with none left gets nothing, and choices that come to the same copy share
one compile. `Variants` then hands the delivery engine each recipient's own message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from newsletter import i18n
from newsletter.content.layout import Wire, assemble, dot_stuff
from newsletter.content.personalize import Personalizer
from newsletter.storage.ledger import Recipient
from newsletter.storage.models import DEFAULT_VARIANT

# The skeleton a signer is given when an issue has several variants: the whole message is
# its one slot value (a variant's own skeleton would fit only that variant's messages).
WHOLE = (b"", b"")


@dataclass(frozen=True, slots=True)
class Choice:
    """A member's stored choices: None means "the list's language" and "every section"."""

    language: str | None = None
    sections: frozenset[str] | None = None
    survey: bool = True

    @property
    def key(self) -> str:
        return member_key(self.language, self.sections, self.survey)


def member_key(language: str | None, sections: Iterable[str] | None, survey: bool) -> str:
    """The key stored with a member's choices: "default" when they chose nothing, else a hash
    of the canonical choices (short and of fixed length, however many sections they name)."""
    chosen = None if sections is None else sorted(set(sections))
    if language is None and chosen is None and survey:
        return DEFAULT_VARIANT
    canonical = json.dumps([language, chosen, survey], ensure_ascii=False, separators=(",", ":"))
    return "m" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def sections_text(sections: Iterable[str] | None) -> str | None:
    """The stored form of chosen sections (a JSON list, sorted), None for every section."""
    return None if sections is None else json.dumps(sorted(set(sections)), ensure_ascii=False)


def read_sections(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(json.loads(text))


@dataclass(frozen=True, slots=True)
class Variant:
    """One compiled copy: these sections, in this order, in this language, with or without
    the survey."""

    language: str
    sections: tuple[str, ...]
    survey: bool

    @property
    def key(self) -> str:
        canonical = json.dumps(
            [self.language, list(self.sections), self.survey],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return "v" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def full(language: str, present: Sequence[str], has_survey: bool) -> Variant:
    """The whole issue in the list's language: the issue's own copy and the public archive's."""
    return Variant(language, tuple(present), has_survey)


def effective(
    choice: Choice,
    default_language: str,
    present: Sequence[str],
    has_survey: bool,
    choosable: Collection[str],
) -> Variant | None:
    """The copy a member with these choices gets of an issue whose sections with new items
    are `present` (in the issue's order); None when none of their sections has anything new.
    Members choose among `choosable` (issue.sections); items of any other section go to
    everyone, since no one could have chosen them away."""
    language = choice.language if choice.language in i18n.languages() else default_language
    shown = tuple(
        s for s in present if choice.sections is None or s not in choosable or s in choice.sections
    )
    if not shown:
        return None
    return Variant(language, shown, choice.survey and has_survey)


class Variants:
    """An issue's personalisers, one a variant (0: the issue's own copy); each recipient's
    message comes from their variant's. The delivery engine takes it as it takes one."""

    def __init__(self, personalizers: Mapping[int, Personalizer]) -> None:
        if 0 not in personalizers:
            raise ValueError("the issue's own copy (variant 0) is missing")
        self._by_id = dict(personalizers)
        self.own = self._by_id[0]
        self._single = len(self._by_id) == 1

    def __len__(self) -> int:
        return len(self._by_id)

    def of(self, r: Recipient) -> Personalizer:
        return self._by_id[r.variant]

    @property
    def skeleton(self) -> tuple[bytes, ...]:
        return self.own.skeleton if self._single else WHOLE

    def slots(self, r: Recipient) -> tuple[str, list[bytes]]:
        """As Personalizer.slots, for `skeleton`: with several variants, the one value is the
        whole message (so a signing process needs no skeleton per variant)."""
        personalizer = self.of(r)
        message_id, values = personalizer.slots(r)
        if self._single:
            return message_id, values
        return message_id, [assemble(personalizer.skeleton, values)]

    def wire(self, r: Recipient) -> tuple[str, Wire]:
        return self.of(r).wire(r)

    def wire_from(self, values: list[bytes]) -> Wire:
        if self._single:
            return self.own.wire_from(values)
        (message,) = values
        return Wire(dot_stuff(message) + b".\r\n")

    def envelope_from(self, member_id: int) -> str:
        return self.own.envelope_from(member_id)

    def message_id(self, member_id: int) -> str:
        return self.own.message_id(member_id)
