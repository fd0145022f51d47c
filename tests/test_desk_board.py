"""The desk's board page on SQLite and PostgreSQL: the queue of held and reported messages,
approve, hide and delete, blocking a member (with a reason and an end) and unblocking; a
publisher's, audited under the editor's name; a writer may not; no form without its token.
The same from the command line (`newsletter board`)."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from newsletter.cli.main import app
from newsletter.services import moderation
from newsletter.storage.models import AuditEntry, BoardStatus
from tests.boardsite import JOHN, LI, WANG, Board, board_site
from tests.conftest import SECRET
from tests.test_desk import EDITOR, WRITER, log_in

__all__ = ["board_site"]


def actions(b: Board) -> list[tuple[str, str]]:
    with b.sessions() as s:
        rows = s.execute(
            select(AuditEntry.actor, AuditEntry.action)
            .where(AuditEntry.action.like("board-%"))
            .order_by(AuditEntry.id)
        ).all()
    return [(actor, action) for actor, action in rows]


def test_an_editor_works_through_the_queue(board_site: Board) -> None:
    b = board_site
    li, wang, john = b.sign_in(LI), b.sign_in(WANG), b.sign_in(JOHN)
    li.post("Held: a first post")
    wang.post("Held: another first post")
    john.post("Held: spam, spam, spam")
    first, second, spam = (m.id for m in b.messages())
    desk = b.reader().client
    csrf = log_in(desk)
    page = desk.get("/desk/board")
    assert page.status_code == 200
    assert page.text.count('class="queue-item"') == 3
    assert 'aria-current="page">Board</a>' in page.text
    assert "&lt;li.wei@example.org&gt;" in page.text  # editors see who wrote it

    def act(message_id: int, action: str) -> str:
        done = desk.post(
            f"/desk/board/{message_id}/{action}", data={"csrf": csrf}, follow_redirects=False
        )
        assert done.status_code == 303
        return str(desk.get(done.headers["location"]).text)

    assert f"message #{first} is on the board" in act(first, "approve")
    assert f"message #{second} is hidden" in act(second, "hide")
    assert f"message #{spam} is deleted" in act(spam, "delete")
    assert "Nothing is waiting" in desk.get("/desk/board").text
    board = b.reader().client.get("/board").text
    assert "Held: a first post" in board
    assert "another first post" not in board
    assert "spam" not in board
    assert [m.status for m in b.messages()] == [
        BoardStatus.SHOWN,
        BoardStatus.HIDDEN,
        BoardStatus.DELETED,
    ]
    again = desk.post(f"/desk/board/{spam}/approve", data={"csrf": csrf}, follow_redirects=False)
    assert "is deleted: nothing to approve" in desk.get(again.headers["location"]).text
    assert actions(b) == [
        (f"member:{b.member_id(LI)}", "board-post"),
        (f"member:{b.member_id(WANG)}", "board-post"),
        (f"member:{b.member_id(JOHN)}", "board-post"),
        (EDITOR, "board-approve"),
        (EDITOR, "board-hide"),
        (EDITOR, "board-remove"),
    ]


def test_blocking_a_member_from_the_desk(board_site: Board) -> None:
    b = board_site
    john = b.sign_in(JOHN)
    john.post("Buy cheap watches")
    desk = b.reader().client
    csrf = log_in(desk)
    john_id = b.member_id(JOHN)
    zone = zoneinfo.ZoneInfo(b.settings.list.timezone)
    until = (b.clock.now + dt.timedelta(days=2)).astimezone(zone)
    blocked = desk.post(
        f"/desk/board/members/{john_id}/block",
        data={"csrf": csrf, "reason": "Selling counterfeits", "until": f"{until:%Y-%m-%dT%H:%M}"},
        follow_redirects=False,
    )
    page = desk.get(blocked.headers["location"]).text
    assert f"member #{john_id} may not post until" in page
    assert "Selling counterfeits" in page
    assert "Selling counterfeits" in john.client.get("/board").text  # he is told why
    assert john.post("Let me post").status_code == 403
    no_reason = desk.post(
        f"/desk/board/members/{john_id}/block",
        data={"csrf": csrf, "reason": " "},
        follow_redirects=False,
    )
    assert "say why" in desk.get(no_reason.headers["location"]).text
    done = desk.post(
        f"/desk/board/members/{john_id}/unblock", data={"csrf": csrf}, follow_redirects=False
    )
    assert "may post again" in desk.get(done.headers["location"]).text
    assert "Nobody is blocked" in desk.get("/desk/board").text
    assert john.post("Let me post").status_code == 303
    assert (EDITOR, "board-block") in actions(b)
    assert (EDITOR, "board-unblock") in actions(b)


@pytest.mark.parametrize("who", [WRITER, None])
def test_only_a_publisher_with_the_forms_token_moderates(
    board_site: Board, who: str | None
) -> None:
    b = board_site
    b.sign_in(LI).post("Held")
    (held,) = b.messages()
    desk = b.reader().client
    if who is None:  # the publisher, with a form whose token is missing
        log_in(desk)
        refused = desk.post(f"/desk/board/{held.id}/approve", data={}, follow_redirects=False)
        assert refused.status_code == 403
        assert "security token" in refused.text
    else:
        csrf = log_in(desk, who)
        page = desk.get("/desk/board")
        assert page.status_code == 403
        assert "may not moderate" in page.text
        refused = desk.post(
            f"/desk/board/{held.id}/approve", data={"csrf": csrf}, follow_redirects=False
        )
        assert refused.status_code == 403
    assert b.messages()[0].status == BoardStatus.HELD
    assert actions(b) == [(f"member:{b.member_id(LI)}", "board-post")]


def test_the_cli_moderates_too(board_site: Board) -> None:
    """`newsletter board ...` calls the same use-cases, audited as cli:USER."""
    b = board_site
    b.sign_in(LI).post("Held, for the command line")
    b.sign_in(WANG).post("Held, and to be hidden")
    first, second = (m.id for m in b.messages())
    env = {
        "NEWSLETTER_DATABASE_URL": b.settings.database_url,
        "NEWSLETTER_SECRET_KEY": SECRET,
        "COLUMNS": "200",
    }
    runner = CliRunner()

    def cli(*args: str) -> Result:
        return runner.invoke(app, ["--config", str(b.settings.config_path), *args], env=env)

    queue = cli("board", "queue")
    assert queue.exit_code == 0, queue.output
    assert "Held, for the command line" in queue.output
    assert "li.wei@example.org" in queue.output
    assert cli("board", "approve", str(first)).output.strip() == f"message #{first} is on the board"
    assert cli("board", "hide", str(second)).exit_code == 0
    again = cli("board", "approve", str(first))  # main() prints a NewsletterError, exits 1
    assert isinstance(again.exception, moderation.Conflict)
    assert "is shown: nothing to approve" in str(again.exception)
    blocked = cli(
        "board",
        "block",
        "John.Smith@Example.ORG",
        "--reason",
        "Spam",
        "--until",
        "2099-01-01 08:00",
    )
    assert blocked.exit_code == 0, blocked.output
    assert "Spam" in cli("board", "queue").output
    late = cli("board", "block", "john.smith@example.org", "--reason", "x", "--until", "soon")
    assert "--until 'soon': not a date and time" in str(late.exception)
    unblocked = cli("board", "unblock", "john.smith@example.org")
    assert unblocked.output.strip().endswith("may post again")
    nobody = cli("board", "block", "nobody@example.org", "--reason", "x")
    assert isinstance(nobody.exception, moderation.NotFound)
    assert [m.status for m in b.messages()] == [BoardStatus.SHOWN, BoardStatus.HIDDEN]
    by_cli = [(actor.split(":")[0], action) for actor, action in actions(b) if actor != EDITOR]
    assert by_cli[-4:] == [
        ("cli", "board-approve"),
        ("cli", "board-hide"),
        ("cli", "board-block"),
        ("cli", "board-unblock"),
    ]
