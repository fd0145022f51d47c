"""Compile an issue from its items and survey: render once, inline CSS once, make the text part once.

Everything that differs between members (their name, their signed links) is left in the
compiled issue as a slot: a marker string that survives Jinja2, premailer and html2text
untouched, and that personalize.py replaces for each member by plain substitution.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import premailer
from jinja2 import Environment
from markupsafe import Markup

from newsletter import i18n
from newsletter.config import Settings
from newsletter.content.results import Results
from newsletter.content.sources import html_to_text
from newsletter.errors import ConfigError, HeaderError, IssueTooLarge
from newsletter.storage.models import Issue as IssueRow
from newsletter.storage.models import Item, utcnow

# RFC 5322 §2.1.1: a line is at most 998 octets. Lines are broken well below that, counting
# each slot at its largest filled size, so substitution can never push a line over.
LINE_LIMIT = 600
SLOT_ALLOWANCE = 320


@dataclass(frozen=True, slots=True)
class ItemView:
    id: int
    title: str
    section: str
    url: str
    body_html: Markup
    body_text: str
    published_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class OptionView:
    position: int
    label: str
    link: str  # a slot marker


@dataclass(frozen=True, slots=True)
class SurveyView:
    id: int
    question: str
    options: tuple[OptionView, ...]


@dataclass(frozen=True, slots=True)
class BoardPost:
    """A thread an issue carries in "From the members' board"."""

    id: int
    name: str  # its author, as the board names them
    excerpt: str  # the start of its text
    replies: int
    link: str  # the thread on the board


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    items: tuple[ItemView, ...]


@dataclass(frozen=True, slots=True)
class Compiled:
    """One issue, rendered and inlined, with member slots still open."""

    subject: str
    html: str
    text: str
    nonce: str
    item_ids: tuple[int, ...]
    survey_id: int | None
    vote_positions: tuple[int, ...]
    created: dt.datetime
    stats: dict[str, Any] = field(default_factory=dict, compare=False)
    # The issue's own links, in slot order (link0, link1, …): the /r/ redirects' targets.
    links: tuple[str, ...] = ()

    @property
    def slot_pattern(self) -> re.Pattern[str]:
        return slot_pattern(self.nonce)

    def html_bytes_estimate(self) -> int:
        """The HTML size with every slot filled at its largest expected size."""
        markers = self.slot_pattern.findall(self.html)
        base = len(self.slot_pattern.sub("", self.html).encode())
        return base + len(markers) * SLOT_ALLOWANCE // 2


def slot(nonce: str, name: str) -> str:
    # Letters and digits only: nothing in Jinja2's escaping, premailer, lxml or html2text
    # touches such a word, and the random nonce keeps item text from ever forging one.
    return f"XSLOT{nonce}{name}SLOTX"


def slot_pattern(nonce: str) -> re.Pattern[str]:
    return re.compile(rf"XSLOT{nonce}([a-z0-9]+)SLOTX")


def new_nonce() -> str:
    return secrets.token_hex(6)


def item_views(items: Sequence[Item]) -> list[ItemView]:
    return [
        ItemView(
            id=item.id,
            title=item.title,
            section=item.section,
            url=item.url,
            body_html=Markup(item.body_html),  # sanitised by nh3 when it was imported
            body_text=item.body_text or html_to_text(item.body_html),
            published_at=item.published_at,
        )
        for item in items
    ]


def group_sections(items: Sequence[ItemView], order: Sequence[str]) -> list[Section]:
    grouped: dict[str, list[ItemView]] = {name: [] for name in order}
    for item in items:
        grouped.setdefault(item.section, []).append(item)
    return [Section(name, tuple(members)) for name, members in grouped.items() if members]


def render_subject(
    env: Environment,
    settings: Settings,
    items: Sequence[ItemView],
    date: dt.date,
    language: str | None = None,
) -> str:
    """The Subject as plain text, in `language` (list.translations.CODE.subject, else
    list.subject). A header is not HTML: nothing here is escaped, and every page that shows
    the stored subject escapes it once, as it does any text."""
    language = language or settings.list.language
    source = settings.list.subject_in(language)
    key = (
        "list.subject"
        if source == settings.list.subject
        else f"list.translations.{language}.subject"
    )
    # The site's environment autoescapes templates made from strings; this one must not.
    template = env.overlay(autoescape=False).from_string(source)
    try:
        subject = template.render(
            list_name=settings.list.name_in(language),
            first_title=items[0].title if items else "",
            item_count=len(items),
            date=date,
        )
    # config.check_subject tried the template on sample values; these values may still
    # break it (an index past a short title): name the key, as a config error does.
    except Exception as exc:  # noqa: BLE001 - a template may raise anything; all are config errors
        raise ConfigError(
            key, f"the template fails on this issue: {exc.__class__.__name__}: {exc}"
        ) from None
    if re.search(r"[\r\n\x00-\x08\x0b\x0c\x0e-\x1f]", subject):
        raise HeaderError("Subject", subject)
    return " ".join(subject.split())


def plain_subject(text: str) -> str:
    """An editor's own subject: one line of plain text."""
    if re.search(r"[\r\n\x00-\x08\x0b\x0c\x0e-\x1f]", text):
        raise HeaderError("Subject", text)
    return " ".join(text.split())


