"""An issue's own links (its items', its footer's) turned into slots, for /r/ click redirects.

At compile time every http(s) link of the HTML, and the same URLs where the text part shows
them, become slots named link0, link1, … in order of first appearance; the URLs go into the
issue's link list (stored with the issue). Each member's message fills a slot with a signed
/r/TOKEN link naming the issue, the member and the link's place in that list, so the
redirect only ever leads to a URL the issue itself carries: there is no open redirect. Links
that are slots already (vote, unsubscribe, view online, the hidden link) are left alone.
"""

from __future__ import annotations

import html
import re

from newsletter.content.compiler import slot

# An <a> element's href holding an absolute http(s) URL (premailer writes double quotes).
_HREF = re.compile(r'(<a\b[^>]*?\bhref=")(https?://[^"\s]+)(")', re.IGNORECASE)
# A URL in running text; trailing punctuation is the sentence's, not the URL's.
_TEXT_URL = re.compile(r"https?://[^\s<>\"'\[\]()]+")
_TRAILING = ".,;:!?"


def route_links(
    html_text: str, text: str, nonce: str, known: tuple[str, ...] = ()
) -> tuple[str, str, tuple[str, ...]]:
    """The HTML and text with their links as slots, and the issue's link list: `known` (the
    list another variant of the issue made) followed by the links new in this one."""
    marker = f"XSLOT{nonce}"
    links: list[str] = list(known)
    index: dict[str, int] = {url: i for i, url in enumerate(known)}

    def number(url: str) -> int:
        if url not in index:
            index[url] = len(links)
            links.append(url)
        return index[url]

    def in_html(m: re.Match[str]) -> str:
        url = html.unescape(m.group(2))
        if marker in url:
            return m.group(0)
        return m.group(1) + slot(nonce, f"link{number(url)}") + m.group(3)

    routed_html = _HREF.sub(in_html, html_text)

    def in_text(m: re.Match[str]) -> str:
        url = m.group(0)
        tail = ""
        while url and url[-1] in _TRAILING:
            url, tail = url[:-1], url[-1] + tail
        if url not in index:  # only links the HTML carries are counted
            return m.group(0)
        return slot(nonce, f"link{index[url]}") + tail

    return routed_html, _TEXT_URL.sub(in_text, text), tuple(links)
