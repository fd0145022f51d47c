"""The preference page in headless Chromium: a member's changes, and the next issues following them."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
from pathlib import Path
from typing import Any

from playwright.sync_api import Page
from sqlalchemy import select

from newsletter import config
from newsletter.services import items, sending
from newsletter.services.unit import Services
from newsletter.storage.models import Member, SystemMail
from tests.checks import defects, parse
from tests.test_browser import Demo, Served, demo, links, served, wait_for

__all__ = ["demo", "served"]

JOHN = "john.smith@example.org"
NEW = "john@new.example.org"


class Issues:
    """Sends the next issue the way `newsletter send` does, in a thread of its own (the
    browser's event loop holds this one), with the served app's clock and SMTP server."""

    def __init__(self, demo: Demo, served: Served) -> None:
        settings = config.load(
            demo.site / "config.toml",
            env={config.SECRET_FILE_ENV: str(demo.site / "var" / "secret.key")},
            overrides={"smtp": {"port": served.smtp.port}, "delivery": {"linger_seconds": 0.0}},
        )
        self.site = demo.site
        self.served = served
        self.services = Services(settings, served.sessions, clock=served.clock)
        self.count = 0

    def send(self, section: str = "People watch") -> dict[str, Any]:
        """Add a new item in `section`, send the next issue; {address: message} of this send."""
        self.count += 1
        folder = self.site / f"later{self.count}"
        folder.mkdir()
        (folder / f"later-{self.count}.md").write_text(
            f"---\ntitle: Later item {self.count}\nsection: {section}\ndate: 2017-12-20\n---\n"
            f"A later sample item.\n"
        )
        items.import_source(self.services, str(folder), actor="test")
        before = len(self.served.smtp.messages)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(sending.send(self.services, actor="test"))
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(60)
        assert not errors, errors
        sent = self.served.smtp.messages[before:]
        parsed = [(m.rcpt_to, parse(m.data)) for m in sent]
        # System mail (a confirmation the app's mailer sent meanwhile) is not the issue's.
        return {to: msg for to, msg in parsed if msg["Auto-Submitted"] is None}


def choices(served: Served, member_id: int) -> tuple[Any, ...]:
    with served.sessions() as s:
        m = s.get(Member, member_id)
        assert m is not None
        return (m.email, m.language, m.sections, m.survey, m.paused_until, m.new_email)


def test_a_member_changes_their_preferences_and_the_next_issues_follow(
    demo: Demo, served: Served, page: Page, tmp_path: Path
) -> None:
    issues = Issues(demo, served)
    with served.sessions() as s:
        john = s.scalar(select(Member.id).where(Member.email == JOHN))
    assert john is not None
    (link,) = links(demo, JOHN, "p")
    before = choices(served, john)
    page.goto(link)
    assert page.locator("h1").inner_text() == "Your preferences"
    assert choices(served, john) == before  # showing the page changed nothing

    # Sections and language: People watch only, in Chinese.
    for box in page.locator("input[name^='section:']").all():
        if box.get_attribute("value") != "People watch":
            box.uncheck()
    page.get_by_label("中文 (简体)").check()
    page.get_by_role("button", name="Save my choices").click()
    page.get_by_text("您的选择已保存").wait_for()
    assert page.locator("html").get_attribute("lang") == "zh-Hans"
    page.screenshot(path=str(tmp_path / "preferences.png"), full_page=True)
    got = issues.send("People watch")
    msg = got[JOHN]
    assert defects(msg) == []
    text = msg.get_body(preferencelist=("plain",)).get_content()
    heads = [line for line in text.splitlines() if line.startswith("== ")]
    assert heads == ["== People watch ==", "== 在线调查 =="]
    assert "尊敬的" in text

    # A pause of two weeks: nothing comes until it ends (the app's and the send's clock).
    page.get_by_label("2周").check()
    page.get_by_role("button", name="暂停我的邮件").click()
    page.get_by_text("暂停已设置").wait_for()
    assert JOHN not in issues.send()
    served.clock.now += dt.timedelta(days=13)
    assert JOHN not in issues.send()
    served.clock.now += dt.timedelta(days=2)
    assert JOHN in issues.send()

    # A change of address: nothing changes until the new address confirms.
    page.goto(link)
    page.get_by_label("新地址").fill(NEW)
    page.get_by_role("button", name="发送确认邮件").click()
    page.get_by_text("正在等待").wait_for()
    wait_for(lambda: any(m.rcpt_to == NEW for m in served.smtp.messages))
    confirmation = next(m for m in served.smtp.messages if m.rcpt_to == NEW).parse()
    assert defects(confirmation) == []
    body = confirmation.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    found = re.search(r"http://\S+/a/[A-Za-z0-9_-]+", body)
    assert found is not None
    got = issues.send()
    assert JOHN in got  # unconfirmed: the old address still gets it, the new one nothing
    assert NEW not in got
    page.goto(found.group(0))
    assert choices(served, john)[0] == JOHN  # opening the link changed nothing
    page.get_by_role("button", name="确认新地址").click()
    page.get_by_text("您的地址已更改").wait_for()
    assert choices(served, john)[0] == NEW
    got = issues.send()
    assert NEW in got
    assert JOHN not in got  # the old address gets nothing after the switch
    with served.sessions() as s:
        kinds = {m.kind for m in s.scalars(select(SystemMail).where(SystemMail.member_id == john))}
    assert kinds == {"address"}
