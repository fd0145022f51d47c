"""Write an issue's HTML and text to files, filled for a sample reader, without sending anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.config import Settings
from newsletter.issue import Compiled
from newsletter.personalize import Personalizer, Recipient

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
