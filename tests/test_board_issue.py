"""The board in the issue, on SQLite and PostgreSQL: "From the members' board" carries the threads
approved since the last issue (the most replied-to first), each member's message carries their
own board link, and a scanner fetching every link of an issue signs nobody in."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter.services import issues, moderation, sending
from newsletter.storage.models import AuditEntry, Issue
from tests import steps
from tests.boardsite import (
    CHEN,
    JOHN,
    LI,
    MARIA,
    WANG,
    Board,
    Reader,
    board_site,
    html_of,
    parse,
    text_of,
)
from tests.smtpd import RecordingHandler

__all__ = ["board_site"]

SECTION = "From the members' board"
LINK = re.compile(r'href="(http://127\.0\.0\.1:8000/[^"]+)"')


def approved(b: Board, reader: Reader, body: str, path: str = "/board") -> int:
    """Post `body` and approve it if it was held; its id."""
    assert reader.post(body, path).status_code == 303
    message = b.messages()[-1]
    if message.approved_at is None:
        b.run(moderation.approve, message.id)
    return message.id


def stored(b: Board, issue_id: int) -> Issue:
    with b.sessions() as s:
        found = s.get(Issue, issue_id)
        assert found is not None
        return found


def more_items(b: Board, folder: Path, n: int) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"extra{n}.md").write_text(f"---\ntitle: Extra {n}\n---\nBody {n}.\n")
    steps.import_source(b.sessions, str(folder))


@pytest.mark.board_config(digest_messages=2)
def test_the_next_issue_carries_the_threads_approved_since_the_last(
    board_site: Board, site: Path, tmp_path: Path
) -> None:
    b = board_site
    steps.import_source(b.sessions, str(site / "examples" / "seed-feed.xml"))
    li, wang, john, maria = (b.sign_in(e) for e in (LI, WANG, JOHN, MARIA))
    approved(b, li, "A quiet thread about customs seizures")
    busy = approved(b, wang, "A busy thread about **pledge loans**")
    approved(b, li, "First reply", f"/board/{busy}")
    approved(b, maria, "Second reply", f"/board/{busy}")
    approved(b, john, "A newer quiet thread")
    li.post("Hidden by an editor, so not in the issue")  # li is trusted: shown at once...
    b.run(moderation.hide, b.messages()[-1].id)  # ... and then hidden
    first = b.run(issues.release_next)
    issue = stored(b, first.issue_id)
    # The thread's link is one of the issue's own, so it goes through /r/ (tracking.clicks):
    # a slot in both parts, its URL in the issue's link list.
    links = list(issue.links or ())
    thread_slot = f"XSLOT{issue.nonce}link{links.index(f'http://127.0.0.1:8000/board/{busy}')}"
    for part in (issue.html, issue.text):
        assert SECTION in part
        assert part.index("A busy thread about") < part.index("A newer quiet thread")
        assert "A quiet thread" not in part  # two at most (board.digest_messages)
        assert "Hidden by an editor" not in part
        assert "2 replies" in part
        assert thread_slot in part
    assert "<strong>" not in issue.html.split(SECTION)[1].split("</div>")[0]  # an excerpt: text

    b.clock.advance(hours=1)
    approved(b, john, "After the first issue")
    more_items(b, tmp_path / "more", 1)
    second = stored(b, b.run(issues.release_next).issue_id)
    assert "After the first issue" in second.html
    assert "A busy thread" not in second.html  # it went out in the first

    b.clock.advance(hours=1)
    more_items(b, tmp_path / "more", 2)
    third = stored(b, b.run(issues.release_next).issue_id)
    assert SECTION not in third.html  # nothing new on the board: no section
    assert SECTION not in third.text


@pytest.mark.board_config(digest_messages=0)
def test_the_section_is_off_by_config(board_site: Board, site: Path) -> None:
    b = board_site
    steps.import_source(b.sessions, str(site / "examples" / "seed-feed.xml"))
    approved(b, b.sign_in(LI), "Not for the issue")
    issue = stored(b, b.run(issues.release_next).issue_id)
    assert SECTION not in issue.html
    assert "Not for the issue" not in issue.html


@pytest.mark.board_config(read="members")
def test_a_members_only_board_stays_out_of_the_public_archive(
    board_site: Board, site: Path
) -> None:
    b = board_site
    steps.import_source(b.sessions, str(site / "examples" / "seed-feed.xml"))
    approved(b, b.sign_in(LI), "Members only, not in the archive")
    issue = stored(b, b.run(issues.release_next).issue_id)
    assert SECTION not in issue.html
    assert "Members only" not in issue.html


def deliver(b: Board, issue_id: int) -> None:
    def work() -> None:
        asyncio.run(sending.deliver(b.services, issue_id))

    with ThreadPoolExecutor(1) as pool:  # away from any loop the test client left behind
        pool.submit(work).result()


def test_every_issue_carries_each_members_own_board_link(
    board_site: Board, site: Path, smtp_server: RecordingHandler
) -> None:
    b = board_site
    steps.import_source(b.sessions, str(site / "examples" / "seed-feed.xml"))
    issue_id = b.run(issues.release_next).issue_id
    deliver(b, issue_id)
    boards: dict[str, str] = {}
    for rcpt, (received,) in smtp_server.by_recipient().items():
        msg = parse(received.data)
        found = [u for u in LINK.findall(html_of(msg)) if "/b/" in u]
        assert len(set(found)) == 1, rcpt
        assert found[0] in text_of(msg)
        boards[rcpt] = b.path(found[0])
    assert len(set(boards.values())) == len(boards) == 5
    public = b.reader().client.get(f"/archive/{issue_id}").text
    assert 'href="http://127.0.0.1:8000/board"' in public  # the archive's reader is nobody

    # Chen presses the button on the page her link opens: she is signed in.
    chen = b.reader()
    page = chen.client.get(boards[CHEN])
    assert page.status_code == 200
    assert '<button type="submit" class="primary">Sign in</button>' in page.text
    done = chen.client.post(boards[CHEN], data={"person": "1"}, follow_redirects=False)
    assert done.status_code == 303
    assert "member_session=" in done.headers["set-cookie"]
    assert "Signed in as <strong>陈杰</strong>" in chen.client.get("/board").text


@pytest.mark.board_config(held_posts=0)
def test_the_threads_links_are_counted_and_each_members_board_link_is_their_own(
    board_site: Board, site: Path, smtp_server: RecordingHandler
) -> None:
    """tracking.clicks routes the issue's own links through /r/: the board section's links to
    its threads are the issue's content like its items', so they are; a member's board link
    (/b/TOKEN) is a slot of its own, signed for that member, and is not; a URL a member
    wrote in a message is text in the digest, not a link of the issue."""
    b = board_site
    steps.import_source(b.sessions, str(site / "examples" / "seed-feed.xml"))
    written = "https://court.example/ruling/2026-88"
    thread = approved(b, b.sign_in(WANG), f"The ruling is at {written} for anyone curious")
    issue_id = b.run(issues.release_next).issue_id
    issue = stored(b, issue_id)
    links = list(issue.links or ())
    assert f"http://127.0.0.1:8000/board/{thread}" in links
    assert not any("/b/" in url or url.endswith("/board") for url in links)
    assert written not in links
    assert f'href="{written}"' not in issue.html
    deliver(b, issue_id)
    for rcpt, (received,) in smtp_server.by_recipient().items():
        msg = parse(received.data)
        html, text = html_of(msg), text_of(msg)
        section = html.split(SECTION, 1)[1].split("Sign in to the board to reply", 1)[0]
        hrefs = LINK.findall(section)
        assert [b.path(u).split("/")[1] for u in hrefs] == ["r", "b"], rcpt
        thread_link, own = (b.path(u) for u in hrefs)
        # The thread's link redirects to the thread; the board link is the member's own,
        # straight to the sign-in button (the same in the footer and the text part).
        answer = b.reader().client.get(thread_link, follow_redirects=False)
        assert answer.status_code == 302
        assert answer.headers["location"] == f"http://127.0.0.1:8000/board/{thread}"
        assert html.count(f"http://127.0.0.1:8000{own}") == 2
        assert own in text
        assert written in text
        assert f'href="{written}"' not in html


def sign_ins(b: Board) -> int:
    with b.sessions() as s:
        return int(
            s.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "sign-in")
            )
            or 0
        )


def test_a_scanner_fetching_every_link_signs_nobody_in(
    board_site: Board, site: Path, smtp_server: RecordingHandler
) -> None:
    b = board_site
    steps.import_source(b.sessions, str(site / "examples" / "seed-feed.xml"))
    deliver(b, b.run(issues.release_next).issue_id)
    signin_mail = b.signin_link(LI)
    scanner = b.reader()
    every = [signin_mail]
    for received in smtp_server.messages:
        every += [b.path(u) for u in LINK.findall(html_of(parse(received.data)))]
    assert sum("/b/" in u for u in every) == 5
    for path in every:  # HEAD then GET of every link, as a mail scanner does
        for method in ("HEAD", "GET"):
            answer = scanner.client.request(method, path, follow_redirects=False)
            # An issue's own links (/r/) redirect to what they carry; every other page shows.
            expected = (302,) if path.startswith("/r/") else (200, 204)
            assert answer.status_code in expected, (method, path)
            assert "set-cookie" not in answer.headers, (method, path)
    assert sign_ins(b) == 0
    assert "member_session" not in scanner.client.cookies
    # The scanner's marks are around Li's links: her button, pressed without the page's
    # sign of a person, asks once more instead of signing in; pressed again, it does.
    press = scanner.client.post(signin_mail, data={"person": "0"}, follow_redirects=False)
    assert press.status_code == 200
    assert "Please confirm" in press.text
    assert sign_ins(b) == 0
    again = scanner.client.post(
        signin_mail, data={"person": "0", "confirm": "1"}, follow_redirects=False
    )
    assert again.status_code == 303
    assert sign_ins(b) == 1
