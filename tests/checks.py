"""Checks every delivered message must pass, shared by the send tests and the demo test."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import feedparser

from newsletter.content.sources import clean_title

REPO = Path(__file__).resolve().parent.parent
REQUIRED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Archive",
)
VOTE_LINK = re.compile(r"https?://[^\s\"'<>]+/v/[A-Za-z0-9_-]+")


def seed_titles() -> list[str]:
    feed = feedparser.parse((REPO / "examples" / "seed-feed.xml").read_bytes())
    return [clean_title(e.title) for e in feed.entries]


def parse(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


def defects(msg: EmailMessage) -> list[object]:
    found: list[object] = []
    for part in msg.walk():
        found.extend(part.defects)
        for name in part:
            header = part[name]
            found.extend(getattr(header, "defects", ()))
    return found


def check_message(data: bytes) -> tuple[EmailMessage, str, str, list[str]]:
    """Assert the standing rules for one message; return it, its two parts and its vote links."""
    assert len(data) < 100 * 1024, f"message is {len(data)} bytes"
    for line in data.split(b"\r\n"):
        assert len(line) <= 998, "a line is longer than RFC 5322 allows"
    msg = parse(data)
    assert defects(msg) == []
    for name in REQUIRED_HEADERS:
        assert msg[name], f"missing header {name}"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(r"<https?://\S+>", str(msg["List-Unsubscribe"]))
    assert msg.get_content_type() == "multipart/alternative"
    text_part = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    assert text_part is not None
    assert html_part is not None
    assert text_part.get_content_charset() == "utf-8"
    text, html = text_part.get_content(), html_part.get_content()
    assert len(html.encode()) < 100 * 1024
    # CSS is inlined: the only <style> left holds @media rules and nothing else.
    for block in re.findall(r"<style[^>]*>(.*?)</style>", html, re.S):
        assert re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*\s*\}", "", block).strip() == ""
    assert 'style="' in html or "style='" in html
    links_html = VOTE_LINK.findall(html)
    links_text = VOTE_LINK.findall(text)
    assert len(links_html) == 3
    assert links_html == links_text
    return msg, text, html, links_html
