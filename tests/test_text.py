"""The text part of Markdown items: links as "text (URL)", bullets, tables as aligned columns."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content.sources import render_markdown
from newsletter.content.text import WIDTH, html_to_text
from tests import steps
from tests.smtpd import RecordingHandler

ITEM = """---
title: Harbour figures
url: https://harbour.example/figures
---
See [the tide tables](https://harbour.example/tide) or write to [us](mailto:desk@harbour.example).

- ships in, counted at the north gate each morning before the pilots change their watch
- ships out
  - to the north
  - to the south

| Quay | Ships | 城市 |
| --- | --- | --- |
| North | 12 | 上海 |
| South basin | 3 | x |
"""

TEXT = """\
See the tide tables (https://harbour.example/tide) or write to us
(desk@harbour.example).

- ships in, counted at the north gate each morning before the pilots change
  their watch
- ships out
  - to the north
  - to the south

Quay         Ships  城市
-----------  -----  ----
North        12     上海
South basin  3      x"""


def test_a_markdown_item_reads_well_in_the_text_part(
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: RecordingHandler,
    tmp_path: Path,
) -> None:
    assert html_to_text(render_markdown(ITEM.split("---\n", 2)[2])) == TEXT
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "figures.md").write_text(ITEM, encoding="utf-8")
    members = tmp_path / "members.csv"
    members.write_text("email,name\nada@example.org,Ada\n", encoding="utf-8")
    steps.import_csv(sessions, members)
    steps.import_source(sessions, str(posts))
    (summary,) = asyncio.run(steps.send(settings, sessions))
    assert summary.counts == {"sent": 1}
    message = smtp_server.messages[0].parse()
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None
    assert html_part is not None
    assert TEXT in text_part.get_content().replace("\r\n", "\n")
    html = html_part.get_content()
    # The table is styled in the HTML part: premailer inlined the template's table rules.
    assert '<table style="border-collapse:collapse' in html
    assert '<th style="border:1px solid #d9dee3' in html
    assert '<td style="border:1px solid #d9dee3' in html


words = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    paragraphs=st.lists(st.lists(words, min_size=1, max_size=30), min_size=1, max_size=5),
    markup=st.lists(
        st.sampled_from(["- ", "1. ", "> ", "| a | b |\n| - | - |\n| ", "## ", "[x](", "`"]),
        max_size=5,
    ),
)
def test_every_word_of_an_item_is_in_its_text_within_the_width(
    paragraphs: list[list[str]], markup: list[str]
) -> None:
    source = "\n\n".join(
        (markup[i % len(markup)] if markup else "") + " ".join(p) for i, p in enumerate(paragraphs)
    )
    text = html_to_text(render_markdown(source))
    for paragraph in paragraphs:
        for word in paragraph:
            assert word in text, (source, text)
    if any(m.startswith("|") for m in markup):
        return  # a table's rows are as wide as their columns: aligned, never wrapped
    for line in text.splitlines():
        # A line is wrapped at the width unless one word is longer.
        assert len(line) <= WIDTH or " " not in line.strip(), line
