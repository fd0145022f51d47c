"""The members' board over HTTP, on SQLite and PostgreSQL, on an injected clock: signing in by an
emailed link, posting and the new member's held first post, limits, blocks, reports, a member's
own edits, signing out everywhere, reply notices, members-only reading and search."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re

import pytest
from alembic import command
from sqlalchemy import inspect, text, update
from sqlalchemy.orm import Session
from starlette.responses import Response

from newsletter.services import board, erasure, members, moderation
from newsletter.services.boundary import Gateway
from newsletter.storage import db, search
from newsletter.storage.models import BoardStatus, Member, MemberStatus
from newsletter.web.auth import MemberAuth
from tests.boardsite import (
    CHEN,
    FORMER,
    JOHN,
    LI,
    MARIA,
    WANG,
    Board,
    board_site,
    html_of,
    text_of,
)
from tests.snapshot import snapshot

__all__ = ["board_site"]

SEED = "Only our members can leave a message, so please register or login."


def visible(page: str) -> str:
    """A page's text without its tags (for "is it on the page" questions)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page))


# --- signing in ----------------------------------------------------------------------------------


def test_a_signin_link_works_once_and_not_after_fifteen_minutes(board_site: Board) -> None:
    b = board_site
    link = b.signin_link(LI)
    person = b.reader()
    page = person.client.get(link)
    assert page.status_code == 200
    assert "Sign in" in page.text
    assert LI in page.text
    assert "set-cookie" not in page.headers  # the GET signs nobody in
    b.clock.advance(minutes=14, seconds=59)
    first = person.client.post(link, data={"person": "1"}, follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == "/board?done=signedin"
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("member_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # the site is served over http here
    assert "Signed in as <strong>Li Wei</strong>" in person.client.get("/board").text

    again = b.reader().client.post(link, data={"person": "1"}, follow_redirects=False)
    assert again.status_code == 400
    assert "used already" in again.text
    assert "set-cookie" not in again.headers

    late = b.signin_link(LI)
    b.clock.advance(minutes=15, seconds=1)
    expired = b.reader().client.post(late, data={"person": "1"}, follow_redirects=False)
    assert expired.status_code == 400
    assert "expired" in expired.text
    assert "set-cookie" not in expired.headers
    assert b.audits("sign-in") == 1


def test_who_may_not_sign_in_gets_no_link_and_the_same_page(board_site: Board) -> None:
    b = board_site
    with b.sessions.begin() as s:
        s.execute(update(Member).where(Member.email == MARIA).values(status=MemberStatus.BOUNCED))
    b.run(moderation.block, b.member_id(JOHN), "Spam")
    early = b.signin_link(CHEN)  # asked for before the block below
    b.run(moderation.block, b.member_id(CHEN), "Abuse")
    for email in (FORMER, MARIA, JOHN, "nobody@example.org"):
        answer = b.reader().client.post("/signin", data={"email": email})
        assert answer.status_code == 200
        assert "Check your inbox" in answer.text
        assert b.mails("signin", email) == []
    refused = b.reader().client.post(early, data={"person": "1"}, follow_redirects=False)
    assert refused.status_code == 400
    assert "blocked" in refused.text
    assert "set-cookie" not in refused.headers


def test_a_member_who_leaves_is_signed_out(board_site: Board) -> None:
    b = board_site
    li = b.sign_in(LI)
    assert "Signed in as" in li.client.get("/board").text
    b.run(members.unsubscribe, b.member_id(LI), via="test")
    page = li.client.get("/board").text
    assert SEED in visible(page)
    assert "Signed in as" not in page


def test_sign_out_everywhere_ends_every_session(board_site: Board) -> None:
    b = board_site
    phone, laptop = b.sign_in(LI), b.sign_in(LI)
    csrf = laptop.csrf()
    done = laptop.client.post("/signout/everywhere", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    assert 'member_session=""' in done.headers["set-cookie"]
    assert "Signed in as" not in phone.client.get("/board").text
    forged = phone.client.post(
        "/board", data={"csrf": csrf, "body": "still here?"}, follow_redirects=False
    )
    assert forged.status_code == 403
    assert b.messages() == []
    assert "Signed in as" in b.sign_in(LI).client.get("/board").text  # a new sign-in works
    assert b.audits("sign-out-everywhere") == 1


def test_the_session_cookie_is_secure_on_an_https_site(board_site: Board) -> None:
    settings = dataclasses.replace(
        board_site.settings,
        list=dataclasses.replace(board_site.settings.list, base_url="https://news.example.org"),
    )
    auth = MemberAuth(settings, board_site.services.signer)
    response = Response()
    auth.set(response, auth.new(1, 0))
    cookie = response.headers["set-cookie"]
    assert "Secure" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/" in cookie


def test_signing_out_clears_the_cookie(board_site: Board) -> None:
    b = board_site
    li = b.sign_in(LI)
    done = li.client.post("/signout", data={"csrf": li.csrf()}, follow_redirects=False)
    assert done.status_code == 303
    assert "Signed in as" not in li.client.get("/board").text


# --- posting -------------------------------------------------------------------------------------


def test_a_new_members_first_post_waits_for_an_editor(board_site: Board) -> None:
    b = board_site
    li, anyone = b.sign_in(LI), b.reader()
    first = li.post("First **post** on the board")
    assert first.status_code == 303
    assert first.headers["location"] == "/board?done=held"
    assert "waits for an editor" in li.client.get(first.headers["location"]).text
    assert "First" not in anyone.client.get("/board").text
    (held,) = b.messages()
    assert held.status == BoardStatus.HELD
    queue = b.services.read(moderation.queue)
    assert [w.id for w in queue.waiting] == [held.id]
    b.run(moderation.approve, held.id)
    assert "First <strong>post</strong> on the board" in anyone.client.get("/board").text
    second = li.post("A second one")
    assert second.headers["location"] == "/board?done=posted"  # approved once: trusted now
    assert "A second one" in anyone.client.get("/board").text
    assert [m.status for m in b.messages()] == [BoardStatus.SHOWN, BoardStatus.SHOWN]


@pytest.mark.board_config(held_posts=0)
def test_replies_are_one_level_under_their_thread(board_site: Board) -> None:
    b = board_site
    li, wang = b.sign_in(LI), b.sign_in(WANG)
    li.post("Where do we file?")
    (thread,) = b.messages()
    answer = wang.post("At the office.", f"/board/{thread.id}")
    assert answer.headers["location"] == f"/board/{thread.id}?done=posted"
    reply = b.messages()[1]
    assert reply.parent_id == thread.id
    nested = li.post("A reply to a reply", f"/board/{reply.id}")
    assert nested.status_code == 404  # a reply has no replies: one level only
    assert "no such thread" in nested.text
    page = b.reader().client.get("/board").text
    assert page.index("Where do we file?") < page.index("At the office.")
    assert '<ol class="replies">' in page


@pytest.mark.board_config(held_posts=0)
def test_the_board_shows_a_threads_last_replies_and_its_page_all(board_site: Board) -> None:
    b = board_site
    li, wang = b.sign_in(LI), b.sign_in(WANG)
    li.post("A long thread")
    (thread,) = b.messages()
    for n in range(1, 6):
        wang.post(f"Reply number {n}", f"/board/{thread.id}")
    board_page = b.reader().client.get("/board").text
    assert [f"Reply number {n}" in board_page for n in range(1, 6)] == [False, False] + [True] * 3
    assert "All 5 replies" in board_page
    thread_page = b.reader().client.get(f"/board/{thread.id}").text
    assert all(f"Reply number {n}" in thread_page for n in range(1, 6))


@pytest.mark.board_config(held_posts=0)
def test_the_report_page_asks_before_reporting(board_site: Board) -> None:
    b = board_site
    li, wang = b.sign_in(LI), b.sign_in(WANG)
    li.post("Report me if you dare")
    (message,) = b.messages()
    page = wang.client.get(f"/board/{message.id}/report")
    assert page.status_code == 200
    assert "Report me if you dare" in page.text
    assert f'action="/board/{message.id}/report"' in page.text
    assert li.client.get(f"/board/{message.id}/report").status_code == 400  # her own
    assert b.reader().client.get(f"/board/{message.id}/report").status_code == 403
    assert wang.client.get("/board/999/report").status_code == 404
    assert b.audits("board-report") == 0  # the GET reported nothing


@pytest.mark.board_config(held_posts=0, posts_per_hour=2, posts_per_ip_hour=3)
def test_posts_are_limited_per_member_and_per_address(board_site: Board) -> None:
    b = board_site
    li, wang = b.sign_in(LI), b.sign_in(WANG)
    assert li.post("one").status_code == 303
    assert li.post("two").status_code == 303
    third = li.post("three")
    assert third.status_code == 429
    assert "board.posts_per_hour" in third.text
    assert "three" in third.text  # the form keeps what was typed
    assert wang.post("four").status_code == 303
    crowded = wang.post("five")  # the same network address (the test client's)
    assert crowded.status_code == 429
    assert "board.posts_per_ip_hour" in crowded.text
    assert len(b.messages()) == 3
    b.clock.advance(hours=1, seconds=1)
    assert li.post("later").status_code == 303


@pytest.mark.board_config(held_posts=0, posts_per_hour=2)
def test_posts_in_one_batch_count_against_each_other(board_site: Board) -> None:
    """Posts submitted together share the batcher's transaction: the limit still holds."""
    b = board_site
    li, wang = b.member_id(LI), b.member_id(WANG)
    gateway = Gateway(b.services)

    async def burst() -> list[board.Posted]:
        calls = [(li, f"Li's post {n}") for n in range(4)] + [(wang, "Wang's post")]
        return await asyncio.gather(
            *(
                gateway.submit(f"member:{m}", board.post, m, 0, body, ip="192.0.2.1")
                for m, body in calls
            )
        )

    try:
        posted = asyncio.run(burst())
    finally:
        gateway.close()
    assert [p.rule for p in posted] == ["", "", "limit", "limit", ""]
    stored = b.messages()
    assert sorted(m.body_md for m in stored) == ["Li's post 0", "Li's post 1", "Wang's post"]
    assert b.audits("board-post") == 3


def test_the_honeypot_stores_nothing(board_site: Board) -> None:
    b = board_site
    li = b.sign_in(LI)
    before = snapshot(b.sessions)
    bot = li.post("Buy now", website="http://spam.example")
    assert bot.status_code == 303  # the same answer a person gets
    assert snapshot(b.sessions) == before


@pytest.mark.board_config(held_posts=0, report_threshold=3)
def test_reported_messages_leave_the_board_until_an_editor_acts(board_site: Board) -> None:
    b = board_site
    li = b.sign_in(LI)
    li.post("A message some dislike")
    (message,) = b.messages()
    anyone = b.reader()
    refused = li.client.post(
        f"/board/{message.id}/report", data={"csrf": li.csrf()}, follow_redirects=False
    )
    assert refused.status_code == 400  # one's own message
    for n, email in enumerate((WANG, JOHN, MARIA), start=1):
        reporter = b.sign_in(email)
        for _ in range(1 if n == 3 else 2):  # twice: it counts once
            done = reporter.client.post(
                f"/board/{message.id}/report",
                data={"csrf": reporter.csrf(), "reason": f"reason {n}"},
                follow_redirects=False,
            )
            assert done.status_code == 303
        shown = "A message some dislike" in anyone.client.get("/board").text
        assert shown == (n < 3)
    assert "A message some dislike" not in li.client.get("/board").text
    assert anyone.client.get(f"/board/{message.id}").status_code == 404
    (waiting,) = b.services.read(moderation.queue).waiting
    assert waiting.status == BoardStatus.REPORTED
    assert [reason for _, reason in waiting.reports] == ["reason 1", "reason 2", "reason 3"]
    b.run(moderation.approve, message.id)  # the editor looked: it may stay
    assert "A message some dislike" in anyone.client.get("/board").text
    assert b.services.read(moderation.queue).waiting == ()
    b.run(moderation.hide, message.id)
    assert "A message some dislike" not in anyone.client.get("/board").text


@pytest.mark.board_config(held_posts=0)
def test_a_blocked_member_cannot_post_until_the_block_ends(board_site: Board) -> None:
    b = board_site
    li = b.sign_in(LI)
    until = b.clock.now + dt.timedelta(days=1)
    b.run(moderation.block, b.member_id(LI), "Links to counterfeit goods", until)
    page = li.client.get("/board").text
    assert "Links to counterfeit goods" in page
    assert 'id="post"' not in page
    before = snapshot(b.sessions)
    refused = li.client.post(
        "/board", data={"csrf": li.csrf(), "body": "Let me in"}, follow_redirects=False
    )
    assert refused.status_code == 403
    assert "blocked you from posting" in refused.text
    assert snapshot(b.sessions) == before
    b.clock.advance(days=1, seconds=1)
    assert li.post("Back again").status_code == 303
    assert b.audits("board-block") == 1


@pytest.mark.board_config(held_posts=0, edit_minutes=15)
def test_own_messages_are_edited_and_deleted_for_fifteen_minutes(board_site: Board) -> None:
    b = board_site
    li, wang = b.sign_in(LI), b.sign_in(WANG)
    li.post("Frist draft")
    (message,) = b.messages()
    assert f'href="/board/{message.id}/edit"' in li.client.get("/board").text
    theirs = wang.client.get("/board").text
    assert f'href="/board/{message.id}/edit"' not in theirs
    assert f'href="/board/{message.id}/report"' in theirs
    assert "Frist draft" in li.client.get(f"/board/{message.id}/edit").text
    edited = li.client.post(
        f"/board/{message.id}/edit",
        data={"csrf": li.csrf(), "body": "First draft"},
        follow_redirects=False,
    )
    assert edited.status_code == 303
    assert "First draft" in b.reader().client.get("/board").text
    not_theirs = wang.client.post(
        f"/board/{message.id}/edit", data={"csrf": wang.csrf(), "body": "mine now"}
    )
    assert not_theirs.status_code == 400
    assert "not one of your messages" in not_theirs.text
    b.clock.advance(minutes=15, seconds=1)
    assert f'href="/board/{message.id}/edit"' not in li.client.get("/board").text
    late = li.client.post(
        f"/board/{message.id}/delete", data={"csrf": li.csrf()}, follow_redirects=False
    )
    assert late.status_code == 400
    assert "15 minutes" in late.text
    li.post("Posted in error")
    mistake = b.messages()[-1]
    gone = li.client.post(
        f"/board/{mistake.id}/delete", data={"csrf": li.csrf()}, follow_redirects=False
    )
    assert gone.status_code == 303
    assert "Posted in error" not in b.reader().client.get("/board").text
    assert b.messages()[-1].status == BoardStatus.DELETED
    assert b.messages()[-1].body_md == ""


# --- who may read ------------------------------------------------------------------------------


@pytest.mark.board_config(held_posts=0)
def test_a_non_member_reads_the_public_board_and_sees_the_seeds_sentence(board_site: Board) -> None:
    b = board_site
    b.sign_in(LI).post("Open to all readers")
    page = b.reader().client.get("/board").text
    assert SEED in visible(page)
    assert 'href="/subscribe">register</a>' in page
    assert 'href="/signin">login</a>' in page
    assert "Open to all readers" in page
    assert "<textarea" not in page
    found = b.reader().client.get("/search", params={"q": "readers"}).text
    assert 'id="board-hits"' in found


@pytest.mark.board_config(held_posts=0, read="members")
def test_a_members_only_board_shows_non_members_the_seeds_sentence_only(board_site: Board) -> None:
    b = board_site
    li = b.sign_in(LI)
    li.post("For members only")
    (message,) = b.messages()
    anyone = b.reader()
    for path in ("/board", f"/board/{message.id}"):
        page = anyone.client.get(path).text
        assert SEED in visible(page)
        assert "For members only" not in page
    assert 'id="board-hits"' not in anyone.client.get("/search", params={"q": "members"}).text
    assert "For members only" in li.client.get("/board").text
    assert 'id="board-hits"' in li.client.get("/search", params={"q": "members"}).text


@pytest.mark.board_config(held_posts=0)
def test_search_finds_only_what_the_board_shows(board_site: Board) -> None:
    b = board_site
    li, wang = b.sign_in(LI), b.sign_in(WANG)
    li.post("Pledge valuation of patents")
    thread = b.messages()[0]
    wang.post("A pledge of trademarks too", f"/board/{thread.id}")
    wang.post("Another pledge thread")
    hits = b.services.read(board.search_board, "pledge")
    assert {h.message_id for h in hits} == {m.id for m in b.messages()}
    assert {h.name for h in hits} == {"Li Wei", "王芳"}
    b.run(moderation.hide, thread.id)  # its reply goes with it
    assert [h.message_id for h in b.services.read(board.search_board, "pledge")] == [
        b.messages()[2].id
    ]
    assert b.services.read(board.search_board, "valuation") == []


def test_the_search_index_follows_approval_edits_and_deletion(board_site: Board) -> None:
    """held_posts = 1: the index holds what the board shows, through every change."""
    b = board_site
    li = b.sign_in(LI)

    def found(word: str) -> list[int]:
        return [h.message_id for h in b.services.read(board.search_board, word)]

    li.post("Trademark squatting in Hangzhou")
    (message,) = b.messages()
    assert found("squatting") == []  # held: not on the board, not in search
    b.run(moderation.approve, message.id)
    assert found("squatting") == [message.id]
    edited = li.client.post(
        f"/board/{message.id}/edit",
        data={"csrf": li.csrf(), "body": "Trademark hoarding in Hangzhou"},
        follow_redirects=False,
    )
    assert edited.status_code == 303
    assert found("squatting") == []
    assert found("hoarding") == [message.id]
    li.client.post(f"/board/{message.id}/delete", data={"csrf": li.csrf()})
    assert found("hoarding") == []
    assert found("Hangzhou") == []
    if b.settings.database_url.startswith("sqlite"):
        with b.sessions.begin() as s:  # FTS5 checks its index's structure: raises if broken
            s.execute(text("INSERT INTO board_fts(board_fts) VALUES ('integrity-check')"))


# --- reply notices -------------------------------------------------------------------------------


@pytest.mark.board_config(held_posts=0)
def test_a_reply_mails_the_author_once_a_thread_a_day(board_site: Board) -> None:
    b = board_site
    li, wang, john = b.sign_in(LI), b.sign_in(WANG), b.sign_in(JOHN)
    li.post("Who has filed in Shanghai?")
    thread = b.messages()[0]
    li.post("Myself, replying", f"/board/{thread.id}")
    assert b.mails("board-reply") == []  # not to oneself
    wang.post("We did, last **May**.", f"/board/{thread.id}")
    (notice,) = b.mails("board-reply", LI)
    assert notice["List-Unsubscribe"].startswith("<http://127.0.0.1:8000/n/")
    assert notice["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert notice["Auto-Submitted"] == "auto-generated"
    assert "王芳 replied to your message" in text_of(notice)
    assert "We did, last May." in text_of(notice)
    assert "<strong>May</strong>" in html_of(notice)
    assert f"/board/{thread.id}" in text_of(notice)
    john.post("So did we.", f"/board/{thread.id}")
    assert len(b.mails("board-reply", LI)) == 1  # one a thread a day
    b.clock.advance(days=1, seconds=1)
    john.post("And again.", f"/board/{thread.id}")
    assert len(b.mails("board-reply", LI)) == 2
    b.run(members.unsubscribe, b.member_id(LI), via="test")  # she leaves: no more mail
    b.clock.advance(days=1, seconds=1)
    john.post("Anyone still here?", f"/board/{thread.id}")
    assert len(b.mails("board-reply", LI)) == 2


@pytest.mark.board_config(held_posts=0)
def test_reply_notices_are_switched_off_by_the_member(board_site: Board) -> None:
    b = board_site
    li, wang = b.sign_in(LI), b.sign_in(WANG)
    li.post("A thread")
    thread = b.messages()[0]
    wang.post("A reply", f"/board/{thread.id}")
    (notice,) = b.mails("board-reply", LI)
    stop = b.path(notice["List-Unsubscribe"].strip("<>"))
    before = snapshot(b.sessions)
    for method in ("HEAD", "GET"):  # a scanner's fetches change nothing
        assert b.reader().client.request(method, stop).status_code == 200
    assert snapshot(b.sessions) == before
    one_click = b.reader().client.post(stop, data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    b.clock.advance(days=2)
    wang.post("Another reply", f"/board/{thread.id}")
    assert len(b.mails("board-reply", LI)) == 1
    on = li.client.post(
        "/board/notices", data={"csrf": li.csrf(), "notices": "on"}, follow_redirects=False
    )
    assert on.status_code == 303
    b.clock.advance(days=2)
    wang.post("A third reply", f"/board/{thread.id}")
    assert len(b.mails("board-reply", LI)) == 2


@pytest.mark.board_config(held_posts=0, reply_notices=False)
def test_reply_notices_are_switched_off_by_config(board_site: Board) -> None:
    b = board_site
    li, wang = b.sign_in(LI), b.sign_in(WANG)
    li.post("A thread")
    wang.post("A reply", f"/board/{b.messages()[0].id}")
    assert b.mails("board-reply") == []


def test_an_approved_reply_mails_the_author(board_site: Board) -> None:
    """held_posts = 1: the reply waits, and its notice goes when an editor approves it."""
    b = board_site
    li, wang = b.sign_in(LI), b.sign_in(WANG)
    li.post("A thread")
    thread = b.messages()[0]
    b.run(moderation.approve, thread.id)
    wang.post("A first post, as a reply", f"/board/{thread.id}")
    assert b.mails("board-reply") == []
    b.run(moderation.approve, b.messages()[1].id)
    assert len(b.mails("board-reply", LI)) == 1


# --- languages -----------------------------------------------------------------------------------


@pytest.mark.board_config(languages=True, held_posts=0, max_chars=40)
def test_a_member_reads_the_board_and_its_mail_in_their_own_language(board_site: Board) -> None:
    """王芳 chose Chinese (subscribers/example.csv), Li Wei did not: each gets the sign-in mail,
    the link's page, the board, its refusals and reply notices in their own language; a reader
    who is not signed in reads the list's (English)."""
    b = board_site
    wang_mail_link = b.signin_link(WANG)
    (signin_mail,) = b.mails("signin", WANG)
    assert signin_mail["Subject"] == "登录中国知识产权 — 综合报告"
    assert "有人（可能是您本人）申请登录中国知识产权 — 综合报告的会员留言板。" in text_of(
        signin_mail
    )
    assert "此链接只能使用一次，15分钟内有效。" in text_of(signin_mail)
    assert 'lang="zh-Hans"' in html_of(signin_mail)
    wang = b.reader()
    page = wang.client.get(wang_mail_link)
    assert '<html lang="zh-Hans">' in page.text
    assert "以wang.fang@example.org的身份登录会员留言板。" in page.text
    assert wang.client.post(wang_mail_link, data={"person": "1"}).status_code == 200
    board_page = wang.client.get("/board?done=signedin")
    assert '<html lang="zh-Hans">' in board_page.text
    for words in (
        "会员留言",
        "您已登录。",
        "退出登录",
        "发表留言",
        "已登录：<strong>王芳</strong>。",
    ):
        assert words in board_page.text, words
    refused = wang.post("长" * 41)
    assert refused.status_code == 400
    assert "留言长41个字符；最多允许40个（board.max_chars）。" in refused.text
    assert wang.post("专利质押融资，有人做过吗？").status_code == 303
    thread = b.messages()[0]
    assert "话题" in wang.client.get(f"/board/{thread.id}").text

    li = b.sign_in(LI)
    english = li.client.get("/board").text
    assert '<html lang="en">' in english
    assert "Sign out" in english
    assert "退出登录" not in english
    assert "Report" in english  # 王芳's message: its controls are cached once a language
    assert "举报" not in english
    assert "编辑或删除" in wang.client.get("/board").text  # her own message's controls
    li.post("We did, in Suzhou.", f"/board/{thread.id}")
    (notice,) = b.mails("board-reply", WANG)
    assert notice["Subject"] == "您在中国知识产权 — 综合报告留言板上的留言有了新回复"
    assert "Li Wei在中国知识产权 — 综合报告会员留言板上回复了您的留言：" in text_of(notice)
    stop = b.path(notice["List-Unsubscribe"].strip("<>"))
    assert "停止回复通知？" in b.reader().client.get(stop).text

    anyone = b.reader().client.get("/board").text
    assert '<html lang="en">' in anyone
    assert SEED.split(",")[0] in anyone


# --- erasure -------------------------------------------------------------------------------------


@pytest.mark.board_config(held_posts=0)
def test_erasing_a_member_erases_what_they_wrote_on_the_board(board_site: Board) -> None:
    """An erasure (services/erasure.py) reaches the board: the member's messages keep their
    place without text or network address, their words leave the audit log, their reports,
    sign-in links and standing go, and their session signs nobody in any more."""
    b = board_site
    li, wang = b.sign_in(LI), b.sign_in(WANG)
    li.post("Customs seizures at Ningbo")
    thread = b.messages()[0].id
    wang.post("Our **pledge loan** in Suzhou", f"/board/{thread}")
    wang.post("A thread of Wang's own about Kunshan")
    wang.client.post(f"/board/{thread}/report", data={"csrf": wang.csrf(), "reason": "Wuxi"})
    reader = b.reader()
    for word in ("Suzhou", "Kunshan"):
        assert 'id="board-hits"' in reader.client.get(f"/search?q={word}").text
    done = b.run(erasure.erase_member, b.member_id(WANG), reason="asked by mail")
    assert done.board_erased == 2
    wang_id = b.member_id(f"erased:{done.member_id}")
    with b.sessions() as s:
        rows = s.execute(
            text(
                "SELECT status, body_md, body_html, body_text, ip FROM board_messages "
                "WHERE member_id = :m"
            ),
            {"m": wang_id},
        ).all()
        assert [tuple(r) for r in rows] == [("deleted", "", "", "", "")] * 2
        for table in ("board_reports", "board_signins", "board_members"):
            left = s.execute(
                text(f"SELECT count(*) FROM {table} WHERE member_id = :m"), {"m": wang_id}
            )
            assert left.scalar() == 0, table
        details = " ".join(s.scalars(text("SELECT detail FROM audit_log")))
    for word in ("Suzhou", "Kunshan", "Wuxi", "王芳", WANG):
        assert word not in details, word
    assert "Ningbo" in details  # Li Wei's words are hers to keep
    for word in ("Suzhou", "Kunshan"):  # the erasure dropped the cached answers too
        assert "Nothing matches" in reader.client.get(f"/search?q={word}").text
    page = wang.client.get(f"/board/{thread}").text
    assert "Customs seizures at Ningbo" in page
    assert "Suzhou" not in page
    assert 'name="csrf"' not in page  # her session ended with her


# --- the migration -------------------------------------------------------------------------------


def test_the_migration_makes_the_board_and_takes_it_away(database_url: str) -> None:
    """0012_board on a database at the revision before it (0013_bounces): its tables and search
    index, which finds a message; downgraded, nothing of them is left; upgraded again, all is
    back. (From 0010 the chain runs through 0011_members, 0014_prefs and 0013_bounces first.)"""
    engine = db.make_engine(database_url)
    config = db._alembic_config(engine)
    command.upgrade(config, "0010")
    command.upgrade(config, "0013_bounces")
    command.upgrade(config, "0012_board")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO members (email, name, status, attributes, created_at, updated_at, "
                "bounce_count) VALUES ('a@example.org', 'A', 'active', '{}', :t, :t, 0)"
            ),
            {"t": dt.datetime(2026, 12, 1)},
        )
        conn.execute(
            text(
                "INSERT INTO board_messages (member_id, status, body_md, body_html, body_text, "
                "ip, created_at) VALUES (1, 'shown', 'x', '<p>x</p>', 'pledge valuation', '', :t)"
            ),
            {"t": dt.datetime(2026, 12, 1)},
        )
    with Session(engine) as session:
        assert [h.message_id for h in search.search_board(session, "valuation")] == [1]
    board_tables = {"board_messages", "board_reports", "board_members", "board_signins"}
    assert board_tables <= set(inspect(engine).get_table_names())
    command.downgrade(config, "0013_bounces")
    left = set(inspect(engine).get_table_names())
    assert not {t for t in left if t.startswith("board")}
    # What came before it stays: 0011_members', 0014_prefs' and 0013_bounces' tables.
    assert {"suppressions", "issue_variants", "bounce_events", "click_counts"} <= left
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT to_regclass('ix_board_fts')")) is None
    command.upgrade(config, "head")
    assert board_tables <= set(inspect(engine).get_table_names())
    engine.dispose()
