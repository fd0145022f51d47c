"""Hostile input changes nothing (issue 11): generated requests against a site with a sent issue.

Each property is checked on cases Hypothesis generates, with the concrete ones found or feared
as @example: every answer carries the security headers and an error is the site's own page
(HTML in its layout, or JSON under /api); signed but meaningless tokens and altered real
links get the "This link does not work" page and record nothing; only issues that have gone
out are public; raw link hits stay bounded however many links are fetched. "Record nothing"
is checked on every table at once: a snapshot (tests/snapshot.py) taken before each case
equals the one taken after it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import string
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Table, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.services import evidence, members, votes
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.storage.models import (
    Delivery,
    LinkHit,
    LinkHitCount,
    Member,
    SurveyOption,
    SystemMail,
    Vote,
)
from newsletter.tokens import Kind, Signer
from newsletter.web.app import create_app
from tests import steps
from tests.smtpd import RecordingHandler
from tests.snapshot import Snapshot, snapshot, tables_of
from tests.test_audit import refuse_audit
from tests.test_desk import TOKEN, desk_settings
from tests.test_web import LINK, Clock

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_ID = 2**31 - 1  # PostgreSQL's INTEGER ids
ONE_CLICK = b"List-Unsubscribe=One-Click"  # RFC 8058's body
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
MASTHEAD = '<header class="masthead">'
BAD_LINK = "This link does not work"

# Function-scoped fixtures are meant here: every case runs against the same site, and each
# asserts that it left the site as it found it.
CASES = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Site:
    settings: Settings
    sessions: sessionmaker[Session]
    services: Services
    client: TestClient
    clock: Clock
    signer: Signer
    links: dict[str, list[str]]  # member email → the paths of every link in their message
    confirm: str  # the path of a pending member's confirmation link, from its queued message
    member_ids: frozenset[int] = frozenset()
    survey_options: dict[int, frozenset[int]] = field(default_factory=dict)
    public_issues: frozenset[int] = frozenset()
    tables: list[Table] = field(default_factory=list)

    def snap(self) -> Snapshot:
        """Every table's rows (the schema reflected once: the cases change rows only)."""
        return snapshot(self.sessions, self.tables)

    @property
    def emails(self) -> list[str]:
        return sorted(self.links)

    def link(self, kind: str, member: int, option: int = 0) -> str:
        """One of a member's links: vote (option 0-2), unsubscribe, trap, view; or confirm."""
        if kind == "confirm":
            return self.confirm
        paths = self.links[self.emails[member % len(self.emails)]]
        marker = {"vote": "/v/", "unsubscribe": "/u/", "trap": "/t/", "view": "/archive/"}[kind]
        found = [p for p in paths if p.startswith(marker)]
        return found[option % len(found)]


def _paths(base: str, urls: list[str]) -> list[str]:
    return [u.replace(base, "") for u in urls]


def _confirmation_path(sessions: sessionmaker[Session], mail_id: int, base: str) -> str:
    with sessions() as s:
        raw = s.scalars(select(SystemMail.message).where(SystemMail.id == mail_id)).one()
    message = BytesParser(policy=policy.default).parsebytes(raw)
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    found = re.search(r"https?://\S+/c/[A-Za-z0-9_-]+", body.get_content())
    assert found, "the confirmation carries its link"
    return found.group(0).replace(base, "")