def inline_css(html: str) -> str:
    """premailer, once per issue. `!important` is kept so @media rules can still win."""
    logger = logging.getLogger("CSSUTILS")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # cssutils warns about every mso-/-webkit- property
    try:
        result: str = premailer.Premailer(
            html,
            strip_important=False,
            keep_style_tags=False,
            disable_validation=True,
            allow_network=False,
            remove_classes=False,
            cssutils_logging_level=logging.CRITICAL,
        ).transform()
    finally:
        logger.setLevel(level)
    return result


def wrap_lines(text: str, pattern: re.Pattern[str], limit: int = LINE_LIMIT) -> str:
    """Break lines that could pass the RFC 5322 limit once slots are filled.

    Breaks go at a space (a newline is white space to HTML and to readers of text), or,
    in text without spaces such as Chinese, between tags or characters.
    """
    out: list[str] = []
    for line in text.split("\n"):
        while _weight(line, pattern) > limit:
            cut = _cut_point(line, pattern, limit)
            out.append(line[:cut].rstrip(" "))
            line = line[cut:].lstrip(" ")
        out.append(line)
    return "\n".join(out)


def _weight(line: str, pattern: re.Pattern[str]) -> int:
    if len(line) * 4 <= LINE_LIMIT // 2:
        return len(line)
    return len(line.encode()) + len(pattern.findall(line)) * SLOT_ALLOWANCE


