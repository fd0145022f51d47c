"""Front matter: any text gives a front matter or a ValueError naming a line; bombs stay small."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from newsletter.content import frontmatter
from newsletter.content.frontmatter import FRONT_MATTER_LIMIT, MAX_DEPTH

# Sixteen levels of nine aliases each: 9**16 strings once expanded, from 300 bytes of YAML.
ALIAS_BOMB = "---\n" + 'a0: &a0 ["lol"]\n'
ALIAS_BOMB += (
    "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 17))
    + "title: *a16\n---\nbody\n"
)

yaml_bits = st.sampled_from(
    ["title: ", "date: ", "x", "'", '"', ":", "- ", "[", "]", "{", "}", "&a ", "*a", "!!str ",
     "#", "|", ">", "\n", "  ", "\t", "2017-13-45", "---", "...", "%", "@", "\x00", "\ufeff",
     "é", "中"]
)  # fmt: skip


@settings(max_examples=2000)
@example(text="---\ndate: 2017-13-45\ntitle: x\n---\n")
@example(text=ALIAS_BOMB)
@example(text="---\ntitle: [[[[[[[[[[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]]]]]]]]\n---\n")
@example(text="---\ntitle: a\ntitle: b\n---\n")
@given(text=st.lists(yaml_bits, max_size=30).map(lambda bits: "---\n" + "".join(bits)))
def test_any_text_is_front_matter_or_an_error_naming_a_line(text: str) -> None:
    message = refusal(text)
    if message is not None:
        assert message.startswith("line ")
        assert "\n" not in message
        line = int(message.split()[1].rstrip(":,"))
        assert 1 <= line <= text.count("\n") + 1


def refusal(text: str) -> str | None:
    """Why the front matter, its title or its date is refused; None when all three are read."""
    try:
        fm = frontmatter.split(text)
        fm.text("title")
        frontmatter.published(fm)
    except ValueError as exc:
        return str(exc)
    return None


@settings(max_examples=200)
@example(month=13, day=45)
@given(month=st.integers(0, 99), day=st.integers(0, 99))
def test_impossible_dates_are_named(month: int, day: int) -> None:
    fm = frontmatter.split(f"---\ntitle: t\ndate: 2017-{month:02}-{day:02}\n---\n")
    when = published_or_refusal(fm)
    if isinstance(when, ValueError):
        assert str(when).startswith(f"line 3, column 7: date '2017-{month:02}-{day:02}' is not a")
        return
    assert when is not None
    assert (when.month, when.day) == (month, day)


def published_or_refusal(fm: frontmatter.FrontMatter) -> dt.datetime | ValueError | None:
    """The item's date, or the error that refused it."""
    try:
        return frontmatter.published(fm)
    except ValueError as exc:
        return exc


def test_aliases_depth_and_size_are_refused_where_they_are() -> None:
    with pytest.raises(ValueError, match=r"^line 3, column 10: aliases \(\*name\) are not allowed"):
        frontmatter.split(ALIAS_BOMB)
    deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    # The table holding title is one level; the bracket that makes it MAX_DEPTH + 1 is named.
    with pytest.raises(ValueError, match=f"^line 2, column {MAX_DEPTH + 7}: nested deeper"):
        frontmatter.split(f"---\ntitle: {deep}\n---\n")
    with pytest.raises(ValueError, match="runs past 65,536 characters"):
        frontmatter.split("---\n" + "x" * FRONT_MATTER_LIMIT + "\n---\n")
    many = "".join(f"k{i}: x\n" for i in range(100))
    assert frontmatter.split(f"---\n{many}---\nbody").body == "body"


# --- the proof that a bomb is refused cheaply: peak memory of the import, in a child ---------

PEAK_LIMIT = 200 * 1024 * 1024


# The child reports its own peak (VmHWM) as it exits. Not ru_maxrss from wait4: Linux carries
# the parent's high-water mark over fork and exec into the child's, so after a long test run
# the child would "peak" at pytest's own size.
CHILD = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, (4 * 1024**3, 4 * 1024**3))  # a regression must fail
try:
    sys.argv = ["newsletter", *sys.argv[2:]]
    runpy.run_module("newsletter", run_name="__main__")
finally:
    with open("/proc/self/status") as status, open(sys.argv_peak, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")))
"""


def import_in_child(site: Path, folder: Path) -> tuple[int, int, str]:
    """`newsletter items import FOLDER` in a child process: exit code, peak RSS bytes, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    peak_file = folder.parent / "peak.txt"
    code = CHILD.replace("sys.argv_peak", repr(str(peak_file)))
    child = subprocess.run(
        [sys.executable, "-c", code, "-", "items", "import", str(folder)],
        cwd=site,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
        check=False,
    )
    kilobytes = int(peak_file.read_text().split()[1])  # "VmHWM:   96000 kB"
    return child.returncode, kilobytes * 1024, child.stderr.decode()


@pytest.mark.parametrize("limits", ["default", "raised"])
def test_bombs_are_refused_in_little_memory(site: Path, tmp_path: Path, limits: str) -> None:
    if limits == "raised":
        # With items up to 10 MB allowed, the 10 MB file is read and its front matter refused.
        config = site / "config.toml"
        text = config.read_text().replace("size_limit = 102400", "size_limit = 10485760")
        config.write_text(text.replace("size_limit = 65536", "size_limit = 10485760"))
    folder = tmp_path / "posts"
    folder.mkdir()
    (folder / "bomb.md").write_text(ALIAS_BOMB)
    # Just under 10 MB: under the raised items.size_limit, and not closed within 64 KB.
    (folder / "huge.md").write_text(
        "---\n" + "x: yyyyyyyyy\n" * ((10 * 2**20 - 16) // 13) + "---\n"
    )
    (folder / "good.md").write_text("---\ntitle: Still imported\n---\nBody.\n")
    code, peak, stderr = import_in_child(site, folder)
    assert code == 1, stderr
    assert peak < PEAK_LIMIT, f"peak RSS {peak / 2**20:.0f} MB"
    lines = stderr.splitlines()
    assert any("bomb.md: line 3, column 10: aliases" in line for line in lines)
    huge = "runs past 65,536 characters" if limits == "raised" else "over the 65,536-byte limit"
    assert any("huge.md" in line and huge in line for line in lines), stderr
    assert "Traceback" not in stderr