@pytest.fixture
def sent(site: Path, database_url: str, smtp_server: RecordingHandler) -> Iterator[Site]:
    """The sample site after its first issue went to its five members, with an editor and an
    API token configured, and one pending sign-up whose confirmation is queued."""
    config = desk_settings(site, database_url, smtp_server.port)
    sessions = db.open_database(config.database_url)
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    asyncio.run(steps.send(config, sessions))
    base = config.list.base_url
    links: dict[str, list[str]] = {}
    for rcpt, (message,) in smtp_server.by_recipient().items():
        html = message.parse().get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
        links[rcpt] = _paths(base, [m.group(0) for m in LINK.finditer(html)])
    clock = Clock()
    clock.advance(600)  # people read their mail some minutes after it arrives
    services = Services(config, sessions, clock=clock)
    signup = services.run("test", members.subscribe, "new.reader@example.org", "", ip="192.0.2.9")
    assert signup.mail_id is not None
    with sessions() as s:
        member_ids = frozenset(s.scalars(select(Member.id)).all())
        options: dict[int, set[int]] = {}
        for survey_id, position in s.execute(select(SurveyOption.survey_id, SurveyOption.position)):
            options.setdefault(survey_id, set()).add(position)
        public = frozenset(
            s.scalars(select(Delivery.issue_id).where(Delivery.status == "sent")).all()
        )
    assert public == {1}
    assert options == {1: {1, 2, 3}}
    tables = tables_of(sessions)
    assert {"members", "votes", "link_hits", "audit_log", "deliveries"} <= {t.name for t in tables}
    app = create_app(config, sessions, clock=clock, background=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Site(
            config,
            sessions,
            services,
            client,
            clock,
            Signer(config.require_secret()),
            links,
            _confirmation_path(sessions, signup.mail_id, base),
            member_ids,
            {k: frozenset(v) for k, v in options.items()},
            public,
            tables,
        )
    sessions.kw["bind"].dispose()


# --- what every answer must be ---------------------------------------------------------------


def route_of(response: httpx.Response) -> str:
    """The path as the app saw it (percent-decoded)."""
    return urllib.parse.unquote(response.request.url.raw_path.split(b"?")[0].decode("ascii"))


def is_api(route: str) -> bool:
    return route == "/api" or route.startswith("/api/")


def is_person_beacon(method: str, route: str) -> bool:
    """The vote page's script reports a person here; it reads the status only (no page)."""
    return method == "POST" and re.fullmatch(r"/v/[^/]+/person", route) is not None


def assert_security_headers(response: httpx.Response) -> None:
    h, route = response.headers, route_of(response)
    where = f"{response.request.method} {route[:80]!r} → {response.status_code}"
    csp = h.get("content-security-policy", "")
    assert "default-src 'none'" in csp, where
    assert "frame-ancestors 'none'" in csp, where
    assert h.get("x-content-type-options") == "nosniff", where
    assert h.get("referrer-policy") == "no-referrer", where
    assert h.get("x-frame-options") == "DENY", where
    if response.status_code == 200 and route.startswith("/static/"):
        # The one exception the code makes on purpose: the site's own CSS and script, the
        # same for everyone, may be cached for an hour (docs/votes.md says no-store for all).
        assert h.get("cache-control") == "max-age=3600", where
    else:
        assert h.get("cache-control") == "no-store", where


def assert_error_page(response: httpx.Response) -> None:
    """A 4xx or 5xx is the site's own: HTML in the site's layout naming the problem, or JSON
    {"error": ...} under /api."""
    method, route, status = response.request.method, route_of(response), response.status_code
    where = f"{method} {route[:80]!r} → {status}"
    kind = response.headers.get("content-type", "")
    if is_api(route):
        assert kind.startswith("application/json"), where
        if method != "HEAD":
            body = response.json()
            assert isinstance(body, dict), where
            assert list(body) == ["error"], where
            assert isinstance(body["error"], str), where
            assert body["error"], where
        return
    if is_person_beacon(method, route) and status < 500:
        assert response.content == b"", where
        return
    assert kind.startswith("text/html"), where
    if method == "HEAD":
        return
    page = response.text
    assert MASTHEAD in page, where
    heading = re.search(r"<h1>([^<]+)</h1>", page)
    assert heading, where
    assert heading.group(1).strip(), where
    # The problem in a sentence: a message page's lead, or a form's error line.
    assert re.search(r'<p class="(lead|error|notice error)"[^>]*>[^<]+</p>', page), where
    if status == 405:
        assert heading.group(1) == "Not here", where
        assert f"{method} is not what this address takes." in page, where
    if status == 404:
        assert heading.group(1) in ("Not found", "No such issue", "No such survey"), where
    if status == 500:
        assert heading.group(1) == "Something went wrong", where


def assert_answer(response: httpx.Response) -> None:
    assert_security_headers(response)
    assert response.status_code < 500, f"{route_of(response)[:80]!r} → {response.status_code}"
    if response.status_code >= 400:
        assert_error_page(response)


# --- 1. every response carries the security headers --------------------------------------------

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")
KNOWN = (
    "/",
    "/v/",
    "/u/",
    "/t/",
    "/c/",
    "/archive",
    "/archive/",
    "/search",
    "/survey/",
    "/subscribe",
    "/board",
    "/board/",
    "/board/1/",
    "/signin",
    "/signout",
    "/s/",
    "/b/",
    "/n/",
    "/desk",
    "/desk/board/",
    "/desk/login",
    "/desk/issues/1/",
    "/desk/surveys?survey_id=",
    "/desk/preview.html",
    "/api",
    "/api/",
    "/api/issues/",
    "/api/surveys/",
    "/api/members?limit=",
    "/static/",
)
SPECIAL = (
    "..",
    "%2e%2e",
    "%2F",
    "%5C",
    "%00",
    "%FF",
    "%C0%AF",
    "%E2%80%AE",
    "1",
    "0",
    "-1",
    "2147483648",
    "99999999999999999999",
    "person",
    "pause",
    "cancel",
    "openapi.json",
    "site.css",
    "person.js",
)
CONTENT_TYPES = (
    None,
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=zz",
    "application/json",
    "text/plain; charset=utf-16",
    "x/\xe9",  # not ASCII: sent as latin-1 bytes
)


def percent(data: bytes) -> str:
    return "".join(f"%{b:02X}" for b in data)


segments = st.one_of(
    st.text(max_size=30).map(lambda t: urllib.parse.quote(t, safe="")),
    st.binary(min_size=1, max_size=20).map(percent),
    st.sampled_from(SPECIAL),
)
tails = st.one_of(
    st.sampled_from(("", "/", "/person", "/pause", "/results", "?t=%FF", "?q=%00")),
    st.text(max_size=30).map(lambda t: "?q=" + urllib.parse.quote(t, safe="")),
    st.text(max_size=30).map(lambda t: "?t=" + urllib.parse.quote(t, safe="")),
)
paths = st.one_of(
    st.tuples(st.sampled_from(KNOWN), segments, tails).map("".join),
    st.lists(segments, min_size=1, max_size=6).map(lambda s: "/" + "/".join(s)),
    st.tuples(
        st.sampled_from(KNOWN), st.integers(200, 8000), st.sampled_from(("x", "%FF", "/a"))
    ).map(lambda t: t[0] + t[2] * t[1]),
)


@dataclass(frozen=True)
class Req:
    method: str
    path: str  # percent-encoded, as sent
    body: bytes = b""
    content_type: str | None = None
    authorized: bool = False


requests = st.builds(
    Req,
    method=st.sampled_from(METHODS),
    path=paths,
    body=st.one_of(st.just(b""), st.just(ONE_CLICK), st.binary(max_size=300)),
    content_type=st.sampled_from(CONTENT_TYPES),
    authorized=st.booleans(),
)


def static_name_too_long(path: str) -> bool:
    """A /static/ name longer than a file name may be: test_long_static_names_are_not_found."""
    route = urllib.parse.unquote(path.split("?", 1)[0])
    name = route.removeprefix("/static/")
    looked_up = "/" not in name and "\\" not in name and not name.startswith(".")
    return route.startswith("/static/") and looked_up and len(name.encode()) > 255


def newline_under_api(path: str) -> bool:
    """An /api/ path with a line break inside: test_api_paths_with_a_line_break_answer_json."""
    route = urllib.parse.unquote(path.split("?", 1)[0])
    return route.startswith("/api/") and "\n" in route.removesuffix("\n")


def send(client: TestClient, req: Req) -> httpx.Response:
    headers: dict[bytes, bytes] = {}
    if req.content_type:
        headers[b"Content-Type"] = req.content_type.encode("latin-1")
    if req.authorized:
        headers[b"Authorization"] = AUTH["Authorization"].encode()
    # A body only where the method has one; httpx refuses one on GET, HEAD and DELETE.
    content = req.body if req.method in ("POST", "PUT", "PATCH") else None
    # Redirects are answers too: each is checked, not followed.
    # An absolute URL: httpx refuses a relative one starting "//", which a raw client may send.
    return client.request(
        req.method,
        "http://testserver" + req.path,
        content=content,
        headers=headers,
        follow_redirects=False,
    )


@settings(CASES, max_examples=250)
@given(req=requests)
@example(req=Req("GET", "/static/..%2F..%2Fconfig.toml"))
@example(req=Req("GET", "/static/%00"))
@example(req=Req("PUT", "/"))
@example(req=Req("PATCH", "/desk"))
@example(req=Req("DELETE", "/api/issues", authorized=True))
@example(req=Req("GET", "/api/issues/2147483648", authorized=True))
@example(req=Req("GET", "/api/nope", authorized=True))
@example(req=Req("POST", "/api/issues/test", b"{", "application/json", authorized=True))
@example(req=Req("GET", "/v/" + "%FF" * 20))
@example(req=Req("POST", "/v/x/person"))
@example(req=Req("GET", "/v/x/person"))
@example(req=Req("POST", "/u/x", ONE_CLICK, "application/x-www-form-urlencoded"))
@example(req=Req("POST", "/subscribe", b"--zz\r\n\xff", "multipart/form-data; boundary=zz"))
@example(req=Req("GET", "/archive/99999999999999999999"))
@example(req=Req("HEAD", "/survey/4294967296"))
@example(req=Req("GET", "/search?q=%00%FF"))
@example(req=Req("POST", "/board", b"body=x&csrf=y", "application/x-www-form-urlencoded"))
@example(req=Req("POST", "/board/1/report", b"csrf=", "application/x-www-form-urlencoded"))
@example(req=Req("GET", "/board/2147483648"))
@example(req=Req("GET", "/board?page=%FF"))
@example(req=Req("POST", "/signin", b"email=%FF", "application/x-www-form-urlencoded"))
@example(req=Req("HEAD", "/s/x"))
@example(req=Req("POST", "/n/x", ONE_CLICK, "application/x-www-form-urlencoded"))
@example(req=Req("GET", "/desk/surveys?survey_id=%FF"))
@example(req=Req("GET", "/x" * 5000))
def test_every_answer_carries_the_security_headers(sent: Site, req: Req) -> None:
    """Known routes with junk, unknown paths, very long ones, odd bytes, any method and body:
    every answer has the headers, none is a 500, an error is the site's page (JSON under
    /api), and nothing is stored."""
    before = sent.snap()
    response = send(sent.client, req)
    assert_answer(response)
    assert sent.snap() == before


@settings(CASES, max_examples=20)
@given(
    name=st.one_of(
        st.integers(256, 5000).map(lambda n: "a" * n),
        st.integers(86, 2000).map(lambda n: "%FF" * n),  # each decodes to U+FFFD, 3 bytes
        st.text(min_size=256, max_size=600).map(lambda t: urllib.parse.quote(t, safe="")),
    ),
    method=st.sampled_from(("GET", "HEAD")),
)
@example(name="a" * 300, method="GET")
def test_long_static_names_are_not_found(sent: Site, name: str, method: str) -> None:
    path = "/static/" + name
    assume(static_name_too_long(path))
    response = sent.client.request(method, path)
    assert_answer(response)
    assert response.status_code == 404


@settings(CASES, max_examples=20)
@given(
    before=st.text(max_size=10).map(lambda t: urllib.parse.quote(t, safe="")),
    after=st.text(min_size=1, max_size=10).map(lambda t: urllib.parse.quote(t, safe="")),
    method=st.sampled_from(METHODS),
    authorized=st.booleans(),
)
@example(before="issues", after="x", method="GET", authorized=True)
def test_api_paths_with_a_line_break_answer_json(
    sent: Site, before: str, after: str, method: str, authorized: bool
) -> None:
    response = send(sent.client, Req(method, f"/api/{before}%0A{after}", authorized=authorized))
    assert_answer(response)


@dataclass(frozen=True)
class Failing:
    """A request whose use-case writes, sent while the database refuses those writes."""

    method: str
    link: str  # a member link kind, or "api-test"
    member: int = 0
    option: int = 0


FAILING = (
    Failing("GET", "vote"),
    Failing("HEAD", "vote"),
    Failing("POST", "vote"),
    Failing("POST", "person"),
    Failing("GET", "unsubscribe"),
    Failing("HEAD", "unsubscribe"),
    Failing("POST", "unsubscribe"),
    Failing("POST", "one-click"),
    Failing("GET", "trap"),
    Failing("GET", "view"),
    Failing("POST", "confirm"),
    Failing("POST", "api-test"),
)


def refuse_hits(engine: Engine, on: bool) -> None:
    """A trigger that makes every insert into link_hits fail (or its removal)."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_hits"))
            if on:
                conn.execute(
                    text(
                        "CREATE TRIGGER refuse_hits BEFORE INSERT ON link_hits "
                        "BEGIN SELECT RAISE(ABORT, 'hits refused (test)'); END"
                    )
                )
            return
        conn.execute(text("DROP TRIGGER IF EXISTS refuse_hits ON link_hits"))
        if on:
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_hits() RETURNS trigger AS "
                    "$$ BEGIN RAISE EXCEPTION 'hits refused (test)'; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_hits BEFORE INSERT ON link_hits "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_hits()"
                )
            )


def send_failing(site: Site, case: Failing) -> httpx.Response:
    c = site.client
    if case.link == "api-test":
        return c.post(
            "/api/issues/test", json={"to": "proof@example.org", "issue_id": 1}, headers=AUTH
        )
    if case.link in ("person", "one-click"):
        kind = "vote" if case.link == "person" else "unsubscribe"
        path = site.link(kind, case.member, case.option)
        if case.link == "person":
            return c.post(path + "/person")
        return c.post(path, content=ONE_CLICK, headers=FORM)
    path = site.link(case.link, case.member, case.option)
    forms = {"vote": {"option": "2"}, "unsubscribe": {"action": "unsubscribe", "confirm": "1"}}
    if case.method == "POST":
        return c.post(path, data=forms.get(case.link, {}))
    return c.request(case.method, path)


@settings(CASES, max_examples=50)
@given(
    case=st.tuples(st.sampled_from(FAILING), st.integers(0, 4), st.integers(0, 2)).map(
        lambda t: Failing(t[0].method, t[0].link, t[1], t[2])
    )
)
@example(case=Failing("GET", "vote"))
@example(case=Failing("POST", "api-test"))
def test_a_failure_is_the_something_went_wrong_page(sent: Site, case: Failing) -> None:
    """The one 500 there should be: the database refuses the write (a trigger, not a mock),
    and the member sees the site's page saying so; an API client gets JSON."""
    engine: Engine = sent.sessions.kw["bind"]
    before = sent.snap()
    refuse_hits(engine, True)
    refuse_audit(engine, True)
    try:
        response = send_failing(sent, case)
    finally:
        refuse_hits(engine, False)
        refuse_audit(engine, False)
    assert response.status_code == 500
    assert_security_headers(response)
    assert_error_page(response)
    if case.link == "api-test":
        assert response.json() == {"error": "internal error; the server log has the details"}
    elif case.method != "HEAD":
        assert "Something went wrong" in response.text
        assert "Nothing you sent was lost" in (response.text)
    assert sent.snap() == before


# --- 2. signed but meaningless tokens ------------------------------------------------------------

ids = st.one_of(
    st.integers(0, 12),
    st.integers(13, MAX_ID),
    st.integers(MAX_ID + 1, 2**63 - 1),
    st.sampled_from((MAX_ID, MAX_ID + 1, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1)),
)
SIGNED_KINDS = (Kind.VOTE, Kind.UNSUBSCRIBE, Kind.CONFIRM, Kind.VIEW, Kind.TRAP)
signed_values = st.sampled_from(SIGNED_KINDS).flatmap(
    lambda k: st.tuples(st.just(k), st.tuples(*[ids] * len(k.fields)))
)


def meaningful(site: Site, kind: Kind, values: tuple[int, ...]) -> bool:
    """Whether a genuine token with these values names things that exist."""
    if any(v > MAX_ID for v in values):
        return False
    if kind is Kind.VOTE:
        survey_id, member_id, option = values
        return member_id in site.member_ids and option in site.survey_options.get(survey_id, ())
    if kind is Kind.VIEW:
        issue_id, member_id = values
        return issue_id in site.public_issues and member_id in site.member_ids
    # unsubscribe, trap (member, issue) and confirm (member): the member is what they act on
    return values[0] in site.member_ids


def assert_bad_link(response: httpx.Response, message: str = BAD_LINK) -> None:
    assert_answer(response)
    assert response.status_code == 400, response.text[-300:]
    if response.request.method != "HEAD":
        assert message in response.text
        if message == BAD_LINK:
            assert "Nothing was recorded." in response.text


def assert_public_issue_page(site: Site, response: httpx.Response) -> None:
    """/archive/N?t=... with a token that names no member: the issue without anyone's links."""
    assert_answer(response)
    assert response.status_code == 200
    page = response.text
    assert "/v/" not in page
    assert "/u/" not in page
    assert "/t/" not in page


def visit_signed(site: Site, kind: Kind, token: str, values: tuple[int, ...]) -> None:
    c = site.client
    if kind is Kind.VOTE:
        survey_id, member_id, option = values
        only_the_option = (
            all(v <= MAX_ID for v in values)
            and survey_id in site.survey_options
            and member_id in site.member_ids
        )
        assert_bad_link(c.get(f"/v/{token}"))
        assert_bad_link(c.head(f"/v/{token}"))
        chosen = c.post(f"/v/{token}", data={"option": str(option), "person": "1"})
        if only_the_option:
            assert_bad_link(chosen, f"There is no option {option} in this survey.")
        else:
            assert_bad_link(chosen)
        beacon = c.post(f"/v/{token}/person")
        assert_answer(beacon)
        assert beacon.status_code in (400, 404)  # nothing to count: no page, no record
    elif kind is Kind.UNSUBSCRIBE:
        assert_bad_link(c.get(f"/u/{token}"))
        assert_bad_link(c.head(f"/u/{token}"))
        assert_bad_link(c.post(f"/u/{token}", data={"action": "unsubscribe", "confirm": "1"}))
        assert_bad_link(c.post(f"/u/{token}", content=ONE_CLICK, headers=FORM))
    elif kind is Kind.CONFIRM:
        assert_bad_link(c.get(f"/c/{token}"))
        assert_bad_link(c.post(f"/c/{token}"))
    elif kind is Kind.VIEW:
        issue_id = values[0]
        page = c.get(f"/archive/{issue_id}", params={"t": token})
        if issue_id in site.public_issues:
            assert_public_issue_page(site, page)
        else:
            assert_answer(page)
            assert page.status_code == 404
            assert "No such issue" in page.text
            # On a public issue, a token for another one is no one's: the page for anyone.
            for public in site.public_issues:
                assert_public_issue_page(site, c.get(f"/archive/{public}", params={"t": token}))
    else:  # the hidden link: its status is test_signed_trap_tokens_for_no_member_are_not_found's
        for method in ("GET", "HEAD"):
            assert_answer(c.request(method, f"/t/{token}"))


@settings(CASES, max_examples=120)
@given(case=signed_values)
@example(case=(Kind.VOTE, (1, 1, 4)))  # an option the survey lacks: it used to answer 500
@example(case=(Kind.VOTE, (1, 1, 0)))
@example(case=(Kind.VOTE, (2, 1, 1)))  # no such survey
@example(case=(Kind.VOTE, (1, 99, 1)))  # no such member
@example(case=(Kind.VOTE, (2**31, 1, 1)))  # past PostgreSQL's INTEGER: no DataError
@example(case=(Kind.VOTE, (1, 2**31, 1)))
@example(case=(Kind.VOTE, (1, 1, 2**31)))
@example(case=(Kind.VOTE, (1, 1, 2**63 - 1)))
@example(case=(Kind.UNSUBSCRIBE, (99, 1)))
@example(case=(Kind.UNSUBSCRIBE, (2**31, 1)))
@example(case=(Kind.UNSUBSCRIBE, (1, 2**31)))  # a real member, an issue id no row can have
@example(case=(Kind.CONFIRM, (99,)))
@example(case=(Kind.CONFIRM, (2**32,)))
@example(case=(Kind.VIEW, (1, 99)))
@example(case=(Kind.VIEW, (1, 2**31)))
@example(case=(Kind.VIEW, (2**31, 1)))
@example(case=(Kind.VIEW, (5, 1)))
@example(case=(Kind.TRAP, (99, 1)))
@example(case=(Kind.TRAP, (1, 2**31)))
def test_signed_meaningless_tokens_get_the_bad_link_page(
    sent: Site, case: tuple[Kind, tuple[int, ...]]
) -> None:
    kind, values = case
    assume(not meaningful(sent, kind, values))  # a genuine link is test_web.py's business
    token = sent.signer.make(kind, *values)
    before = sent.snap()
    visit_signed(sent, kind, token, values)
    assert sent.snap() == before


@settings(CASES, max_examples=20)
@given(member_id=ids, issue_id=ids)
@example(member_id=99, issue_id=1)
def test_signed_trap_tokens_for_no_member_are_not_found(
    sent: Site, member_id: int, issue_id: int
) -> None:
    assume(not meaningful(sent, Kind.TRAP, (member_id, issue_id)))
    token = sent.signer.make(Kind.TRAP, member_id, issue_id)
    before = sent.snap()
    response = sent.client.get(f"/t/{token}")
    assert_answer(response)
    assert response.status_code == 404
    assert "Not found" in response.text
    assert sent.snap() == before


# --- 3. altered tokens ---------------------------------------------------------------------------

ALPHABET = string.ascii_letters + string.digits + "-_"
ODD = "~*+.=!$'()@:;,%&[]{}|^`\"<>\\é中\x00\x7f"
WHITESPACE = (" ", "\t", "\n", "\r", "\x0b", "\x0c", "\u00a0", "\u2028", "\u3000")

Edit = tuple[str, int, str]
edits: st.SearchStrategy[Edit] = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 99), st.sampled_from(ALPHABET + ODD)),
    st.tuples(st.just("insert"), st.integers(0, 99), st.sampled_from(ALPHABET + ODD)),
    st.tuples(st.just("delete"), st.integers(0, 99), st.just("")),
    st.tuples(st.just("case"), st.integers(0, 99), st.just("")),
    st.tuples(st.just("pad"), st.integers(1, 3), st.just("=")),
    st.tuples(st.just("space"), st.integers(0, 99), st.sampled_from(WHITESPACE)),
    st.tuples(st.just("lowbit"), st.just(0), st.just("")),
)