def _cut_point(line: str, pattern: re.Pattern[str], limit: int) -> int:
    hi = len(line)
    while hi > 1 and _weight(line[:hi], pattern) > limit:
        hi = max(1, hi * 3 // 4)
    # Never cut inside a slot marker.
    for m in pattern.finditer(line):
        if m.start() < hi < m.end():
            hi = m.start() or m.end()
    for sep in (" ", "><"):
        pos = line.rfind(sep, 1, hi)
        if pos > hi // 3:
            return pos + (1 if sep == "><" else 0)
    return hi


@dataclass(frozen=True, slots=True)
class Shape:
    """What an editor set for this issue on the desk (all optional)."""

    note_html: str = ""  # the editor's note above the items, sanitised HTML
    note_text: str = ""  # the same for the text part
    subject: str = ""  # replaces list.subject's when set
    preheader: str = ""  # the line mail clients show after the subject in the inbox


PREHEADER_LENGTH = 140  # about what an inbox line shows after the subject


def default_preheader(items: Sequence[ItemView]) -> str:
    """The inbox preview line when an editor set none: the first titles, as many as fit."""
    line = ""
    for item in items:
        title = " ".join(item.title.split())
        candidate = f"{line} · {title}" if line else title
        if len(candidate) > PREHEADER_LENGTH:
            if not line:
                line = title[: PREHEADER_LENGTH - 1].rstrip() + "…"
            break
        line = candidate
    return line


def compile_issue(
    settings: Settings,
    env: Environment,
    items: Sequence[ItemView],
    survey: tuple[int, str, Sequence[tuple[int, str]]] | None,
    *,
    previous: Results | None = None,
    now: dt.datetime | None = None,
    nonce: str | None = None,
    shape: Shape | None = None,
    language: str | None = None,
    sections: Collection[str] | None = None,
    board: Sequence[BoardPost] = (),
    links: tuple[str, ...] = (),
) -> Compiled:
    """Render, inline and make the text part of one issue (or of one variant: only the items of
    `sections`, in `language`; env must carry that language's messages). Runs once per issue
    and variant, never per member. `links`: the issue's link list so far (another variant's),
    which this copy's link slots number on from, so that one list serves every variant."""
    shape = shape or Shape()
    now = now or utcnow()
    nonce = nonce or new_nonce()
    language = language or settings.list.language
    if sections is not None:
        items = [i for i in items if i.section in sections]
    names = ("name", "view", "unsubscribe", "trap", "prefs", "board")
    slots = {name: slot(nonce, name) for name in names}
    survey_view = None
    if survey is not None:
        survey_id, question, options = survey
        survey_view = SurveyView(
            survey_id,
            question,
            tuple(OptionView(pos, label, slot(nonce, f"vote{pos}")) for pos, label in options),
        )
    base = settings.list.base_url.rstrip("/")
    subject = (
        plain_subject(shape.subject)
        if shape.subject
        else render_subject(env, settings, items, now.date(), language)
    )
    context = {
        "list": {
            "name": settings.list.name_in(language),
            "id": settings.list.id,
            "language": i18n.html_lang(language),
            "base_url": base,
            "archive_url": f"{base}/archive",
            "postal_address": settings.list.postal_address,
        },
        "subject": subject,
        "date": now,
        "sections": group_sections(items, settings.issue.sections),
        "item_count": len(items),
        "survey": survey_view,
        "previous": previous if previous is not None and previous.total else None,
        "slots": slots,
        "note_html": Markup(shape.note_html),  # sanitised by nh3 when it was saved
        "note_text": shape.note_text,
        "preheader": shape.preheader or default_preheader(items),
        "board": tuple(board),
    }
    timings: dict[str, Any] = {}
    t0 = _clock()
    rendered = env.get_template("email/issue.html").render(context)
    t1 = _clock()
    inlined = inline_css(rendered)
    t2 = _clock()
    text = env.get_template("email/issue.txt").render(context)
    timings.update(render_s=t1 - t0, inline_s=t2 - t1, text_s=_clock() - t2)
    pattern = slot_pattern(nonce)
    text = _tidy_text(text)
    if settings.tracking.clicks:
        # Imported here: redirects.py uses this module's `slot`.
        from newsletter.content.redirects import route_links

        inlined, text, links = route_links(inlined, text, nonce, links)
    compiled = Compiled(
        subject=subject,
        html=wrap_lines(inlined, pattern),
        text=wrap_lines(text, pattern),
        nonce=nonce,
        item_ids=tuple(i.id for i in items),
        survey_id=survey_view.id if survey_view else None,
        vote_positions=tuple(o.position for o in survey_view.options) if survey_view else (),
        created=now,
        stats=timings,
        links=links,
    )
    size = compiled.html_bytes_estimate()
    if size > settings.issue.size_limit:
        raise IssueTooLarge(size, settings.issue.size_limit, len(items))
    return compiled


def _tidy_text(text: str) -> str:
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _clock() -> float:
    return time.perf_counter()


def from_row(row: IssueRow) -> Compiled:
    """The compiled form of a stored issue, to resume its send without compiling again."""
    pattern = slot_pattern(row.nonce)
    votes = sorted({int(n[4:]) for n in pattern.findall(row.html) if n.startswith("vote")})
    return Compiled(
        subject=row.subject,
        html=row.html,
        text=row.text,
        nonce=row.nonce,
        item_ids=(),
        survey_id=row.survey_id,
        vote_positions=tuple(votes),
        created=row.created_at,
        links=tuple(row.links or ()),
    )
