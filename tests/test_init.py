"""`newsletter init`: a neutral site of one's own (no sample text, no survey, no schedule), or the sample."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter import config, site
from newsletter.site import Answers, BadAnswer
from tests.checks import seed_titles
from tests.conftest import SECRET
from tests.processes import Running
from tests.test_cli import free_port

REPO = Path(__file__).resolve().parent.parent
NEWSLETTER = [sys.executable, "-m", "newsletter"]
OPTIONS = ["--name", "Harbour Notes", "--from", "notes@harbour.example", "--url"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(COLUMNS="200", NEWSLETTER_SECRET_KEY=SECRET, **extra)
    return env


def newsletter(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NEWSLETTER, *args],
        cwd=cwd,
        env=cli_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def sample_phrases() -> list[str]:
    """Text that belongs to the China IP sample and to no neutral site."""
    sample = config.load(REPO / "config.toml", env={})
    assert sample.survey is not None
    w = sample.wording
    return [
        sample.list.name,
        sample.list.id,
        sample.list.timezone,
        sample.survey.key,
        sample.survey.question,
        *sample.survey.options,
        *sample.issue.sections,
        w.read_more,
        w.tagline,
        w.search_placeholder,
        *seed_titles(),
        "China",
        "patent",
        "Shanghai",
    ]


def sample_text_in(text: str, *, shown: bool = False) -> list[str]:
    """The sample's phrases in `text`; in text `shown` to people (a page, a message), also its
    noun for an item ("3 reports"), a word that a stylesheet's comment may use for another thing."""
    lowered = text.lower()
    found = [p for p in sample_phrases() if p.lower() in lowered]
    return found + (re.findall(r"\breports?\b", text, re.I) if shown else [])


def make_neutral(tmp_path: Path, url: str = "http://127.0.0.1:8000") -> Path:
    made = newsletter(tmp_path, "init", "mysite", *OPTIONS, url)
    assert made.returncode == 0, made.stderr
    return tmp_path / "mysite"


def test_a_neutral_site_holds_no_text_of_the_sample(tmp_path: Path) -> None:
    folder = make_neutral(tmp_path)
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert "config.toml" in names
    assert "subscribers/members.csv" in names
    assert "templates/email/issue.html" in names
    assert not any(n.startswith("examples") or n.endswith("example.csv") for n in names)
    for path in folder.rglob("*"):
        if path.is_file():
            # Every file, the favicon's bytes too: no sample words hide in any of them.
            text = path.read_bytes().decode("utf-8", errors="replace")
            assert not sample_text_in(text), f"{path}: {sample_text_in(text)}"

    s = config.load(folder / "config.toml", env={})
    assert s.survey is None
    assert s.schedule == {}
    assert s.list.name == "Harbour Notes"
    assert s.list.from_address == "notes@harbour.example"
    assert s.list.id == "harbour-notes.harbour.example"
    assert (s.web.host, s.web.port) == ("127.0.0.1", 8000)  # the URL is this machine's
    assert (s.smtp.host, s.smtp.port) == ("127.0.0.1", 8025)  # the bundled sink


def test_what_a_neutral_site_shows_and_sends_is_neutral(tmp_path: Path) -> None:
    folder = make_neutral(tmp_path)
    (folder / "subscribers" / "members.csv").write_text(
        "email,name\nada@harbour.example,Ada\n", encoding="utf-8"
    )
    posts = folder / "posts"
    posts.mkdir()
    (posts / "tide.md").write_text(
        "---\ntitle: The tide tables are out\nurl: https://harbour.example/tide\n---\n"
        "Read [the tables](https://harbour.example/t).\n",
        encoding="utf-8",
    )
    for args in (
        ("subscribers", "import", "subscribers/members.csv"),
        ("items", "import", "posts"),
    ):
        done = newsletter(folder, *args)
        assert done.returncode == 0, done.stderr
    preview = newsletter(folder, "issue", "preview")
    assert preview.returncode == 0, preview.stderr
    for path in (folder / "var" / "preview").iterdir():
        text = path.read_text(encoding="utf-8")
        assert not sample_text_in(text, shown=True), f"{path.name}: {sample_text_in(text)}"
        if path.suffix == ".txt":
            assert "1 article" in text
            assert "Read more: https://harbour.example/tide" in text

    s = config.load(folder / "config.toml", env={})
    env = site.environment(s.site_dir, wording=s.wording)
    for page in ("home", "search", "subscribe", "archive"):
        html = env.get_template(f"web/{page}.html").render(
            list_name=s.list.name, base="", q="", hits=[], issues=[], error="", email="", name=""
        )
        assert not sample_text_in(html, shown=True), f"{page}: {sample_text_in(html)}"
    assert 'placeholder="A word or a phrase"' in env.get_template("web/search.html").render(
        list_name="x", base="", q="", hits=[]
    )


