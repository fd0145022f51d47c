"""The command line as a user meets it: a subprocess in a site folder."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.checks import check_message, parse, seed_titles

REPO = Path(__file__).resolve().parent.parent


def run(
    site: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    base["COLUMNS"] = "200"
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        cwd=site,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def use_port(site: Path, port: int) -> None:
    path = site / "config.toml"
    path.write_text(path.read_text().replace("port = 8025", f"port = {port}"))


def test_demo_delivers_once_per_active_member_then_nothing(site: Path) -> None:
    use_port(site, free_port())
    first = run(site, "demo", env={"COLUMNS": ""})  # as under cron: no terminal, no width
    assert first.returncode == 0, first.stderr
    outbox = site / "var" / "outbox"
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == 5
    messages: dict[str, EmailMessage] = {}
    links: set[str] = set()
    variants: dict[str, tuple[str, tuple[str, ...]]] = {}
    for path in files:
        data = path.read_bytes()
        body = data.split(b"\r\n", 2)[2]  # after the sink's Return-Path and Delivered-To lines
        msg, text, html, vote_links = check_message(body)
        for title in seed_titles():
            assert title in text
        links.update(vote_links)
        address = msg["To"].addresses[0].addr_spec
        messages[address] = msg
        language = re.search(r'<html lang="([^"]+)"', html)
        assert language is not None
        heads = tuple(line for line in text.splitlines() if line.startswith("== "))
        variants[address] = (language.group(1), heads)
    # The example members chose differently: their copies differ (subscribers/example.csv).
    assert len(set(variants.values())) >= 2
    assert variants["chen.jie@example.org"][0] == "zh-Hans"
    assert variants["john.smith@example.org"][0] == "en"
    assert "== People watch ==" not in variants["li.wei@example.org"][1]
    assert "== People watch ==" in variants["john.smith@example.org"][1]
    assert "former.member@example.org" not in messages
    assert len(messages) == 5
    assert len(links) == 15
    assert "delivered: 5, failed: 0" in first.stdout
    assert "var/outbox" in first.stdout
    assert "var/preview/issue-1.html" in first.stdout
    # No line is broken at Rich's default 80 columns.
    preview_line = next(line for line in first.stdout.splitlines() if "preview:" in line)
    assert preview_line.endswith("issue-1.txt")
    assert len(preview_line) > 80
    assert (site / "var" / "preview" / "issue-1.html").is_file()

    second = run(site, "demo")
    assert second.returncode == 0, second.stderr
    assert "nothing to send" in second.stdout
    assert sorted(outbox.glob("*.eml")) == files


def test_unknown_config_key_is_one_line_and_nonzero(site: Path) -> None:
    path = site / "config.toml"
    path.write_text(path.read_text().replace("[smtp]\n", "[smtp]\nhots = 'typo'\n"))
    result = run(site, "send", env={"NEWSLETTER_SECRET_KEY": "x" * 32})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "smtp.hots" in lines[0]
    assert "unknown key" in lines[0]


def test_missing_secret_names_the_variable_and_stores_nothing(site: Path) -> None:
    assert run(site, "items", "import", "examples/seed-feed.xml").returncode == 0
    result = run(site, "send")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "NEWSLETTER_SECRET_KEY" in result.stderr
    listed = run(site, "items", "list", "--new")
    assert listed.stdout.count("Comprehensive Reports") == 8  # still new: nothing was claimed


def test_subscribers_import_reports_rows(site: Path) -> None:
    csv = site / "subscribers" / "bad.csv"
    csv.write_text("email,name\nok@example.org,Ok\nnot-an-address,Bad\n")
    result = run(site, "subscribers", "import", "subscribers/bad.csv")
    assert result.returncode == 1
    assert "bad.csv:line 3:" in result.stderr
    assert "1 added" in result.stdout
    assert "1 rejected" in result.stdout


def test_preview_writes_files_and_sends_nothing(site: Path) -> None:
    run(site, "items", "import", "examples/seed-feed.xml")
    result = run(site, "issue", "preview")
    assert result.returncode == 0, result.stderr
    html = (site / "var" / "preview" / "next-issue.html").read_text()
    assert all(t.replace("'", "&#39;") in html or t in html for t in seed_titles())
    msg = parse((site / "var" / "preview" / "next-issue.eml").read_bytes())
    assert msg["Subject"]
    listed = run(site, "items", "list", "--new")
    assert listed.stdout.count("Comprehensive Reports") == 8


def test_help_everywhere() -> None:
    for args in (
        ["--help"],
        ["subscribers", "--help"],
        ["items", "import", "--help"],
        ["send", "--help"],
    ):
        result = run(REPO, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert "Usage" in result.stdout


def test_version_is_the_packages(tmp_path: Path) -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    result = run(tmp_path, "--version")  # no config.toml there: --version needs none
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"newsletter {project['version']}\n"


def test_smtp_sink_writes_each_message_to_the_outbox(site: Path) -> None:
    import smtplib
    import time

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "smtp-sink", "--port", str(port), "--outbox", "box"],
        cwd=site,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the sink did not start"
                assert proc.poll() is None, "the sink did not start"
                time.sleep(0.1)
        with client:
            client.sendmail(
                "a@example.org", ["b@example.org", "c@example.org"], b"Subject: hi\r\n\r\nbody\r\n"
            )
        files = sorted((site / "box").glob("*.eml"))
        assert len(files) == 2
        first = parse(files[0].read_bytes())
        assert first["Return-Path"] == "<a@example.org>"
        assert first["Subject"] == "hi"
        assert {parse(f.read_bytes())["Delivered-To"] for f in files} == {
            "b@example.org",
            "c@example.org",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_issue_commands(site: Path, smtp_server: object) -> None:
    from tests.smtpd import RecordingHandler

    assert isinstance(smtp_server, RecordingHandler)
    use_port(site, smtp_server.port)
    env = {"NEWSLETTER_SECRET_KEY": "k" * 32}
    run(site, "items", "import", "examples/seed-feed.xml", env=env)
    run(site, "subscribers", "import", "subscribers/example.csv", env=env)
    test = run(site, "issue", "test", "--to", "editor@example.org", env=env)
    assert test.returncode == 0, test.stderr
    (message,) = smtp_server.messages
    assert message.rcpt_to == "editor@example.org"
    assert message.parse()["Subject"].startswith("[TEST] ")
    assert "%" not in run(site, "issue", "list", env=env).stdout  # the test stored no issue
    sent = run(site, "send", env=env)
    assert sent.returncode == 0, sent.stderr
    assert len(smtp_server.messages) == 6
    listing = run(site, "issue", "list", env=env).stdout
    assert "sent" in listing
    assert "100%" in listing
    shown = run(site, "issue", "show", "1", env=env).stdout
    assert "issue #1 is sent: 5 of 5 sent" in shown
    assert "Xiaomi and Nokia" in shown
    status = run(site, "issue", "status", "1", env=env).stdout
    assert "5 of 5" in status
    assert "│ sent       │       5 │" in status
    cancel = run(site, "issue", "cancel", "1", env=env)
    assert cancel.returncode == 1
    assert cancel.stderr.startswith("error: ")


def test_preview_png_at_two_widths(site: Path) -> None:
    import struct

    if not Path("/usr/bin/chromium").is_file() and os.environ.get("CI") != "true":
        import pytest

        pytest.skip("Chromium is not installed")
    run(site, "items", "import", "examples/seed-feed.xml")
    result = run(site, "issue", "preview", "--png")
    assert result.returncode == 0, result.stderr
    widths = {}
    for width in (600, 375):
        png = (site / "var" / "preview" / f"next-issue-{width}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        widths[width] = struct.unpack(">II", png[16:24])
    assert widths[600][0] == 600
    assert widths[375][0] == 375
    assert widths[375][1] > widths[600][1]  # the narrow layout is taller