def alter(token: str, edit: Edit) -> str:
    op, pos, char = edit
    i = pos % len(token)
    if op == "replace":
        return token[:i] + char + token[i + 1 :]
    if op in ("insert", "space"):
        j = pos % (len(token) + 1)
        return token[:j] + char + token[j:]
    if op == "delete":
        return token[:i] + token[i + 1 :]
    if op == "case":
        return token[:i] + token[i].swapcase() + token[i + 1 :]
    if op == "pad":
        return token + "=" * pos
    # lowbit: the last character's lowest bit, unused when the length leaves spare bits
    if token[-1] not in ALPHABET:
        return token
    last = ALPHABET.index(token[-1]) ^ 1
    return token[:-1] + ALPHABET[last]


def token_of(path: str) -> str:
    if path.startswith("/archive/"):
        return urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)["t"][0]
    return path.split("/")[2]


def visit_altered(site: Site, kind: str, path: str, token: str) -> None:
    c = site.client
    quoted = urllib.parse.quote(token, safe="")
    if kind == "vote":
        assert_bad_link(c.get(f"/v/{quoted}"))
        assert_bad_link(c.head(f"/v/{quoted}"))
        assert_bad_link(c.post(f"/v/{quoted}", data={"option": "2", "person": "1"}))
        beacon = c.post(f"/v/{quoted}/person")
        assert_answer(beacon)
        assert beacon.status_code == 400
    elif kind == "unsubscribe":
        assert_bad_link(c.get(f"/u/{quoted}"))
        assert_bad_link(c.head(f"/u/{quoted}"))
        assert_bad_link(c.post(f"/u/{quoted}", data={"action": "unsubscribe", "confirm": "1"}))
        assert_bad_link(c.post(f"/u/{quoted}", content=ONE_CLICK, headers=FORM))
    elif kind == "confirm":
        assert_bad_link(c.get(f"/c/{quoted}"))
        assert_bad_link(c.post(f"/c/{quoted}"))
    elif kind == "trap":
        for method in ("GET", "HEAD"):
            response = c.request(method, f"/t/{quoted}")
            assert_answer(response)
            assert response.status_code == 404
    else:  # view
        issue = urllib.parse.urlsplit(path).path
        assert_public_issue_page(site, c.get(f"{issue}?t={quoted}"))


