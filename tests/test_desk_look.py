"""The desk's look in headless Chromium: every desk page, at 1280 and 375 px, scrolls no wider
than the window, has no axe-core violation of serious or critical impact, and can be used with
the keyboard (a skip link first, every control reached by Tab and showing a focus ring); a
full-page screenshot of each is written to the test's temporary directory, or, with
NEWSLETTER_SCREENSHOTS set to a folder (`make screenshots` sets docs/screenshots/, linked from
docs/desk.md), there.

axe-core comes from npm (tests/package.json and its lock file; `.ci/run` installs it with
`npm ci --prefix tests`). Without it this test is skipped locally and fails under CI.

To check a new page, add a `DeskPage` to `PAGES`: the screenshot is named after it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, FilePayload, Page, expect
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content.verp import Verp
from newsletter.services import (
    board,
    bounces,
    erasure,
    issues,
    items,
    members,
    membership,
    moderation,
    sending,
    votes,
)
from newsletter.services.unit import Services
from newsletter.storage import clicks as click_rows
from newsletter.storage import db
from newsletter.storage.models import Issue
from newsletter.web.app import create_app
from tests import returns
from tests.browser import IN_CI, live_server
from tests.smtpd import RecordingHandler
from tests.test_desk import EDITOR, PASSWORD, desk_settings

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
AXE = REPO / "tests" / "node_modules" / "axe-core" / "axe.min.js"
WIDTHS = (1280, 375)
HEIGHT = 900
BLOCKING = ("serious", "critical")  # impacts that fail the test; the others are printed
# One moment for everything the pages show (dates, the audit log), so the screenshots only
# change when the look does.
NOW = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
ACTOR = "test"


@dataclass(frozen=True)
class Ids:
    """What the pages' paths name: an item still waiting, the issue that went out, the
    survey it carried, a member with attributes, and an erased member."""

    item: int
    issue: int
    survey: int
    member: int = 1  # one whose mail came back
    erased: int = 2


@dataclass(frozen=True)
class DeskPage:
    """One desk page to check, in the state `act` leaves it in (after it is loaded)."""

    name: str  # the screenshot: docs/screenshots/desk-<name>-<width>.png
    path: str  # may name {item}, {issue}, {survey}, {member} and {erased} (see Ids)
    status: int = 200
    logged_in: bool = True
    act: Callable[[Page], None] | None = None


def wrong_password(page: Page) -> None:
    page.fill("input[name=name]", EDITOR)
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("Wrong name or password")


def send_a_test(page: Page) -> None:
    page.fill("#test-to", "proof@example.org")
    page.click("#send-test")
    expect(page.locator("#notice")).to_contain_text("test message sent to proof@example.org")


def upload_mailchimp(page: Page) -> None:
    """The import's mapping step, for a Mailchimp export with many columns."""
    upload: FilePayload = {
        "name": "subscribed_members_export.csv",
        "mimeType": "text/csv",
        "buffer": (DATA / "mailchimp_subscribed.csv").read_bytes(),
    }
    page.set_input_files("#import-file", files=[upload])
    page.click("#upload")
    expect(page.locator("#layout")).to_contain_text("Mailchimp")


def add_refused(page: Page) -> None:
    page.fill("#add-email", "li.wei@example.org")
    page.click("#add-member")
    expect(page.locator("#notice")).to_contain_text("already a member")


def refused_survey(page: Page) -> None:
    page.fill("#question", "Which section do you read first?")
    page.fill("#option-1", "People watch")
    page.fill("#option-2", "people  WATCH")
    page.click("#make-survey")
    expect(page.locator("#error")).to_contain_text("repeats option 1")


