"""Benchmark: hostile files against `newsletter items import` and `subscribers import`, each in a
child process, with wall time and peak RSS against a clean import measured in the same run; then
the refusal alone (the file read and refused, the package already imported), timed in a child.

Peak memory is given two ways. `ru_maxrss` from wait4 is what the issue asked for, but Linux
carries the parent's high-water mark over fork and exec into the child's (so no child reads
below the parent's size: the floor is printed); VmHWM, which the child reads from
/proc/self/status as it exits, is its own peak since exec.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
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


# Run as the child: the command (or the refusal alone), then the child's own peak (VmHWM).
CHILD = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a regression is stopped at 4 GB
out, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
code, seconds = 0, 0.0
try:
    if mode == "cli":
        import runpy
        sys.argv = ["newsletter", *args]
        runpy.run_module("newsletter", run_name="__main__")
    else:  # the refusal alone: read_source on a path with a size limit, nothing stored
        from newsletter.content.sources import read_source
        start = time.perf_counter()
        _, report = read_source(args[0], size_limit=int(args[1]))
        seconds = time.perf_counter() - start
        code = 1 if report.rejected else 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
finally:
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        json.dump({"code": code, "seconds": seconds, "hwm_kb": hwm}, f)
sys.exit(code)
"""


def child(cwd: Path, mode: str, args: list[str]) -> tuple[dict[str, float], float, float]:
    """The child's report (exit code, seconds of the refusal, VmHWM), its wall seconds and
    its ru_maxrss in MB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["PYTHONPATH"] = str(REPO)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, out.name, mode, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _, _, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        report = json.loads(Path(out.name).read_text())
    return report, wall, usage.ru_maxrss / 1024


def maxrss_floor() -> float:
    """What wait4 reports for a child that uses next to nothing: this process's size."""
    proc = subprocess.Popen(["/bin/true"])
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


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


REFUSALS = (  # (name, folder under the work directory, items.size_limit)
    ("clean Markdown file (baseline)", "a", 64 * 1024),
    ("YAML alias bomb", "b", 64 * 1024),
    ("10 MB front matter, default limit", "c", 64 * 1024),
    ("10 MB front matter, items up to 10 MB", "c", 10 * MB),
)
SECONDS_TARGET, MB_TARGET = 1.0, 200.0


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
        print("The command as users run it (each in a child process):")
        print(
            f"{'case':<34} {'exit':>4} {'seconds':>8} {'VmHWM MB':>9} {'x baseline':>10} "
            f"{'ru_maxrss':>9}"
        )
        base_rss = 0.0
        for name, site, words, make in cases(work):
            report, wall, maxrss = child(work / site, "cli", [*words, str(make())])
            rss = report["hwm_kb"] / 1024
            base_rss = base_rss or rss
            print(
                f"{name:<34} {report['code']:>4} {wall:>8.2f} {rss:>9.0f} "
                f"{rss / base_rss:>10.2f} {maxrss:>9.0f}"
            )
        floor = maxrss_floor()  # now: making the files has grown this process
        print(f"(ru_maxrss from wait4 cannot read below this process's {floor:.0f} MB)")
        print()
        print(
            "The refusal alone: read_source on the folder in a child, the package imported; "
            f"targets < {SECONDS_TARGET:g} s and < {MB_TARGET:g} MB:"
        )
        print(f"{'case':<38} {'refused':>7} {'seconds':>8} {'VmHWM MB':>9} {'ru_maxrss':>9}  met")
        for name, folder, limit in REFUSALS:
            report, _, maxrss = child(work, "read", [str(work / folder), str(limit)])
            rss = report["hwm_kb"] / 1024
            met = report["seconds"] < SECONDS_TARGET and max(rss, maxrss) < MB_TARGET
            print(
                f"{name:<38} {'yes' if report['code'] else 'no':>7} {report['seconds']:>8.3f} "
                f"{rss:>9.0f} {maxrss:>9.0f}  {'yes' if met else 'NO'}"
            )
        print(f"(ru_maxrss from wait4 cannot read below this process's {maxrss_floor():.0f} MB)")
    print()
    print("Markdown rendering of unmatched brackets (in this process):")
    markdown_renderers()


if __name__ == "__main__":
    main()