LINK_KINDS = ("vote", "unsubscribe", "trap", "view", "confirm")


@settings(CASES, max_examples=200)
@given(
    kind=st.sampled_from(LINK_KINDS),
    member=st.integers(0, 4),
    option=st.integers(0, 2),
    changes=st.lists(edits, min_size=1, max_size=3),
)
@example(kind="unsubscribe", member=0, option=0, changes=[("pad", 1, "=")])
@example(kind="vote", member=0, option=0, changes=[("pad", 2, "=")])
@example(kind="unsubscribe", member=1, option=0, changes=[("lowbit", 0, "")])
@example(kind="trap", member=2, option=0, changes=[("lowbit", 0, "")])
@example(kind="vote", member=0, option=1, changes=[("case", 0, "")])
@example(kind="vote", member=0, option=2, changes=[("space", 99, " ")])
@example(kind="view", member=3, option=0, changes=[("insert", 5, "~")])
@example(kind="confirm", member=0, option=0, changes=[("delete", 99, "")])
@example(kind="confirm", member=0, option=0, changes=[("space", 0, "\n")])
def test_altered_links_change_nothing(
    sent: Site, kind: str, member: int, option: int, changes: list[Edit]
) -> None:
    path = sent.link(kind, member, option)
    token = token_of(path)
    altered = token
    for change in changes:
        altered = alter(altered, change)
    # No alteration: a case flip of a digit, edits that undo each other.
    assume(altered != token and altered != "")
    before = sent.snap()
    visit_altered(sent, kind, path, altered)
    assert sent.snap() == before


