"""Benchmark: hostile files against `newsletter items import` and `subscribers import`, each in a
child process, with wall time and peak RSS against a clean import measured in the same run."""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from newsletter.content.sources import FETCH_LIMIT  # noqa: E402
from tests.test_front_matter import ALIAS_BOMB  # noqa: E402

MB = 1024 * 1024


def write_md(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder


def cases(work: Path) -> list[tuple[str, str, list[str], Callable[[], Path]]]:
    """(name, site, command words before the path, a function that makes the path)."""
    items, members = ["items", "import"], ["subscribers", "import"]
    huge_front = "---\n" + "x: yyyyyyyyy\n" * ((10 * MB - 16) // 13) + "---\n"

    def sparse_feed() -> Path:
        path = work / "huge.xml"
        with path.open("wb") as f:
            f.truncate(FETCH_LIMIT + 1)
        return path

    def long_field() -> Path:
        path = work / "members.csv"
        path.write_text("email,name\na@example.org," + "x" * 200_000 + "\nb@example.org,B\n")
        return path

    return [
        (
            "clean Markdown file (baseline)",
            "site",
            items,
            lambda: write_md(work / "a", "ok.md", GOOD),
        ),
        ("YAML alias bomb", "site", items, lambda: write_md(work / "b", "bomb.md", ALIAS_BOMB)),
        ("10 MB front matter", "site", items, lambda: write_md(work / "c", "huge.md", huge_front)),
        # items.size_limit at 10 MB: the file is read, and its front matter refused at 64 KB.
        ("the same, items up to 10 MB", "raised", items, lambda: work / "c"),
        ("60 KB of '[' as a body", "site", items, lambda: write_md(work / "d", "br.md", BRACKETS)),
        ("feed file of 10 MB + 1 byte", "site", items, sparse_feed),
        ("CSV field of 200,000 chars", "site", members, long_field),
    ]


GOOD = "---\ntitle: Fine\ndate: 2017-12-06\n---\nA body.\n"
BRACKETS = "---\ntitle: Brackets\n---\n" + "[" * 60_000 + "\n"


def run(site: Path, words: list[str], path: Path) -> tuple[int, float, float]:
    """Exit code, wall seconds and peak RSS (MB) of one import in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "newsletter", *words, str(path)],
        cwd=site,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A regression is stopped at 4 GB instead of taking the machine with it.
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)),
    )
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


def markdown_renderers() -> None:
    """markdown-it-py (what items use) against Python-Markdown, if installed, on '[' runs."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    python_markdown: Any
    try:  # not a dependency: compared only where someone has it installed
        python_markdown = importlib.import_module("markdown")
    except ImportError:
        python_markdown = None
    for n in (2_000, 8_000, 60_000):
        body = "[" * n
        t0 = time.perf_counter()
        md.render(body)
        line = f"  {n:>6} '[': markdown-it-py {time.perf_counter() - t0:7.3f} s"
        if python_markdown is not None and n <= 8_000:
            t0 = time.perf_counter()
            python_markdown.markdown(body, extensions=["extra"])
            line += f", Python-Markdown {time.perf_counter() - t0:7.3f} s"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("site", "raised"):
            (work / name).mkdir()
            shutil.copy(REPO / "config.toml", work / name / "config.toml")
        raised = work / "raised" / "config.toml"
        text = raised.read_text().replace("size_limit = 102400", "size_limit = 10485760")
        raised.write_text(text.replace("size_limit = 65536", "size_limit = 10485760"))
        print(f"{'case':<34} {'exit':>4} {'seconds':>8} {'peak MB':>8} {'x baseline':>10}")
        base_rss = 0.0
        for name, site, words, make in cases(work):
            code, seconds, rss = run(work / site, words, make())
            base_rss = base_rss or rss
            print(f"{name:<34} {code:>4} {seconds:>8.2f} {rss:>8.0f} {rss / base_rss:>10.2f}")
    print("Markdown rendering of unmatched brackets (in this process):")
    markdown_renderers()


if __name__ == "__main__":
    main()
