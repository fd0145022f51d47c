"""Hostile input on the board, on SQLite and PostgreSQL, with cases Hypothesis generates beside the
classic ones: script in messages and in names is inert on the board, in reply notices and in
the issue; a message over the limits is refused with its reason and stores nothing; forged,
altered and misused session cookies, CSRF tokens and sign-in links do nothing."""

from __future__ import annotations

import re
import urllib.parse
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from newsletter.config import BoardSettings
from newsletter.content import board as text
from newsletter.content.compiler import BoardPost, compile_issue, item_views
from newsletter.services import issues
from newsletter.storage.models import Item, Member
from newsletter.tokens import Kind
from newsletter.web.auth import MEMBER_COOKIE
from tests import steps
from tests.boardsite import LI, WANG, Board, Reader, board_site, html_of
from tests.snapshot import snapshot, tables_of
from tests.test_hostile_web import ALPHABET, ODD, alter, edits

__all__ = ["board_site"]

CASES = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CLASSIC = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    '"><script>alert(1)</script>',
    "'><img src=x onerror=alert(document.cookie)>",
    '<a href="javascript:alert(1)">click</a>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](java\tscript:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](javascript:alert(1))",
    "<iframe src=javascript:alert(1)></iframe>",
    "<body onload=alert(1)>",
    "<style>*{background:url(javascript:alert(1))}</style>",
    "<math><mi xlink:href=javascript:alert(1)>x</mi></math>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "```\n<script>alert(1)</script>\n```",
    "<details open ontoggle=alert(1)>",
    '<a href="http://x" onclick="alert(1)">x</a>',
    '[x](http://example.org "title" onmouseover=alert(1))',
    "<form action=javascript:alert(1)><button>x</button></form>",
    "<meta http-equiv=refresh content='0;url=javascript:alert(1)'>",
    "\x00<script>alert(1)</script>",
    "\u202e<script>alert(1)</script>",
    "{{ 7*7 }} {% raw %}",
    "\x00csrf\x00 \x00me\x00 \x00ctl-1\x00",
)
FRAGMENTS = (
    "<", ">", "/", '"', "'", "=", " ", "\n", "`", "[", "]", "(", ")", "!", "&#", ";",
    "script", "img", "svg", "a", "iframe", "on", "error", "load", "click", "href", "src",
    "javascript:", "data:", "alert(1)", "x", "http://e.org", "\x00", "\u202e",
)  # fmt: skip
payloads = st.one_of(
    st.sampled_from(CLASSIC),
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=25).map("".join),
    st.text(min_size=1, max_size=120),
)
SCRIPT_URL = re.compile(r"^\s*(javascript|data|vbscript)\s*:", re.I)
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href", "background", "poster"}
ALWAYS_BAD = {"iframe", "object", "embed", "svg", "math", "frame", "frameset", "applet", "base"}