# Every desk page, logged out first, then in. Pages added by others join this list.
PAGES: tuple[DeskPage, ...] = (
    DeskPage("login", "/desk/login", logged_in=False),
    DeskPage("login-error", "/desk/login", status=200, logged_in=False, act=wrong_password),
    DeskPage("issues", "/desk"),
    DeskPage("issues-notice", "/desk", act=send_a_test),
    DeskPage("next", "/desk/next"),
    DeskPage("item-new", "/desk/items/new"),
    DeskPage("item-edit", "/desk/items/{item}/edit"),
    DeskPage("send", "/desk/send"),
    DeskPage("issue", "/desk/issues/{issue}"),
    DeskPage("preview", "/desk/preview"),
    DeskPage("surveys", "/desk/surveys"),
    DeskPage("survey-new", "/desk/surveys/new"),
    DeskPage("survey-refused", "/desk/surveys/new", act=refused_survey),
    DeskPage("survey", "/desk/surveys/{survey}"),
    DeskPage("board", "/desk/board"),
    DeskPage("members", "/desk/members"),
    DeskPage("members-refused", "/desk/members", act=add_refused),
    DeskPage("member", "/desk/members/{member}"),
    DeskPage("member-erased", "/desk/members/{erased}"),
    DeskPage("members-import", "/desk/members", act=upload_mailchimp),
    DeskPage("member-bounces", "/desk/members/{member}/bounces"),
    DeskPage("audit", "/desk/audit"),
    DeskPage("not-found", "/desk/issues/999", status=404),
)


@pytest.fixture(scope="module")
def axe_js() -> str:
    """axe-core's script, to run in each page (the CSP does not apply to page.evaluate)."""
    if not AXE.is_file():
        message = f"{AXE} is missing: npm ci --prefix tests (.ci/run does it)"
        if IN_CI:
            pytest.fail(f"{message}; axe-core is required in CI")
        pytest.skip(message)
    return AXE.read_text(encoding="utf-8")


def _in_thread(work: Callable[[], Any]) -> Any:
    # Playwright's sync API marks its own event loop as running in this thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


@pytest.fixture
def desk_site(
    site: Path, tmp_path: Path, smtp_server: RecordingHandler
) -> Iterator[tuple[Settings, sessionmaker[Session], Ids]]:
    """The sample site after one issue went out (one member's server refused it), with new
    items waiting for the next: one written on the desk with a long unbroken title, one held."""
    settings = desk_settings(site, f"sqlite:///{tmp_path / 'look.db'}", smtp_server.port)
    sessions = db.open_database(settings.database_url)
    services = Services(settings, sessions, clock=lambda: NOW)
    # From the repository, not the site's copies: the audit log shows the paths.
    members.import_file(services, REPO / "subscribers" / "example.csv", actor=ACTOR)
    items.import_source(services, str(REPO / "examples" / "seed-feed.xml"), actor=ACTOR)
    smtp_server.refuse["wang.fang@example.org"] = "550 5.1.1 <wang.fang@example.org>: no such user"
    released = services.run(ACTOR, issues.release_next)
    _in_thread(lambda: asyncio.run(sending.deliver(services, released.issue_id)))
    smtp_server.refuse.clear()
    with sessions.begin() as s:  # the ledger stamps the wall clock; the screenshots want NOW
        s.execute(
            update(Issue)
            .where(Issue.id == released.issue_id)
            .values(sent_at=NOW + dt.timedelta(minutes=12))
        )
        survey_id = s.scalar(select(Issue.survey_id).where(Issue.id == released.issue_id))
    assert survey_id is not None
    options = [o.position for o in services.read(votes.results, survey_id).options]
    chosen = (options[0], options[1], options[0], options[2])
    for member_id, option in zip((1, 2, 3, 4), chosen, strict=True):
        services.run(ACTOR, votes.click, survey_id, member_id, option, method="POST", person=True)
    # What came back: a bounce and a delay for member 1, clicks people and scanners made.
    verp = Verp(settings.list.return_path, services.signer).address(released.issue_id, 1)
    for raw in (
        returns.dsn(to=verp, recipient="li.wei@example.org"),
        returns.dsn(to=verp, recipient="li.wei@example.org", action="delayed", status="4.4.7"),
    ):
        bounces.take(services, raw, source="smtp")
    with sessions.begin() as s:
        click_rows.add_counts(s, {(released.issue_id, 0): (3, 5), (released.issue_id, 2): (1, 4)})
    drafts = [
        items.ItemDraft(
            title="Court backs the patent holder in a long-running dispute over battery cells",
            body_md="The court **upheld** the patent.\n\n- claims 1 to 7 stand\n- costs awarded",
            section="International IP Firms",
            url="https://example.org/reports/battery-cells",
            date=NOW.date(),
        ),
        items.ItemDraft(
            title="https://example.org/reports/2026/an-unbroken-address-pasted-as-a-title-"
            "that-must-wrap-rather-than-widen-the-page",
            body_md="A title an editor pasted: it must wrap, not widen the page.",
            section="People watch",
        ),
        items.ItemDraft(
            title="Held back: the assessment is still being checked",
            body_md="Not ready yet.",
            section="Inquiry and Assessment",
        ),
    ]
    written = [services.run(ACTOR, items.write, d) for d in drafts]
    services.run(ACTOR, items.hold, written[-1].guid)
    # The board's queue: a new member's held first post, a message three members reported,
    # and a member blocked for a week.
    post = "Has anyone pledged a **patent portfolio** as collateral? We are looking at it."
    services.run(ACTOR, board.post, 1, 0, post, ip="192.0.2.1")
    services.run(ACTOR, board.post, 2, 0, "Cheap watches: https://example.org/watches", ip="")
    services.run(ACTOR, moderation.approve, 2)
    for reporter, why in ((3, "Selling counterfeits"), (4, ""), (5, "Spam")):
        services.run(ACTOR, board.report, reporter, 0, 2, why)
    services.run(
        ACTOR, moderation.block, 4, "Links to counterfeit goods", NOW + dt.timedelta(days=7)
    )
    services.run(
        ACTOR,
        membership.edit_member,
        1,
        attributes={"company": "Example IP Law Firm", "city": "Beijing", "since": "2017"},
    )
    gone = services.run(ACTOR, membership.add_member, "erase.me@example.org", "Erase Me")
    services.run(ACTOR, erasure.erase_member, gone.id, reason="asked by mail")
    ids = Ids(item=written[0].id, issue=released.issue_id, survey=survey_id, erased=gone.id)
    yield settings, sessions, ids
    sessions.kw["bind"].dispose()


