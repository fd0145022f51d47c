from __future__ import annotations

import asyncio
import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
import premailer
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content.variants import member_key
from newsletter.errors import IssueTooLarge, MissingSecret, NothingToSend
from newsletter.services import board, moderation
from newsletter.storage.models import Delivery, Issue, IssueItem, Member, utcnow
from newsletter.tokens import Signer
from tests import steps as publish
from tests.checks import VOTE_LINK, check_message, defects, parse, seed_titles
from tests.smtpd import RecordingHandler
from tests.steps import import_csv, import_source


def load_sample(sessions: sessionmaker[Session], site: Path) -> None:
    import_csv(sessions, site / "subscribers" / "example.csv")
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))


def send(settings: Settings, sessions: sessionmaker[Session]) -> Any:
    """One `send` run; the summary of its last issue."""
    return asyncio.run(publish.send(settings, sessions))[-1]


def active_emails(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as s:
        return set(s.scalars(select(Member.email).where(Member.status == "active")))


def test_one_message_per_active_member(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> None:
    load_sample(sessions, site)
    summary = send(settings, sessions)
    received = smtp_server.by_recipient()
    assert set(received) == active_emails(sessions)
    assert "former.member@example.org" not in received
    assert all(len(msgs) == 1 for msgs in received.values())
    assert summary.counts == {"sent": len(received)}

    all_links: set[str] = set()
    message_ids = set()
    titles = seed_titles()
    member_ids = {}
    with sessions() as s:
        member_ids = {m.email: m.id for m in s.scalars(select(Member))}
    for rcpt, (msg_rec,) in received.items():
        # VERP: the envelope sender names the issue and the member, with their tag.
        detail = f"1-{member_ids[rcpt]}"
        tag = Signer(settings.require_secret()).tag(detail)
        assert msg_rec.mail_from == f"bounces+{detail}-{tag}@example.org"
        assert "BODY=8BITMIME" not in msg_rec.mail_options  # 7bit: quoted-printable bodies
        msg, text, html, links = check_message(msg_rec.data)
        assert msg["To"].addresses[0].addr_spec == rcpt
        assert msg["Feedback-ID"] == "1:chinaip.example.org:newsletter:example.org"
        for title in titles:
            assert title in text
            assert title.replace("'", "&#39;") in html or title in html
        assert settings.survey is not None
        assert settings.survey.question in text
        all_links.update(links)
        message_ids.add(msg["Message-ID"])
    assert len(all_links) == 3 * len(received)  # every member's links are their own
    assert len(message_ids) == len(received)

    with sessions() as s:
        issue = s.scalars(select(Issue)).one()
        assert issue.status == "sent"
        assert issue.sent_at is not None
        rows = s.scalars(select(Delivery)).all()
        assert {r.status for r in rows} == {"sent"}
        assert len(rows) == len(received)
        assert {r.message_id for r in rows} == message_ids
        assert len(s.scalars(select(IssueItem)).all()) == 8

    with pytest.raises(NothingToSend):
        send(settings, sessions)
    assert len(smtp_server.messages) == len(received)


def test_rendering_and_inlining_run_once_per_issue(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    smtp_server: RecordingHandler,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    rows = "".join(f"m{i}@example.org,Member {i}\n" for i in range(60))
    (tmp_path / "many.csv").write_text("email,name\n" + rows)
    import_csv(sessions, tmp_path / "many.csv")
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    # Approved messages on the board: the issue carries them, compiled with the rest.
    services = publish.services(settings, sessions)
    for member_id, body in ((1, "A thread on **pledge loans**"), (2, "A thread on customs")):
        services.run("test", board.post, member_id, 0, body, ip="192.0.2.1")
        services.run("test", moderation.approve, member_id)
    services.run("test", board.post, 3, 0, "A reply", parent_id=1, ip="192.0.2.1")
    services.run("test", moderation.approve, 3)
    calls: Counter[str] = Counter()
    transform, render = premailer.Premailer.transform, jinja2.Template.render

    def counting_transform(self: premailer.Premailer, *a: Any, **k: Any) -> Any:
        calls["premailer"] += 1
        return transform(self, *a, **k)

    def counting_render(self: jinja2.Template, *a: Any, **k: Any) -> Any:
        calls[self.name or "subject"] += 1
        return render(self, *a, **k)

    monkeypatch.setattr(premailer.Premailer, "transform", counting_transform)
    monkeypatch.setattr(jinja2.Template, "render", counting_render)
    send(settings, sessions)
    assert len(smtp_server.messages) == 60
    assert calls == {"premailer": 1, "email/issue.html": 1, "email/issue.txt": 1, "subject": 1}
    for received in smtp_server.messages:
        _, text, html, _ = check_message(received.data)
        for part in (text, html):
            assert "From the members' board" in part
            assert part.index("A thread on pledge loans") < part.index("A thread on customs")


# Members spread over sections, languages and the survey: (address, language, sections, survey).
VARIANT_MEMBERS = [
    ("all.en@example.org", "", "", True),  # the issue's own copy
    ("reports.people@example.org", "en", "Comprehensive Reports;People watch", True),
    ("reports.people.2@example.org", "", "People watch;Comprehensive Reports", True),
    ("all.zh@example.org", "zh_Hans", "", True),
    (
        "firms.inquiry.zh@example.org",
        "zh-CN",
        "International IP Firms;Inquiry and Assessment",
        True,
    ),
    (
        "firms.inquiry.zh.2@example.org",
        "zh_Hans",
        "Inquiry and Assessment;International IP Firms",
        True,
    ),
    ("no.survey@example.org", "en", "", False),
    ("nothing.new@example.org", "en", "Gazette", True),  # no new item in that section
]
ALL_SECTIONS = [
    "Comprehensive Reports",
    "International IP Firms",
    "Inquiry and Assessment",
    "People watch",
]


def test_each_member_gets_their_sections_in_their_language_compiled_once_per_variant(
    settings: Settings,
    sessions: sessionmaker[Session],
    site: Path,
    smtp_server: RecordingHandler,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    rows = "".join(f"{e},,{lang},{sections}\n" for e, lang, sections, _ in VARIANT_MEMBERS)
    (tmp_path / "spread.csv").write_text("email,name,language,sections\n" + rows)
    import_csv(sessions, tmp_path / "spread.csv")
    with sessions.begin() as s:
        no_survey = s.scalars(select(Member).where(Member.email == "no.survey@example.org")).one()
        no_survey.survey = False
        no_survey.variant_key = member_key("en", None, False)
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    import_source(sessions, str(site / "examples" / "sections"))
    # A thread with a reply on the board: every variant carries it, in its own language.
    services = publish.services(settings, sessions)
    services.run("test", board.post, 1, 0, "A thread on **pledge loans**", ip="192.0.2.1")
    services.run("test", moderation.approve, 1)
    services.run("test", board.post, 4, 0, "同意", parent_id=1, ip="192.0.2.1")
    services.run("test", moderation.approve, 2)
    calls = count_compiles(monkeypatch)
    send(settings, sessions)

    # Distinct copies: the whole issue in English; two sections in English; the whole issue
    # in Chinese; two other sections in Chinese; the whole issue without the survey. The
    # board's section is rendered with each, in the same run.
    assert calls == {"premailer": 5, "email/issue.html": 5, "email/issue.txt": 5, "subject": 5}
    received = smtp_server.by_recipient()
    assert "nothing.new@example.org" not in received
    assert len(received) == len(VARIANT_MEMBERS) - 1
    for address, language, sections, survey in VARIANT_MEMBERS[:-1]:
        (message,) = received[address]
        msg = parse(message.data)
        assert defects(msg) == []
        text = msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        html = msg.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
        chosen = [s for s in ALL_SECTIONS if not sections or s in sections.split(";")]
        heads = [line.strip("= ") for line in text.splitlines() if line.startswith("== ")]
        chinese = language.startswith("zh")
        assert heads == chosen + ["来自会员留言板" if chinese else "From the members' board"] + (
            ["在线调查" if chinese else "Online survey"] if survey else []
        )
        for part in (text, html):
            assert "A thread on pledge loans" in part
            assert ("1条回复" if chinese else "1 reply") in part
            assert ("登录留言板参与回复" if chinese else "Sign in to the board to reply") in part
        assert bool(VOTE_LINK.findall(html)) == survey
        if language.startswith("zh"):
            assert msg["Subject"].startswith("中国知识产权 — 综合报告：")
            assert msg["From"].addresses[0].display_name == "中国知识产权 — 综合报告"
            assert '<html lang="zh-Hans">' in html
            assert "尊敬的" in text
            assert "篇报道" in text
            assert "2017年12月" in text  # the items' dates, as Chinese writes them
            assert "您的偏好设置" in html
            assert "Read the full report" not in html
        else:
            assert msg["Subject"].startswith(f"{settings.list.name}: ")
            assert '<html lang="en">' in html
            assert "Dear " in text
            assert "December" in text
            assert "Your preferences" in html
    with sessions() as s:
        member = s.scalars(select(Member).where(Member.email == "nothing.new@example.org")).one()
        row = s.scalars(select(Delivery).where(Delivery.member_id == member.id)).one()
        assert (row.status, row.last_message) == ("skipped", "nothing new in the member's sections")
        assert len(set(s.scalars(select(Delivery.variant_id)))) == 5  # 4 variants, None: own copy


def count_compiles(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts premailer's transforms and each template's renders from now on."""
    calls: Counter[str] = Counter()
    transform, render = premailer.Premailer.transform, jinja2.Template.render

    def counting_transform(self: premailer.Premailer, *a: Any, **k: Any) -> Any:
        calls["premailer"] += 1
        return transform(self, *a, **k)

    def counting_render(self: jinja2.Template, *a: Any, **k: Any) -> Any:
        calls[self.name or "subject"] += 1
        return render(self, *a, **k)

    monkeypatch.setattr(premailer.Premailer, "transform", counting_transform)
    monkeypatch.setattr(jinja2.Template, "render", counting_render)
    return calls


def test_chinese_names_and_titles_survive_the_headers(
    settings: Settings,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    (tmp_path / "zh.csv").write_text("email,name\nzhang.wei@example.org,张伟\n", encoding="utf-8")
    import_csv(sessions, tmp_path / "zh.csv")
    title = "小米与诺基亚签署专利许可协议，探索人工智能合作"
    feed = tmp_path / "zh.xml"
    feed.write_text(
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>中国知识产权</title>'
        f"<item><title>{title}</title><guid>zh-1</guid><pubDate>Wed, 06 Dec 2017 09:00:00 +0800</pubDate>"
        f"<description>&lt;p&gt;{'知识产权保护' * 400}&lt;/p&gt;</description></item></channel></rss>",
        encoding="utf-8",
    )
    import_source(sessions, str(feed))
    send(settings, sessions)
    (received,) = smtp_server.messages
    raw_headers = received.data.split(b"\r\n\r\n", 1)[0]
    assert raw_headers.isascii()  # RFC 2047 encoded-words, no raw UTF-8 in the header block
    msg, text, html, _ = check_message(received.data)
    assert msg["Subject"] == f"{settings.list.name}: {title}"
    assert msg["To"].addresses[0].display_name == "张伟"
    assert msg["From"].addresses[0].display_name == settings.list.name
    assert "Dear 张伟," in text
    assert "Dear 张伟," in html
    assert "知识产权保护" * 50 in "".join(text.split())


def test_refused_addresses_are_bounced_and_the_rest_delivered(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> None:
    load_sample(sessions, site)
    smtp_server.refuse["wang.fang@example.org"] = "550 5.1.1 No such user"
    smtp_server.refuse["li.wei@example.org"] = "452 4.2.2 Mailbox full, try later"
    summary = send(settings, sessions)
    assert summary.counts == {"sent": 3, "bounced": 1, "deferred": 1}
    with sessions() as s:
        rows = {
            email: (d.status, d.last_code, d.attempts)
            for d, email in s.execute(select(Delivery, Member.email).join(Member))
        }
    assert rows["wang.fang@example.org"] == ("bounced", 550, 1)
    assert rows["li.wei@example.org"][:2] == ("deferred", 452)
    assert set(smtp_server.by_recipient()) == {e for e, (st, _, _) in rows.items() if st == "sent"}


def test_member_who_leaves_after_the_snapshot_is_skipped(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> None:
    load_sample(sessions, site)
    prepared = publish.release_next(settings, sessions)
    with sessions.begin() as s:
        s.execute(
            update(Member)
            .where(Member.email == "chen.jie@example.org")
            .values(status="unsubscribed")
        )
    summary = asyncio.run(publish.deliver(settings, sessions, prepared.issue))
    assert summary.counts == {"sent": 4, "skipped": 1}
    assert "chen.jie@example.org" not in smtp_server.by_recipient()


def test_an_interrupted_issue_is_resumed_not_remade(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> None:
    load_sample(sessions, site)
    first = publish.release_next(settings, sessions)  # released, then the process "dies"
    summaries = asyncio.run(publish.send(settings, sessions))
    assert [s.issue_id for s in summaries] == [first.issue.id]
    with sessions() as s:
        assert len(s.scalars(select(Issue)).all()) == 1
    assert len(smtp_server.messages) == 5


def test_missing_secret_stores_nothing(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> None:
    load_sample(sessions, site)
    keyless = dataclasses.replace(settings, secret_keys=())
    with pytest.raises(MissingSecret, match="NEWSLETTER_SECRET_KEY"):
        send(keyless, sessions)
    with sessions() as s:
        assert s.scalars(select(Issue)).all() == []
    assert smtp_server.messages == []


def test_oversized_issue_is_refused_and_items_stay_new(
    settings: Settings, sessions: sessionmaker[Session], site: Path, smtp_server: RecordingHandler
) -> None:
    load_sample(sessions, site)
    small = dataclasses.replace(
        settings, issue=dataclasses.replace(settings.issue, size_limit=10_000)
    )
    with pytest.raises(IssueTooLarge, match="Gmail"):
        send(small, sessions)
    with sessions() as s:
        assert s.scalars(select(Issue)).all() == []
    assert smtp_server.messages == []
    send(settings, sessions)  # with the normal limit, the same items go out
    assert len(smtp_server.messages) == 5


def test_lines_starting_with_a_dot_survive_the_prepared_data_path(
    settings: Settings,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    smtp_server: RecordingHandler,
) -> None:
    from newsletter.content.compiler import Compiled, slot
    from newsletter.content.layout import Wire, assemble, unwire
    from newsletter.content.personalize import Personalizer
    from newsletter.storage.ledger import Recipient
    from newsletter.tokens import Signer

    (tmp_path / "one.csv").write_text("email,name\ndot@example.org,.Dot\n")
    import_csv(sessions, tmp_path / "one.csv")
    folder = tmp_path / "md"
    folder.mkdir()
    (folder / "a.md").write_text(
        "---\ntitle: Dots\n---\n\n    .indented code\n\n.leading dot\n\n..two dots\n"
    )
    import_source(sessions, str(folder))
    send(settings, sessions)
    (received,) = smtp_server.messages
    _, text, _, _ = check_message(received.data)
    assert "\n.leading dot" in text.replace("\r\n", "\n")
    assert "\n..two dots" in text.replace("\r\n", "\n")

    # A slot at the start of a line whose value starts with a dot: quoted-printable writes
    # the dot as =2E, so no line of a body starts with "." and dot-stuffing leaves it alone.
    nonce = "abcdef012345"
    compiled = Compiled("s", "x", f"{slot(nonce, 'name')}\n", nonce, (), None, (), utcnow())
    personalizer = Personalizer(compiled, settings, Signer((b"k" * 16,)), 1)
    _, wire = personalizer.wire(Recipient(1, "a@example.org", ".Dot"))
    assert isinstance(wire, Wire)
    assert wire.endswith(b"\r\n.\r\n")
    assert b"\r\n=2EDot=\r\n" in bytes(wire)
    body = parse(unwire(wire)).get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == ".Dot\n"
    plain = personalizer.message(Recipient(1, "a@example.org", ".Dot"))[1]
    date = re.compile(rb"Date: [^\r]*")
    assert date.sub(b"", unwire(wire)) == date.sub(b"", plain)
    # A DKIM signer is given the skeleton and the slot values, and lays out the message
    # itself: it must be byte for byte the plain form of what goes over the wire.
    _, values = personalizer.slots(Recipient(1, "a@example.org", ".Dot"))
    assert b"=2EDot=\r\n" in values
    assert unwire(personalizer.wire_from(values)) == assemble(personalizer.skeleton, values)
