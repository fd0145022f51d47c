"""Write an issue's HTML and text to files, filled for a sample reader, without sending anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.config import Settings
from newsletter.content.compiler import Compiled
from newsletter.content.personalize import Personalizer
from newsletter.storage.ledger import Recipient

SAMPLE = Recipient(member_id=0, email="reader@example.org", name="")


@dataclass(frozen=True, slots=True)
class PreviewFiles:
    html: Path
    text: Path
    eml: Path


def write_preview(
    compiled: Compiled, settings: Settings, folder: Path, issue_id: int = 0
) -> PreviewFiles:
    """HTML and text of the issue as a sample reader sees them, plus the whole message as .eml.

    Links in a preview are inert placeholders under base_url/preview: no signing key is used,
    so nothing in a preview can vote or unsubscribe.
    """
    folder.mkdir(parents=True, exist_ok=True)
    personalizer = Personalizer(compiled, settings, None, issue_id)
    stem = f"issue-{issue_id}" if issue_id else "next-issue"
    files = PreviewFiles(folder / f"{stem}.html", folder / f"{stem}.txt", folder / f"{stem}.eml")
    files.html.write_text(
        personalizer.fill_text(compiled.html, SAMPLE, html_part=True), encoding="utf-8"
    )
    files.text.write_text(
        personalizer.fill_text(compiled.text, SAMPLE, html_part=False), encoding="utf-8"
    )
    files.eml.write_bytes(personalizer.message(SAMPLE)[1])
    return files


CHROMIUM_ENV = "NEWSLETTER_CHROMIUM"
WIDTHS = (600, 375)  # a desktop mail client's column, and a phone


def screenshots(html_file: Path, widths: tuple[int, ...] = WIDTHS) -> list[Path]:
    """Full-page PNGs of a preview in headless Chromium, one per width (issue-N-600.png …).

    Uses Playwright with the system's Chromium (NEWSLETTER_CHROMIUM, else /usr/bin/chromium);
    Playwright's own browser download is not needed.
    """
    import os

    from newsletter.errors import NewsletterError

    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise NewsletterError("--png needs Playwright: pip install playwright") from None
    chromium = Path(os.environ.get(CHROMIUM_ENV, "/usr/bin/chromium"))
    if not chromium.is_file():
        raise NewsletterError(
            f"--png needs Chromium at {chromium} (apt-get install chromium, or set {CHROMIUM_ENV})"
        )
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]  # fmt: skip
    written: list[Path] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(chromium), headless=True, args=args
            )
            try:
                for width in widths:
                    page = browser.new_page(viewport={"width": width, "height": 800})
                    # A preview must not fetch anything: block every request but the file itself.
                    page.route(
                        "**/*",
                        lambda route: (
                            route.continue_()
                            if route.request.url.startswith("file:")
                            else route.abort()
                        ),
                    )
                    page.goto(html_file.resolve().as_uri())
                    target = html_file.with_name(f"{html_file.stem}-{width}.png")
                    page.screenshot(path=str(target), full_page=True)
                    page.close()
                    written.append(target)
            finally:
                browser.close()
    except PlaywrightError as exc:
        raise NewsletterError(f"Chromium could not render the preview: {exc}") from None
    return written