OVERFLOWING = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.right > width + 0.5 && box.width > 0) {
      const id = el.id ? "#" + el.id : "";
      const cls = el.classList.length ? "." + [...el.classList].join(".") : "";
      out.push(`${el.tagName.toLowerCase()}${id}${cls} (right edge ${Math.round(box.right)} px)`);
    }
  }
  return out.slice(0, 8);
}"""

RUN_AXE = """async () => {
  const result = await axe.run(document, { iframes: false, resultTypes: ["violations"] });
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map((n) => ({ target: n.target.join(" "), summary: n.failureSummary })),
  }));
}"""

# Numbers every control a keyboard should reach (visible, enabled) and names it.
FOCUSABLE = """() => {
  const selector = 'a[href], button, input:not([type="hidden"]), select, textarea, iframe, '
    + '[tabindex]:not([tabindex="-1"])';
  const names = [];
  for (const el of document.querySelectorAll(selector)) {
    if (el.disabled || el.closest("[hidden], [inert]") || !el.getClientRects().length) continue;
    el.dataset.tabStop = String(names.length);
    const id = el.id ? "#" + el.id : "";
    const text = (el.getAttribute("aria-label") || el.textContent || el.name || "").trim();
    names.push(`${el.tagName.toLowerCase()}${id} "${text.slice(0, 40)}"`);
  }
  return names;
}"""

# Where the focus is, and whether it shows: an outline of 2 px or more, inside the window.
FOCUSED = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  const box = el.getBoundingClientRect();
  return {
    stop: el.dataset.tabStop ?? null,
    tag: el.tagName.toLowerCase(),
    ring: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
    seen: box.width > 0 && box.height > 0 && box.left >= -1 && box.right <= innerWidth + 1,
    skip: el.classList.contains("skip"),
  };
}"""


def describe(violation: dict[str, Any]) -> str:
    lines = [f"  [{violation['impact']}] {violation['id']}: {violation['help']}"]
    for node in violation["nodes"][:5]:
        summary = " ".join(str(node["summary"] or "").split())
        lines.append(f"      {node['target']}: {summary}")
    if len(violation["nodes"]) > 5:
        lines.append(f"      … and {len(violation['nodes']) - 5} more")
    return "\n".join(lines)


def overflow(page: Page) -> str | None:
    """Why the page scrolls sideways, or None."""
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    inner_width = page.evaluate("window.innerWidth")
    if scroll_width <= inner_width:
        return None
    wide = "\n".join(f"      {e}" for e in page.evaluate(OVERFLOWING))
    return f"the page scrolls sideways ({scroll_width} > {inner_width} px); too wide:\n{wide}"


