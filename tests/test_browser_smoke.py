"""Smoke test of the browser fixtures: a tiny app served live, driven in headless Chromium."""

from __future__ import annotations

import asyncio
import html
import struct
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Form
from fastapi.responses import HTMLResponse, Response
from playwright.sync_api import Browser, Page

from tests.browser import live_server

CSP = "default-src 'none'; style-src 'self'; script-src 'self'; form-action 'self'"

FORM_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Subscribe</title></head>
<body>
  <h1>Subscribe to the digest</h1>
  <form method="post" action="/submit">
    <label>Name <input name="name" required></label>
    <input type="hidden" name="js" id="js" value="off">
    <button type="submit">Send</button>
  </form>
  <p id="status">script: off</p>
  <script>
    document.getElementById("js").value = "on";
    document.getElementById("status").textContent = "script: on";
  </script>
</body>
</html>
"""

# Same-origin script and style only; the inline script must be refused.
CSP_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8"><title>Strict</title>
  <link rel="stylesheet" href="/static/app.css">
  <script src="/static/app.js"></script>
</head>
<body>
  <p id="external">external: off</p>
  <p id="inline">inline: off</p>
  <form method="post" action="/submit">
    <input name="name" value="">
    <button type="submit">Send</button>
  </form>
  <script>document.getElementById("inline").textContent = "inline: on";</script>
</body>
</html>
"""

APP_JS = """window.violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.violations.push(event.violatedDirective);
});
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("external").textContent = "external: on";
});
"""

APP_CSS = "#external { color: rgb(0, 128, 0); }\n"


def make_app(received: list[dict[str, str]], csp: str | None = None) -> FastAPI:
    headers = {"Content-Security-Policy": csp} if csp else None
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(CSP_PAGE if csp else FORM_PAGE, headers=headers)

    @app.post("/submit", response_class=HTMLResponse)
    def submit(name: Annotated[str, Form()], js: Annotated[str, Form()] = "absent") -> HTMLResponse:
        received.append({"name": name, "js": js})
        body = f'<!doctype html><title>Thanks</title><p id="result">Thanks, {html.escape(name)}</p>'
        return HTMLResponse(body, headers=headers)

    @app.get("/static/app.js")
    def app_js() -> Response:
        return Response(APP_JS, media_type="text/javascript")

    @app.get("/static/app.css")
    def app_css() -> Response:
        return Response(APP_CSS, media_type="text/css")

    return app


def test_form_submission_and_screenshot(page: Page, tmp_path: Path) -> None:
    received: list[dict[str, str]] = []
    with live_server(make_app(received)) as base:
        page.goto(f"{base}/")
        assert page.locator("#status").inner_text() == "script: on"
        page.fill("input[name=name]", "Ada <Lovelace>")
        with page.expect_navigation():
            page.click("button[type=submit]")
        assert page.url == f"{base}/submit"
        assert page.locator("#result").inner_text() == "Thanks, Ada <Lovelace>"
        shot = tmp_path / "thanks.png"
        page.screenshot(path=shot, full_page=True)

    assert received == [{"name": "Ada <Lovelace>", "js": "on"}]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1024
    assert struct.unpack(">II", data[16:24]) == (1000, 800)  # IHDR: width, height


def test_strict_csp_allows_same_origin_script_and_blocks_inline(page: Page) -> None:
    received: list[dict[str, str]] = []
    with live_server(make_app(received, csp=CSP)) as base:
        with page.expect_console_message(
            lambda message: message.type == "error" and "Content Security Policy" in message.text
        ) as refused:
            page.goto(f"{base}/")
        assert "inline script" in refused.value.text
        page.wait_for_function("window.violations && window.violations.length > 0")

        assert page.locator("#external").inner_text() == "external: on"
        assert page.locator("#inline").inner_text() == "inline: off"
        assert page.evaluate("window.violations") == ["script-src-elem"]
        color = page.eval_on_selector("#external", "el => getComputedStyle(el).color")
        assert color == "rgb(0, 128, 0)"

        # form-action 'self' lets the form post to its own origin.
        page.fill("input[name=name]", "Grace")
        with page.expect_navigation():
            page.click("button[type=submit]")
        assert page.locator("#result").inner_text() == "Thanks, Grace"

    assert received == [{"name": "Grace", "js": "absent"}]


def test_browser_leaves_no_event_loop_behind(browser: Browser) -> None:
    """Other tests call asyncio.run(): neither the session's Playwright nor the teardown of
    `page` (in the tests above, when the module runs) may leave a loop marked as running."""

    async def answer() -> int:
        return 42

    assert asyncio.run(answer()) == 42