def uncomment(text: str, table: str) -> str:
    """Remove the "#" from a commented-out table and its key lines, as the comment says."""
    lines = text.splitlines(keepends=True)
    start = lines.index(f"#[{table}]\n")
    end = start + 1
    while end < len(lines) and re.match(r"#\w+ = ", lines[end]):
        end += 1
    return "".join(lines[:start] + [line[1:] for line in lines[start:end]] + lines[end:])


def keys(table: dict[str, Any], where: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in table.items():
        dotted = f"{where}.{key}" if where else key
        out |= keys(value, dotted) if isinstance(value, dict) else {dotted}
    return out


def test_the_neutral_config_has_every_key_of_the_sample_with_its_comment(tmp_path: Path) -> None:
    text = site.neutral_config(Answers("Notes", "n@example.org", "https://notes.example.org"))
    for i, line in enumerate(lines := text.splitlines()):
        if "=" in line and not line.startswith(("#", " ", "[", "]")):
            assert lines[i - 1].startswith("#"), f"line {i + 1} has no comment: {line}"
    full = uncomment(uncomment(text, "survey"), "schedule.weekly")
    sample = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))
    # The sample's list name and subject in Chinese are its own; a new site starts with none.
    own = {k for k in keys(sample) if k.startswith("list.translations.")}
    assert keys(tomllib.loads(full)) == keys(sample) - own
    path = tmp_path / "config.toml"
    path.write_text(full, encoding="utf-8")
    s = config.load(path, env={})
    assert s.survey is not None
    assert list(s.schedule) == ["weekly"]
    # Behind a proxy (a public host), serve listens where the proxy expects it.
    assert (s.web.host, s.web.port) == ("127.0.0.1", 8000)


# --- bad answers: named by option, nothing written -------------------------------------------

not_an_address = st.one_of(
    st.text(st.characters(blacklist_characters="@"), max_size=30),
    st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=8), st.just("")),
    st.builds(lambda a: f"{a} x@example.org", st.text(min_size=1, max_size=8)),
)
not_a_url = st.one_of(
    st.text(max_size=30).filter(lambda u: not u.strip().startswith(("http://", "https://"))),
    st.sampled_from(["http://", "https://", "ftp://example.org", "example.org"]),
)
not_a_name = st.one_of(
    st.just(""),
    st.text(st.sampled_from(" \t"), max_size=5),
    st.builds(
        lambda a, b, sep: a + sep + b,
        st.text(max_size=10),
        st.text(max_size=10),
        st.sampled_from(["\n", "\r", "\x00"]),
    ),
    st.text(min_size=201, max_size=300).filter(lambda n: len(" ".join(n.split())) > 200),
)
not_a_relay = st.one_of(
    st.text(st.characters(blacklist_characters=":"), max_size=20),
    st.builds(lambda h, p: f"{h}:{p}", st.just("smtp.example.org"),
              st.one_of(st.integers(-5, 0).map(str), st.integers(65536, 10**6).map(str),
                        st.text(st.characters(categories=["L"]), min_size=1, max_size=4))),
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    case=st.one_of(
        not_a_name.map(lambda v: ("--name", Answers(v, "n@example.org", "https://n.example.org"))),
        not_an_address.map(lambda v: ("--from", Answers("N", v, "https://n.example.org"))),
        not_a_url.map(lambda v: ("--url", Answers("N", "n@example.org", v))),
        not_a_relay.map(
            lambda v: ("--relay", Answers("N", "n@example.org", "https://n.example.org", v))
        ),
    )
)
def test_a_bad_answer_is_named_by_its_option_and_nothing_is_written(
    case: tuple[str, Answers], tmp_path_factory: pytest.TempPathFactory
) -> None:
    option, answers = case
    target = tmp_path_factory.mktemp("site") / "new"
    with pytest.raises(BadAnswer) as caught:
        site.scaffold_neutral(target, answers)
    assert caught.value.option == option
    assert "\n" not in caught.value.problem
    assert not target.exists()