def keyboard(page: Page) -> list[str]:
    """Tab through the page: the skip link comes first and takes the focus to the content,
    every control is reached, and each shows a focus ring where it can be seen."""
    names: list[str] = page.evaluate(FOCUSABLE)
    reached, found = tab_through(page, names)
    found.extend(
        f"{n} is never reached by Tab" for i, n in enumerate(names) if str(i) not in reached
    )
    if not page.locator("a.skip").count():
        return [*found, "there is no skip link (a.skip)"]
    page.focus("a.skip")
    page.keyboard.press("Enter")
    if page.evaluate("document.activeElement.id") != "main":
        found.append("the skip link does not take the focus to <main>")
    return found


def tab_through(page: Page, names: list[str]) -> tuple[set[str], list[str]]:
    """The Tab stops reached (FOCUSABLE's numbers) from the top of the page, once round, and
    what was wrong with them."""
    found: list[str] = []
    reached: set[str] = set()
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.evaluate("window.scrollTo(0, 0)")
    # A framed preview adds stops of its own (the email's links), and a date input one for
    # each of its parts: the focus stays on the frame or the input meanwhile.
    first = None
    for press in range(len(names) + 200):
        page.keyboard.press("Tab")
        focused: dict[str, Any] | None = page.evaluate(FOCUSED)
        if focused is None:
            break  # past the last control
        if press == 0 and not focused["skip"]:
            found.append(f"the first Tab stop is {focused['tag']}, not the skip link")
        stop = focused["stop"]
        if stop is None:
            continue  # an element the page made focusable after it loaded
        if stop == first:
            break  # round again
        first = first or stop
        if stop in reached:
            continue
        reached.add(stop)
        if focused["tag"] == "iframe":
            continue  # the frame's document shows its own focus
        if not focused["ring"]:
            found.append(f"{names[int(stop)]} shows no focus ring")
        if not focused["seen"]:
            found.append(f"{names[int(stop)]} has the focus out of sight")
    return reached, found


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_every_desk_page_looks_right(
    axe_js: str,
    desk_site: tuple[Settings, sessionmaker[Session], Ids],
    page: Page,
    width: int,
    tmp_path: Path,
) -> None:
    settings, sessions, ids = desk_site
    shots = Path(os.environ.get("NEWSLETTER_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": HEIGHT})
    problems: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    refused: list[str] = []  # the CSP allows no inline style or script: none may be tried

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    page.on("console", on_console)
    logged_in = False
    with live_server(create_app(settings, sessions, clock=lambda: NOW)) as base:
        for desk_page in PAGES:
            if desk_page.logged_in and not logged_in:
                page.goto(f"{base}/desk/login")
                page.fill("input[name=name]", EDITOR)
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                expect(page.locator("h1")).to_have_text("Issues")
                logged_in = True
            where = f"{desk_page.name} ({desk_page.path}) at {width} px"
            response = page.goto(
                base
                + desk_page.path.format(
                    item=ids.item,
                    issue=ids.issue,
                    survey=ids.survey,
                    member=ids.member,
                    erased=ids.erased,
                )
            )
            assert response is not None, where
            assert response.status == desk_page.status, where
            if desk_page.act is not None:
                desk_page.act(page)
            page.wait_for_load_state("load")
            page.screenshot(path=str(shots / f"desk-{desk_page.name}-{width}.png"), full_page=True)

            wide = overflow(page)
            if wide:
                problems.append(f"{where}: {wide}")

            page.evaluate(axe_js)
            violations: list[dict[str, Any]] = page.evaluate(RUN_AXE)
            tally = counts.setdefault(desk_page.name, {})
            for v in violations:
                tally[str(v["impact"])] = tally.get(str(v["impact"]), 0) + 1
            blocking = [v for v in violations if v["impact"] in BLOCKING]
            if blocking:
                problems.append(f"{where}: axe-core found\n" + "\n".join(map(describe, blocking)))
            minor = [v for v in violations if v["impact"] not in BLOCKING]
            if minor:
                print(f"{where}: axe-core also found\n" + "\n".join(map(describe, minor)))

            problems.extend(f"{where}: {p}" for p in keyboard(page))
            problems.extend(f"{where}: {text}" for text in refused)
            refused.clear()
    # Every page's tally, failing or not: minor and moderate findings are worth reading too.
    print(f"axe-core violations by impact at {width} px: {json.dumps(counts, sort_keys=True)}")
    assert not problems, "\n".join(problems)
