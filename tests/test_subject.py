"""The Subject is plain text: decoded from the header it is the title; pages escape it once."""

from __future__ import annotations

import asyncio
import html
import re
import uuid

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.storage.models import Issue, Item, Member
from newsletter.web.app import create_app
from tests import steps as publish
from tests.smtpd import RecordingHandler

# What feeds carry in titles: markup characters, quotes, accents, CJK, symbols.
title_text = st.text(
    st.sampled_from("&<>\"';#") | st.characters(categories=("L", "N", "P", "S", "Zs")),
    min_size=1,
    max_size=60,
).map(lambda t: " ".join(t.split()))


@hypothesis_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(title="Xiaomi & Nokia sign O'Brien's \"deal\"")
@example(title="Login & sessions")
@example(title="<b>&amp;</b> 小米 & 诺基亚")
@given(title=title_text.filter(bool))
def test_subject_is_escaped_once_where_html_and_never_elsewhere(
    settings: Settings, sessions: sessionmaker[Session], smtp_server: RecordingHandler, title: str
) -> None:
    # One database for all examples: each sends an issue of the one item it adds.
    s = settings
    with sessions.begin() as session:
        if session.scalar(select(Member).limit(1)) is None:
            session.add(Member(email="reader@example.org", name="Reader"))
        session.add(
            Item(
                guid=f"urn:uuid:{uuid.uuid4()}",
                source="test",
                section="News",
                title=title,
                url="https://example.org/a",
                body_html="<p>Body.</p>",
                body_text="Body.",
            )
        )
    asyncio.run(publish.send(s, sessions))
    expected = f"{s.list.name}: {title}"

    msg = smtp_server.messages[-1].parse()
    assert str(msg["Subject"]) == expected
    html_part = msg.get_body(preferencelist=("html",))
    text_part = msg.get_body(preferencelist=("plain",))
    assert html_part is not None
    assert text_part is not None
    (raw_title,) = re.findall(r"<title>(.*?)</title>", html_part.get_content(), re.S)
    assert_escaped_once(raw_title, expected)
    assert title in text_part.get_content().splitlines()  # not escaped at all

    with sessions() as session:
        issue = session.scalars(select(Issue).order_by(Issue.id.desc())).first()
        assert issue is not None
        assert issue.subject == expected  # stored as plain text
    page = TestClient(create_app(s, sessions)).get("/archive").text
    (listed,) = re.findall(rf'<a href="/archive/{issue.id}">(.*?)</a>', page, re.S)
    assert_escaped_once(listed, expected)


# An ampersand that does not start a character reference: text that was never escaped.
BARE_AMPERSAND = re.compile(r"&(?!(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);)")


def assert_escaped_once(raw: str, plain: str) -> None:
    """`raw` is `plain` as HTML text: unescaped once it is `plain` again (not escaped twice,
    which would leave "&amp;" behind), and it holds no markup and no bare "&" (so it was
    escaped at all: html.unescape alone passes "Login & sessions" left as it is)."""
    assert html.unescape(raw) == plain, raw
    assert "<" not in raw, raw
    assert ">" not in raw, raw
    assert BARE_AMPERSAND.search(raw) is None, raw