def test_init_without_a_terminal_needs_every_answer_and_writes_nothing(tmp_path: Path) -> None:
    done = newsletter(tmp_path, "init", "mysite", "--name", "N", "--from", "n@example.org")
    assert done.returncode == 2
    assert "missing --url" in done.stderr
    assert "not a terminal" in done.stderr
    assert not (tmp_path / "mysite").exists()
    bad = newsletter(tmp_path, "init", "mysite", *OPTIONS[:3], "nobody", "--url", "https://n.org")
    assert bad.returncode == 2
    assert "--from" in bad.stderr
    assert "'nobody'" in bad.stderr
    assert not (tmp_path / "mysite").exists()


def test_init_asks_on_a_terminal(tmp_path: Path) -> None:
    primary, secondary = os.openpty()
    proc = subprocess.Popen(
        [*NEWSLETTER, "init", "asked"],
        cwd=tmp_path,
        env=cli_env(),
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    for prompt, answer in (
        (b"name", b"Asked News\n"),
        (b"From address", b"asked@example.org\n"),
        (b"public URL", b"https://asked.example.org\n"),
    ):
        while prompt not in seen:
            chunk = os.read(primary, 1024)
            assert chunk, seen
            seen += chunk
        os.write(primary, answer)
    assert proc.wait(timeout=60) == 0
    os.close(primary)
    s = config.load(tmp_path / "asked" / "config.toml", env={})
    assert (s.list.name, s.list.from_address) == ("Asked News", "asked@example.org")
    assert s.list.base_url == "https://asked.example.org"


def test_init_sample_copies_the_demo_site(tmp_path: Path) -> None:
    done = newsletter(tmp_path, "init", "demo", "--sample")
    assert done.returncode == 0, done.stderr
    s = config.load(tmp_path / "demo" / "config.toml", env={})
    assert s.survey is not None
    assert "weekly" in s.schedule
    assert (tmp_path / "demo" / "examples" / "seed-feed.xml").is_file()
    both = newsletter(tmp_path, "init", "other", "--sample", "--name", "X")
    assert both.returncode == 2
    assert "--sample" in both.stderr


# --- serve: nothing scheduled until a schedule is uncommented; a busy port ------------------


def serve(folder: Path, *args: str) -> Running:
    return Running([*NEWSLETTER, "serve", "--port", "0", *args], cwd=folder, env=cli_env())


@pytest.mark.slow
def test_a_neutral_site_schedules_nothing_until_a_schedule_is_uncommented(tmp_path: Path) -> None:
    folder = make_neutral(tmp_path)
    with serve(folder) as running:
        running.wait_for(r"Application startup complete")
        assert "schedules: none" in running.output
        assert running.stop() == -signal.SIGTERM  # as a shell shows it: 143
    assert "scheduler:" not in running.output  # no election, no job

    path = folder / "config.toml"
    path.write_text(uncomment(path.read_text(encoding="utf-8"), "schedule.weekly"))
    with serve(folder) as running:
        running.wait_for(r"schedules: weekly \(0 8 \* \* mon, UTC\)")
        running.wait_for(r"scheduler: leader")
        running.wait_for(r"schedule:weekly: next run 20\d\d-")
        running.stop()


def test_serve_and_the_sink_on_a_busy_port_fail_in_one_line_before_listening(
    tmp_path: Path,
) -> None:
    folder = make_neutral(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        for command in (["serve", "--port", port], ["smtp-sink", "--port", port]):
            done = newsletter(folder, *command)
            assert done.returncode == 1, done
            assert done.stdout == ""  # never "serving on" / "SMTP sink on"
            assert done.stderr == f"error: cannot listen on 127.0.0.1:{port}: " + (
                "Address already in use (another `newsletter serve`? use --port or web.port)\n"
                if command[0] == "serve"
                else "Address already in use\n"
            )
    assert free_port()  # the port's socket is closed again
