"""The demo issue (`make demo`: the seed feed and the survey) compiled as a send compiles it,
without a database: for tests that look at the mailed message itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from markupsafe import Markup

from newsletter import config, site
from newsletter.content import compiler
from newsletter.content.personalize import Personalizer
from newsletter.content.preview import SAMPLE
from newsletter.content.sources import SourceReport, html_to_text, parse_feed
from newsletter.storage.ledger import Recipient
from newsletter.tokens import Signer
from tests.checks import REPO, parse

POSTAL = "Room 1203, 88 Example Road, Beijing 100000, China"


def demo_settings(postal_address: str = "") -> config.Settings:
    settings = config.load(REPO / "config.toml", env={config.SECRET_ENV: "x" * 32})
    lst = dataclasses.replace(settings.list, postal_address=postal_address)
    return dataclasses.replace(settings, list=lst)


def demo_items() -> list[compiler.ItemView]:
    feed = REPO / "examples" / "seed-feed.xml"
    entries = parse_feed(feed.read_bytes(), str(feed), None, SourceReport(str(feed)))
    return [
        compiler.ItemView(
            i, e.title, e.section, e.url, Markup(e.body_html), html_to_text(e.body_html), None
        )
        for i, e in enumerate(entries, start=1)
    ]


BOARD_SECTION = "From the members' board"


def demo_board(settings: config.Settings) -> list[compiler.BoardPost]:
    """Threads as the board's section carries them (services/board.for_issue): members' names,
    excerpts of their text (one with an address written out, long and unbroken)."""
    thread = settings.list.base_url.rstrip("/") + "/board/{}"
    return [
        compiler.BoardPost(
            7,
            "王芳",
            "Has anyone filed a pledge of patent rights in Shenzhen this year? The office asked "
            "us for a valuation report we had not prepared.",
            3,
            thread.format(7),
        ),
        compiler.BoardPost(
            9,
            "María García",
            "The decision is at https://court.example/judgments/2026/civil/ip-appeals/"
            "final-ruling-number-0088-on-the-licensing-dispute for anyone following the case.",
            0,
            thread.format(9),
        ),
    ]


def demo_compiled(
    settings: config.Settings,
    preheader: str = "",
    items: Sequence[compiler.ItemView] | None = None,
) -> compiler.Compiled:
    """The demo issue (or these items in its place), compiled as a send does, with threads
    from the members' board in its section."""
    items = demo_items() if items is None else items
    assert settings.survey is not None
    survey = (1, settings.survey.question, list(enumerate(settings.survey.options, start=1)))
    env = site.environment(REPO)
    shape = compiler.Shape(preheader=preheader)
    return compiler.compile_issue(
        settings, env, items, survey, shape=shape, board=demo_board(settings)
    )


def mailed_html(settings: config.Settings, compiled: compiler.Compiled) -> str:
    """The HTML part of the message as it is mailed (quoted-printable, decoded back)."""
    _, data = Personalizer(compiled, settings, None, 1).message(SAMPLE)
    part = parse(data).get_body(preferencelist=("html",))
    assert part is not None
    html: str = part.get_content()
    return html


def demo_message(settings: config.Settings, compiled: compiler.Compiled) -> bytes:
    """One member's message of the issue, with signed links, as the engine sends it."""
    signer = Signer(settings.require_secret())
    member = Recipient(3, "wang.fang@example.org", "Wang Fang")
    return Personalizer(compiled, settings, signer, 1).message(member)[1]