class Inert(HTMLParser):
    """What in a page could run script: tags, handlers, addresses. A page of ours may have
    our own script (`allowed_scripts`), our stylesheet and meta tags, and, in mail, styles."""

    def __init__(self, allowed_scripts: tuple[str, ...], mail: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.allowed_scripts, self.mail = allowed_scripts, mail
        self.problems: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.check_tag(tag, attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")
            if name == "style" and not self.mail:
                self.problems.append(f"<{tag} style=...>")
            if name in URL_ATTRIBUTES and value and SCRIPT_URL.match(value):
                self.problems.append(f"<{tag} {name}={value!r}>")

    def check_tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ALWAYS_BAD or (tag == "img" and not self.mail):
            self.problems.append(f"<{tag}>")
        if tag == "script":
            if found.get("src") not in self.allowed_scripts:
                self.problems.append(f"<script {attrs}>")
            self.in_script = True
        if tag == "meta" and "http-equiv" in found:
            self.problems.append("<meta http-equiv>")
        if tag == "style" and not self.mail:
            self.problems.append("<style> on a page")
        if tag == "link" and found.get("href") not in ("/static/site.css", "/static/desk.css"):
            self.problems.append(f"<link {attrs}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.problems.append(f"inline script: {data[:60]!r}")


def inert(page: str, *, mail: bool = False) -> list[str]:
    parser = Inert(("/static/person.js",), mail)
    parser.feed(page)
    parser.close()
    return parser.problems


def _member(b: Board, email: str) -> Reader:
    """One signed-in member a test's examples share (signing in once, not per example)."""
    cache: dict[str, Reader] = b.__dict__.setdefault("_signed_in", {})
    if email not in cache:
        cache[email] = b.sign_in(email)
    return cache[email]


def _rename(b: Board, email: str, name: str) -> None:
    """Store any name (past the cleaning names get when they come in), but NUL, which
    PostgreSQL's text cannot hold."""
    with b.sessions.begin() as s:
        s.execute(update(Member).where(Member.email == email).values(name=name.replace("\x00", "")))


LIMITS = {"held_posts": 0, "posts_per_hour": 100_000, "posts_per_ip_hour": 100_000}


@pytest.mark.board_config(**LIMITS)
@settings(CASES, max_examples=60)
@given(body=payloads, name=payloads)
@example(body=CLASSIC[0], name=CLASSIC[1])
@example(body=CLASSIC[6], name='"><script>alert(1)</script>')
def test_script_in_messages_and_names_is_inert_on_the_board(
    board_site: Board, body: str, name: str
) -> None:
    b = board_site
    li, wang = _member(b, LI), _member(b, WANG)
    _rename(b, LI, name)
    answer = li.post(body)
    if answer.status_code != 303:  # refused (empty, too many links): nothing to show
        assert answer.status_code == 400
        assert not inert(answer.text)
        assert "error" in answer.text
        return
    thread = b.messages()[-1].id
    wang.post(body, f"/board/{thread}")  # a reply too: its controls differ
    for reader, path in ((li, f"/board/{thread}"), (wang, "/board"), (b.reader(), "/board")):
        page = reader.client.get(path).text
        assert inert(page) == [], (path, body, name)
    hits = b.reader().client.get("/search", params={"q": body[:100]}).text
    assert inert(hits) == []
    # The name is shown as the text it is (the page drops only control characters).
    shown = text.display_name(name.replace("\x00", ""))
    assert shown in _texts(b.reader().client.get(f"/board/{thread}").text)


class Texts(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_data(self, data: str) -> None:
        self.found.append(data)


def _texts(page: str) -> str:
    parser = Texts()
    parser.feed(page)
    return " ".join(" ".join(parser.found).split())


@pytest.mark.board_config(**LIMITS)
@settings(CASES, max_examples=30)
@given(body=payloads, name=payloads)
@example(body=CLASSIC[1], name=CLASSIC[0])
def test_script_in_replies_and_names_is_inert_in_reply_notices(
    board_site: Board, body: str, name: str
) -> None:
    b = board_site
    li, wang = _member(b, LI), _member(b, WANG)
    _rename(b, WANG, name)
    li.post("A thread for notices")
    b.clock.advance(days=2)  # one notice a thread a day: each example gets its own thread
    answer = wang.post(body, f"/board/{b.messages()[-1].id}")
    if answer.status_code != 303:
        return
    notice = b.mails("board-reply", LI)[-1]
    assert inert(html_of(notice), mail=True) == []
    assert (
        notice["Subject"] == "A reply to your message on the China IP — Comprehensive Reports board"
    )


@settings(CASES, max_examples=25)
@given(excerpt=payloads, name=payloads)
@example(excerpt=CLASSIC[0], name=CLASSIC[2])
def test_script_in_the_issues_board_section_is_inert(
    excerpt: str, name: str, settings_for_compile: Any
) -> None:
    env, config = settings_for_compile
    item = Item(id=1, guid="g", title="A report", body_html="<p>Body</p>", body_text="Body")
    post = BoardPost(
        1, text.display_name(name), text.excerpt(text.tidy(excerpt)), 2, "http://x/b/1"
    )
    compiled = compile_issue(config, env, item_views([item]), None, board=[post])
    assert "From the members' board" in compiled.html
    assert inert(compiled.html, mail=True) == []


@pytest.fixture
def settings_for_compile() -> Any:
    from newsletter.site import environment
    from tests.steps import _any_settings

    config = _any_settings()
    return environment(config.site_dir), config


@pytest.mark.board_config(held_posts=0)
def test_classic_payloads_are_inert_in_a_released_issue(board_site: Board, site: Any) -> None:
    b = board_site
    steps.import_source(b.sessions, str(site / "examples" / "seed-feed.xml"))
    li = b.sign_in(LI)
    _rename(b, LI, CLASSIC[1])
    for body in CLASSIC[:6]:
        assert li.post(body).status_code in (303, 400)
    issue = b.run(issues.release_next)
    html = b.services.read(issues.stored, issue.issue_id).html
    assert "From the members' board" in html
    assert inert(html, mail=True) == []
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # the name, as text


# --- over the limits -----------------------------------------------------------------------------

SMALL = {"held_posts": 0, "max_chars": 300, "max_links": 2, "posts_per_hour": 100_000}
LINK_FORMS = ("http://e.org/{n}", "https://e.org/{n}", "www.e{n}.org", "[l{n}](https://e.org/{n})")


@pytest.mark.board_config(**SMALL)
@settings(CASES, max_examples=40)
@given(
    case=st.one_of(
        st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=301, max_size=900)
        .filter(lambda t: len(text.tidy(t)) > 300)
        .map(lambda t: ("max_chars", t)),
        st.lists(st.sampled_from(LINK_FORMS), min_size=3, max_size=12).map(
            lambda forms: ("max_links", " ".join(f.format(n=n) for n, f in enumerate(forms)))
        ),
    )
)
@example(case=("max_chars", "x" * 301))
@example(case=("max_links", "http://a.org http://b.org http://c.org"))
def test_a_message_over_the_limits_is_refused_and_stores_nothing(
    board_site: Board, case: tuple[str, str]
) -> None:
    b = board_site
    li = _member(b, LI)
    key, body = case
    tables = b.__dict__.setdefault("_tables", tables_of(b.sessions))
    before = snapshot(b.sessions, tables)
    answer = li.post(body)
    assert answer.status_code == 400
    assert f"(board.{key})" in answer.text
    assert snapshot(b.sessions, tables) == before


def test_the_limits_refuse_in_the_content_layer_too() -> None:
    limits = BoardSettings(max_chars=30, max_links=1)
    with pytest.raises(text.MessageRefused, match=r"31 characters long; the most is 30"):
        text.render("x" * 31, limits)
    with pytest.raises(text.MessageRefused, match=r"carries 2 links; the most is 1"):
        text.render("www.a.org b.org http://c", limits)
    with pytest.raises(text.MessageRefused, match="empty"):
        text.render(" \x00\n\t ", limits)


# --- forged and misused tokens --------------------------------------------------------------------

cookies = st.one_of(
    st.text(ALPHABET + ODD, max_size=80),
    st.tuples(st.sampled_from(list(Kind)), st.lists(st.integers(0, 2**63 - 1), max_size=3)),
)


@pytest.mark.board_config(held_posts=0)
@settings(CASES, max_examples=80)
@given(cookie=cookies, changes=st.lists(edits, min_size=1, max_size=2), csrf_case=st.integers(0, 3))
@example(cookie="", changes=[("delete", 0, "")], csrf_case=0)
@example(cookie=(Kind.SESSION, [99, 0, 1]), changes=[("case", 0, "")], csrf_case=1)
def test_forged_sessions_and_csrf_tokens_post_nothing(
    board_site: Board, cookie: Any, changes: Any, csrf_case: int
) -> None:
    b = board_site
    li = _member(b, LI)
    genuine = li.client.cookies[MEMBER_COOKIE]
    signer = b.services.signer
    if isinstance(cookie, tuple):  # a token we signed, of some kind, with any values
        kind, values = cookie
        values = [*values, 0, 0, 0][: len(kind.fields)]
        if kind is Kind.SESSION and values[:2] == [b.member_id(LI), 0]:
            return  # Li's own session (another of her devices): genuine, not a forgery
        forged = signer.make(kind, *values)
    elif cookie:
        forged = cookie
    else:
        forged = genuine
        for change in changes:
            forged = alter(forged, change)
    if forged == genuine:
        return
    csrf = (li.csrf(), "", signer.make(Kind.FORM, b.member_id(LI), 1), "x" * 40)[csrf_case]
    tables = b.__dict__.setdefault("_tables", tables_of(b.sessions))
    before = snapshot(b.sessions, tables)
    attacker = b.reader()
    attacker.client.cookies.set(MEMBER_COOKIE, urllib.parse.quote(forged, safe=""))
    for path in ("/board", "/board/1", "/signout/everywhere", "/board/notices"):
        answer = attacker.client.post(
            path, data={"csrf": csrf, "body": "forged"}, follow_redirects=False
        )
        assert answer.status_code in (403, 404), (path, answer.status_code)
    if csrf_case:  # Li's own session with a wrong CSRF token: refused as well
        own = li.client.post("/board", data={"csrf": csrf, "body": "x"}, follow_redirects=False)
        assert own.status_code == 403
    assert snapshot(b.sessions, tables) == before


@settings(CASES, max_examples=60)
@given(
    kind=st.sampled_from((Kind.SIGNIN, Kind.BOARD, Kind.NOTICES)),
    values=st.lists(st.integers(0, 2**63 - 1), min_size=2, max_size=2),
    changes=st.lists(edits, min_size=0, max_size=2),
)
@example(kind=Kind.SIGNIN, values=[1, 99], changes=[])
@example(kind=Kind.SIGNIN, values=[2**31, 1], changes=[])
@example(kind=Kind.BOARD, values=[99, 1], changes=[])
@example(kind=Kind.NOTICES, values=[1, 0], changes=[("lowbit", 0, "")])
def test_forged_and_altered_signin_links_sign_nobody_in(
    board_site: Board, kind: Kind, values: list[int], changes: Any
) -> None:
    b = board_site
    genuine = b.services.signer.make(kind, *values[: len(kind.fields)])
    token = genuine
    for change in changes:
        token = alter(token, change)
    prefix = {Kind.SIGNIN: "/s/", Kind.BOARD: "/b/", Kind.NOTICES: "/n/"}[kind]
    path = prefix + urllib.parse.quote(token, safe="")
    # No sign-in row exists here, so only an unaltered board or notices link of a member
    # (1 to 6; 6 has left, so cannot sign in) may do anything at all.
    names_member = token == genuine and 1 <= values[0] <= 6 and kind is not Kind.SIGNIN
    signs_in = names_member and kind is Kind.BOARD and values[0] <= 5
    tables = b.__dict__.setdefault("_tables", tables_of(b.sessions))
    before = snapshot(b.sessions, tables)
    visitor = b.reader()
    for method in ("HEAD", "GET", "POST"):
        form = {"person": "1"} if method == "POST" else None
        answer = visitor.client.request(method, path, data=form, follow_redirects=False)
        assert answer.status_code < 500
        assert ("set-cookie" in answer.headers) == (signs_in and method == "POST")
    if not names_member:
        assert snapshot(b.sessions, tables) == before
    assert (MEMBER_COOKIE in visitor.client.cookies) == signs_in


def test_a_signin_token_is_not_a_board_link_nor_a_session(board_site: Board) -> None:
    """A genuine token of one kind does nothing where another kind is expected."""
    b = board_site
    link = b.signin_link(LI)
    token = link.removeprefix("/s/")
    misuse = b.reader()
    assert misuse.client.get(f"/b/{token}").status_code == 400
    assert "not meant for this link" in misuse.client.post(f"/b/{token}").text
    misuse.client.cookies.set(MEMBER_COOKIE, token)
    assert "Signed in as" not in misuse.client.get("/board").text
    assert b.audits("sign-in") == 0
