"""Languages: the gettext catalogs under newsletter/locale (Babel), read once per process, and locale dates.

A language is a catalog: newsletter/locale/<code>/LC_MESSAGES/messages.po, whose code is a
CLDR locale id (``zh_Hans`` for Simplified Chinese). The catalog is compiled in memory the
first time a process needs it, so no .mo file is built or committed and a .po edited in a
checkout shows at the next start. English is the source language: its messages are the ids.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_date as babel_format_date
from babel.messages import mofile, pofile
from babel.support import NullTranslations, Translations

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
SOURCE = "en"
DOMAIN = "messages"
# Spellings people and mail clients use for the languages we have, folded to our codes.
_ALIASES = {
    "zh": "zh_Hans",
    "zh_cn": "zh_Hans",
    "zh_sg": "zh_Hans",
    "zh_hans": "zh_Hans",
    "zh_hans_cn": "zh_Hans",
    "en_us": "en",
    "en_gb": "en",
}


def N_(message: str) -> str:
    """Mark a message for `pybabel extract` where it is defined; translate it where shown."""
    return message


@functools.cache
def languages() -> tuple[str, ...]:
    """The languages there is a catalog for, English first."""
    found = sorted(p.parent.parent.name for p in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))
    return (SOURCE, *[code for code in found if code != SOURCE])


def normalize(code: str) -> str | None:
    """Our code for a language as people write it (zh-CN, zh_Hans, EN), or None if we have no
    catalog for it."""
    folded = code.strip().replace("-", "_").lower()
    folded = _ALIASES.get(folded, folded).lower()
    for known in languages():
        if known.lower() == folded:
            return known
    return None


def label(code: str) -> str:
    """A language's own name for itself (English, 中文 (简体))."""
    return str(Locale.parse(code).get_display_name(code) or code).capitalize()


def html_lang(code: str) -> str:
    """The BCP 47 tag for <html lang> and Content-Language: zh_Hans → zh-Hans."""
    return code.replace("_", "-")


@functools.cache
def translations(code: str) -> NullTranslations:
    """The language's messages, compiled from its .po in memory once per process (fuzzy
    entries are left out, as msgfmt does)."""
    if code == SOURCE:
        return NullTranslations()
    path = LOCALE_DIR / code / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as f:
        catalog = pofile.read_po(f, locale=code, domain=DOMAIN)
    buffer = io.BytesIO()
    mofile.write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(buffer, domain=DOMAIN)


def gettext(code: str, message: str, /, **values: Any) -> str:
    """One message in the language, with %(name)s values filled in."""
    text = translations(code).gettext(message)
    return text % values if values else text


class Said(str):
    """Words for a reader, in English, that remember their message id and values, so a page
    can say them in the reader's language (`say`). It is a str: logs, tests and English
    pages use it as it is."""

    message: str
    values: dict[str, Any]

    def __new__(cls, message: str, /, **values: Any) -> Said:
        said = super().__new__(cls, message % values if values else message)
        said.message, said.values = message, values
        return said

    def __reduce__(self) -> tuple[Any, ...]:
        return (_said, (self.message, self.values))


def _said(message: str, values: dict[str, Any]) -> Said:
    return Said(message, **values)


def say(code: str, text: str) -> str:
    """`text` in the language: a Said by its message id, any other string as a message id
    (it stays as it is when the catalog lacks it)."""
    if isinstance(text, Said):
        return gettext(code, text.message, **text.values)
    return gettext(code, text) if text else text


def ngettext(code: str, singular: str, plural: str, n: int, /, **values: Any) -> str:
    text = translations(code).ngettext(singular, plural, n)
    return text % {"num": n, **values}


def format_date(value: dt.date | dt.datetime, code: str, form: str = "long") -> str:
    """A date as the language writes it: 5 March 2026 → March 5, 2026 / 2026年3月5日."""
    day = value.date() if isinstance(value, dt.datetime) else value
    return str(babel_format_date(day, format=form, locale=Locale.parse(code)))