def test_the_links_altered_above_are_genuine(sent: Site) -> None:
    """The links the test above alters work unaltered, so what it sees is the alteration."""
    c = sent.client
    for kind in LINK_KINDS:
        assert token_of(sent.link(kind, 0)) != ""
    assert "Your vote:" in c.get(sent.link("vote", 0, 1)).text
    assert "Unsubscribe?" in c.get(sent.link("unsubscribe", 0)).text
    assert c.get(sent.link("trap", 0)).status_code == 200
    assert c.get(sent.link("view", 0)).text.count("/v/") == 3
    assert "Confirm subscription" in c.get(sent.confirm).text
    with sent.sessions() as s:
        kinds = Counter(s.scalars(select(LinkHit.kind)).all())
    assert kinds == {"vote": 1, "unsubscribe": 1, "trap": 1, "view": 1}


# --- 4. only issues that have gone out are public ------------------------------------------------


@dataclass
class Newsroom:
    """A site whose members are imported and whose issues are released one by one."""

    settings: Settings
    sessions: sessionmaker[Session]
    root: Path
    smtp: RecordingHandler
    made: int = 0


@pytest.fixture
def newsroom(site: Path, database_url: str, smtp_server: RecordingHandler) -> Iterator[Newsroom]:
    config = desk_settings(site, database_url, smtp_server.port)
    sessions = db.open_database(config.database_url)
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    yield Newsroom(config, sessions, site, smtp_server)
    sessions.kw["bind"].dispose()


