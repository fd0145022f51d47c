"""The demo issue as mail clients show it: fluid without <style>, 600 px as before, light and dark.

Each case writes a screenshot to the test's temporary directory, or, with NEWSLETTER_SCREENSHOTS
set to a folder (`make screenshots` sets docs/screenshots/), there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import lxml.html  # type: ignore[import-untyped]
import pytest
from playwright.sync_api import Browser, Page

from newsletter.content import compiler
from tests.browser import browser  # noqa: F401
from tests.checks import seed_titles
from tests.demo import BOARD_SECTION, POSTAL, demo_compiled, demo_settings, mailed_html

Scheme = Literal["light", "dark"]


@pytest.fixture(scope="module")
def demo_html() -> str:
    settings = demo_settings()
    return mailed_html(settings, demo_compiled(settings))


def without_style(html: str) -> str:
    """As Gmail's app shows mail of other accounts: every <style> block dropped."""
    stripped = re.sub(r"<style[^>]*>.*?</style>", "", html, flags=re.S | re.I)
    assert "<style" not in stripped
    return stripped


def render(browser: Browser, html: str, width: int, scheme: Scheme) -> Page:  # noqa: F811
    context = browser.new_context(
        viewport={"width": width, "height": 900}, color_scheme=scheme, java_script_enabled=True
    )
    page = context.new_page()
    # A message fetches nothing here: its images and fonts (none in the demo) stay out.
    page.route("**/*", lambda route: route.abort())
    page.set_content(html, wait_until="load")
    return page


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("NEWSLETTER_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


SCROLL = "() => [document.documentElement.scrollWidth, window.innerWidth]"
CONTAINER = """() => {
  const box = document.querySelector('table.container').getBoundingClientRect();
  return [box.left, box.width, window.innerWidth];
}"""
BACKGROUND = "() => getComputedStyle(document.querySelector('table.container')).backgroundColor"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_demo_issue_holds_at_375_px_without_style_and_at_600_as_before(
    browser: Browser,  # noqa: F811
    demo_html: str,
    scheme: Scheme,
    tmp_path: Path,
) -> None:
    from tests.browser import _handoff

    assert BOARD_SECTION in demo_html  # the widest parts of an issue are all there
    shots = shots_dir(tmp_path)
    _handoff.resume()
    pages: list[Page] = []
    try:
        # A phone, in a client that drops <style>: nothing may be wider than the screen.
        phone = render(browser, without_style(demo_html), 375, scheme)
        pages.append(phone)
        scroll_width, inner_width = phone.evaluate(SCROLL)
        assert scroll_width <= inner_width, f"375 px without <style>: {scroll_width} px wide"
        phone.screenshot(path=str(shots / f"email-issue-375-no-style-{scheme}.png"), full_page=True)

        # The same phone in a client that keeps <style> (the narrow-screen rules apply).
        styled = render(browser, demo_html, 375, scheme)
        pages.append(styled)
        scroll_width, inner_width = styled.evaluate(SCROLL)
        assert scroll_width <= inner_width
        styled.screenshot(path=str(shots / f"email-issue-375-{scheme}.png"), full_page=True)

        # A desktop client's 600 px column: the container fills it, as the fixed table did.
        desk = render(browser, demo_html, 600, scheme)
        pages.append(desk)
        left, width, inner = desk.evaluate(CONTAINER)
        assert (left, width) == (0, 600)
        scroll_width, inner_width = desk.evaluate(SCROLL)
        assert scroll_width <= inner_width
        desk.screenshot(path=str(shots / f"email-issue-600-{scheme}.png"), full_page=True)

        # Wider than that it stays 600 px, centred.
        wide = render(browser, without_style(demo_html), 900, scheme)
        pages.append(wide)
        left, width, inner = wide.evaluate(CONTAINER)
        assert width == 600
        assert left == (inner - 600) / 2

        # Dark mode: the clients that keep <style> get dark colours, the others the light ones.
        dark_bg = "rgb(28, 33, 40)"
        assert (desk.evaluate(BACKGROUND) == dark_bg) == (scheme == "dark")
        assert phone.evaluate(BACKGROUND) == "rgb(255, 255, 255)"
    finally:
        for page in pages:
            page.context.close()
        _handoff.release()


def test_outlook_gets_a_fixed_table_and_buttons_that_keep_their_shape(demo_html: str) -> None:
    # Outlook for Windows ignores max-width: a 600 px table only it reads.
    assert re.search(r"<!--\[if mso\]><table[^>]* width=\"600\"", demo_html)
    assert "<![endif]-->" in demo_html
    tree = lxml.html.fromstring(demo_html)
    (container,) = tree.cssselect("table.container")
    assert container.get("width") == "100%"
    assert "max-width:600px" in container.get("style", "").replace(" ", "")
    links = [a for a in tree.cssselect("a") if "/preview/vote/" in a.get("href", "")]
    assert len(links) == 3
    for link in links:
        # Padding and border on the cell (Outlook drops them on a link), colour as bgcolor too.
        cell = link.getparent()
        assert cell.tag == "td"
        style = cell.get("style", "").replace(" ", "")
        assert "padding:" in style
        assert "border:1px" in style
        assert cell.get("bgcolor")
    head = tree.find("head")
    assert head is not None
    metas = {m.get("name"): m.get("content") for m in head.iter("meta")}
    assert metas["color-scheme"] == "light dark"
    assert "prefers-color-scheme: dark" in demo_html


def test_the_preheader_is_the_drafts_or_the_first_titles() -> None:
    settings = demo_settings()
    titles = seed_titles()

    def preheader(html: str) -> str:
        (div,) = lxml.html.fromstring(html).cssselect("div.preheader")
        assert "display:none" in div.get("style", "").replace(" ", "")
        return str(div.text_content()).strip()

    default = preheader(mailed_html(settings, demo_compiled(settings)))
    assert default.startswith(titles[0])
    assert len(default) <= compiler.PREHEADER_LENGTH
    chosen = "Xiaomi and Nokia sign a patent deal; pledge loans in focus"
    assert preheader(mailed_html(settings, demo_compiled(settings, chosen))) == chosen


def test_the_postal_address_is_in_the_footer_when_set(demo_html: str) -> None:
    assert POSTAL not in demo_html
    settings = demo_settings(postal_address=POSTAL)
    compiled = demo_compiled(settings)
    assert POSTAL in mailed_html(settings, compiled)
    assert POSTAL in compiled.text