def fresh_client(room: Newsroom) -> TestClient:
    """A new server process, as a reader meets it: no page cached from an earlier request."""
    return TestClient(create_app(room.settings, room.sessions, background=False))


def unique_word(base: str, n: int) -> str:
    """`base` made unique to this case with letters (search splits words at anything else)."""
    suffix = ""
    while True:
        n, r = divmod(n, 26)
        suffix += string.ascii_lowercase[r]
        if not n:
            return f"{base}q{suffix}"


def assert_public(room: Newsroom, issue_id: int, words: tuple[str, str], public: bool) -> None:
    with fresh_client(room) as c:
        listing = c.get("/archive")
        assert listing.status_code == 200
        assert (f'href="/archive/{issue_id}"' in listing.text) is public
        page = c.get(f"/archive/{issue_id}")
        assert_answer(page)
        assert page.status_code == (200 if public else 404)
        if not public:
            assert f"There is no issue #{issue_id} in the archive." in page.text
        for word in words:
            found = c.get("/search", params={"q": word})
            assert found.status_code == 200
            assert (f'href="/archive/{issue_id}"' in found.text) is public, word
            assert ('class="hits"' in found.text) is public, word


def deliver_one(room: Newsroom, issue_id: int, to: str) -> None:
    """Deliver the issue to one member only: the others' relay says 451 (try later)."""
    everyone = [e.lower() for e in steps.services(room.settings, room.sessions).read(_active)]
    room.smtp.refuse = {e: "451 4.3.0 try later (test)" for e in everyone if e != to}
    try:
        asyncio.run(
            steps.deliver(room.settings, room.sessions, steps.get_issue(room.sessions, issue_id))
        )
    finally:
        room.smtp.refuse = {}
    with room.sessions() as s:
        sent = s.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.issue_id == issue_id, Delivery.status == "sent")
        )
    assert sent == 1


def _active(unit: Any) -> list[str]:
    return [m.email for m in members.listing(unit, None, 1000) if m.status == "active"]


words = st.text(alphabet=string.ascii_lowercase, min_size=3, max_size=10)


@settings(CASES, max_examples=8)
@given(
    title_word=words,
    body_word=words,
    halt=st.sampled_from((None, "pause", "cancel")),
    delivered_first=st.booleans(),
    reader=st.integers(0, 4),
)
@example(title_word="embargo", body_word="secret", halt=None, delivered_first=False, reader=0)
@example(title_word="paused", body_word="draft", halt="pause", delivered_first=False, reader=1)
@example(title_word="stopped", body_word="scrap", halt="cancel", delivered_first=False, reader=2)
@example(title_word="partial", body_word="half", halt="cancel", delivered_first=True, reader=3)
def test_only_issues_that_have_gone_out_are_public(
    newsroom: Newsroom,
    title_word: str,
    body_word: str,
    halt: str | None,
    delivered_first: bool,
    reader: int,
) -> None:
    room = newsroom
    room.made += 1
    found = (unique_word(title_word, room.made), unique_word(body_word, room.made))
    folder = room.root / f"embargo{room.made}"
    folder.mkdir()
    (folder / f"item{room.made}.md").write_text(
        f"---\ntitle: Under embargo {found[0]}\n---\nThe text says {found[1]}.\n"
    )
    steps.import_source(room.sessions, str(folder))
    issue_id = steps.release_next(room.settings, room.sessions).issue.id
    everyone = steps.services(room.settings, room.sessions).read(_active)
    to = sorted(everyone)[reader % len(everyone)]
    if delivered_first:
        deliver_one(room, issue_id, to)
    if halt == "pause":
        steps.pause(room.sessions, issue_id)
    elif halt == "cancel":
        steps.cancel(room.sessions, issue_id)
    assert_public(room, issue_id, found, delivered_first)
    if delivered_first or halt == "cancel":
        return  # public already, or never to be: a cancelled issue sends nothing more
    if halt == "pause":
        steps.resume(room.sessions, issue_id)
    deliver_one(room, issue_id, to)
    assert_public(room, issue_id, found, True)


# --- 5. link_hits stays bounded ------------------------------------------------------------------

AGENT = "Mozilla/5.0 (hostile-web test agent)"
HIT_KINDS = ("vote", "unsubscribe", "view", "trap")


@dataclass(frozen=True)
class Burst:
    """After `gap` simulated seconds, `count` fetches of one member's link."""

    gap: float
    kind: str
    member: int
    option: int
    method: str
    count: int
    maintenance: str  # after it: "none", "fold" (evidence.fold alone), "both" (settle, fold)


bursts = st.builds(
    Burst,
    gap=st.one_of(
        st.sampled_from((0.0, 1.0, 29.0, 31.0, 61.0, 3599.0, 3601.0, 7200.0, 86400.0)),
        st.floats(0, 6 * 3600, allow_nan=False),
    ),
    kind=st.sampled_from(HIT_KINDS),
    member=st.integers(0, 4),
    option=st.integers(0, 2),
    method=st.sampled_from(("GET", "GET", "GET", "HEAD")),
    count=st.integers(1, 25),
    maintenance=st.sampled_from(("none", "fold", "both")),
)


@dataclass
class Ledger:
    """Every hit the test made, with its time, across all cases (they share one site)."""

    made: list[tuple[dt.datetime, str, str]] = field(default_factory=list)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def maintain(site: Site, settle: bool) -> None:
    """What `serve`'s background task does, a chunk a transaction: settle, then fold."""
    if settle:
        while site.services.run("system", votes.settle).decided == votes.SETTLE_CHUNK:
            pass
    while site.services.run("system", evidence.fold) == evidence.FOLD_CHUNK:
        pass


def assert_bounded(site: Site, ledger: Ledger) -> None:
    now = site.clock()
    window = dt.timedelta(seconds=site.settings.web.vote_window_seconds)
    with site.sessions() as s:
        raw = s.execute(select(LinkHit.at, LinkHit.kind, LinkHit.method)).all()
        oldest_pending = s.scalar(
            select(func.min(Vote.pending_at)).where(Vote.pending_option.is_not(None))
        )
        folded = s.execute(
            select(LinkHitCount.kind, LinkHitCount.method, func.sum(LinkHitCount.hits)).group_by(
                LinkHitCount.kind, LinkHitCount.method
            )
        ).all()
        count_rows = s.execute(select(LinkHitCount)).scalars().all()
        emails = set(s.scalars(select(Member.email)).all())
    # What the vote rule may still need: hits younger than KEEP and twice the window, and
    # those from a window before the oldest pending click on.
    keep_from = now - max(evidence.KEEP, 2 * window)
    if oldest_pending is not None:
        keep_from = min(keep_from, oldest_pending - window)
    assert all(at >= keep_from for at, _, _ in raw), "a hit no rule needs is still raw"
    needed = [m for m in ledger.made if m[0] >= keep_from]
    assert len(raw) == len(needed), "a hit the rule needs was folded, or one was lost"
    # Raw and folded together are every hit made, by kind and method.
    totals = Counter({(k, m): n for k, m, n in folded})
    totals.update((k, m) for _, k, m in raw)
    assert totals == Counter((k, m) for _, k, m in ledger.made)
    # The folded table says nothing about who: no member, address or agent in it.
    assert set(LinkHitCount.__table__.columns.keys()) == {
        "day",
        "kind",
        "method",
        "issue_id",
        "hits",
    }
    for row in count_rows:
        for value in (row.kind, row.method):
            assert value not in emails
            assert AGENT not in value
            assert "testclient" not in value


HITS_PER_CASE = 350  # the generated pattern is repeated until this many links were fetched


@settings(CASES, max_examples=4)
@given(run=st.lists(bursts, min_size=1, max_size=12))
@example(
    run=[
        Burst(0, "vote", 0, 0, "GET", 20, "none"),  # a pending click...
        Burst(7200, "view", 1, 0, "GET", 25, "fold"),  # ...keeps its evidence two hours on
        Burst(3601, "unsubscribe", 2, 0, "HEAD", 25, "both"),  # settled: now it may go
        Burst(86400, "trap", 3, 0, "GET", 25, "both"),
        Burst(31, "vote", 4, 2, "HEAD", 25, "both"),
    ]
)
def test_link_hits_stay_bounded(sent: Site, ledger: Ledger, run: list[Burst]) -> None:
    """Links fetched over simulated days, with the background task's settling and folding
    between: the raw table keeps only what the vote rule needs, and loses no hit."""
    c = sent.client
    made = len(ledger.made)
    while len(ledger.made) < made + HITS_PER_CASE:
        for burst in run:
            sent.clock.advance(burst.gap)
            path = sent.link(burst.kind, burst.member, burst.option)
            for _ in range(burst.count):
                response = c.request(burst.method, path, headers={"User-Agent": AGENT})
                assert response.status_code == 200, response.text[-300:]
                ledger.made.append((sent.clock(), burst.kind, burst.method))
            if burst.maintenance != "none":
                maintain(sent, settle=burst.maintenance == "both")
                assert_bounded(sent, ledger)
        sent.clock.advance(3601)  # the next round an hour on: the last one may be folded
    maintain(sent, settle=True)
    assert_bounded(sent, ledger)
    with sent.sessions() as s:
        assert s.scalar(select(func.sum(LinkHitCount.hits))), "folding never happened"
