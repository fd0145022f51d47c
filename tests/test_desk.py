"""The editor's desk pages (FastAPI's test client) on SQLite and PostgreSQL: login, CSRF,
test sends, send now, pause/resume/cancel, members and the audit log."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config
from newsletter.config import Settings
from newsletter.services import editors as desk
from newsletter.storage.models import (
    AuditEntry,
    Delivery,
    Issue,
    Member,
    MemberStatus,
)
from newsletter.web.app import create_app
from tests import steps as publish
from tests import steps as store
from tests.conftest import SECRET
from tests.smtpd import RecordingHandler
from tests.snapshot import snapshot
from tests.steps import import_csv, import_source

EDITOR, PASSWORD = "ed", "correct horse battery staple"
HASH = desk.hash_password(PASSWORD)
TOKEN = "api-token-0123456789abcdef-xyz"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


WRITER, WRITER_TOKEN = "wren", "writer-token-0123456789abcdef"


def desk_settings(site: Path, database_url: str, smtp_port: int, token: str = TOKEN) -> Settings:
    """The test site's settings with a publisher and a writer, and an API token for each."""
    env = {config.SECRET_ENV: SECRET}
    if token:  # no token: no API at all
        env[config.API_TOKEN_ENV] = token
        env[config.WRITER_TOKEN_ENV] = WRITER_TOKEN
    return config.load(
        site / "config.toml",
        env=env,
        overrides={
            "database": {"url": database_url},
            "smtp": {"port": smtp_port},
            "delivery": {"linger_seconds": 0.0},
            "editor": [
                {"name": EDITOR, "password_hash": HASH},
                {"name": WRITER, "password_hash": HASH, "role": "writer"},
            ],
        },
    )


def fill(sessions: sessionmaker[Session], site: Path) -> None:
    import_csv(sessions, site / "subscribers" / "example.csv")
    import_source(sessions, str(site / "examples" / "seed-feed.xml"))


def log_in(client: TestClient, name: str = EDITOR) -> str:
    """Log the client in as an editor; returns the CSRF token of its session."""
    r = client.post(
        "/desk/login", data={"name": name, "password": PASSWORD}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    page = client.get("/desk")
    assert page.status_code == 200
    match = CSRF.search(page.text)
    assert match
    return match.group(1)


def wait_idle(client: TestClient, timeout: float = 20.0) -> list[dict[str, object]]:
    """Poll the desk's JSON until no background job runs; the issues then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get("/desk/issues.json").json()
        if not data["running"]:
            return list(data["issues"])
        time.sleep(0.05)
    raise TimeoutError("the background send did not finish")


def audit_rows(sessions: sessionmaker[Session]) -> list[tuple[str, str, int | None]]:
    """The audit log, but for the entries of the test's own set-up steps (actor "test")."""
    with sessions() as s:
        return [
            (a.actor, a.action, a.issue_id)
            for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))
            if a.actor != "test"
        ]


def issue_status(sessions: sessionmaker[Session], issue_id: int = 1) -> str:
    with sessions() as s:
        return str(s.scalar(select(Issue.status).where(Issue.id == issue_id)))


@pytest.fixture
def client(
    site: Path, database_url: str, smtp_server: RecordingHandler
) -> Iterator[tuple[TestClient, Settings, sessionmaker[Session]]]:
    from newsletter.storage import db

    settings = desk_settings(site, database_url, smtp_server.port)
    sessions = db.open_database(settings.database_url)
    fill(sessions, site)
    # As a context manager the client keeps one event loop, where background sends run.
    with TestClient(create_app(settings, sessions)) as c:
        yield c, settings, sessions
    sessions.kw["bind"].dispose()


def test_password_hashes() -> None:
    assert HASH.startswith("scrypt$")
    assert desk.hash_password(PASSWORD) != HASH
    assert desk.verify_password(PASSWORD, HASH)
    assert not desk.verify_password(PASSWORD + "x", HASH)
    assert not desk.verify_password(PASSWORD, "scrypt$garbage")
    assert not desk.verify_password(PASSWORD, "")


def test_login_and_pages_need_it(
    client: tuple[TestClient, Settings, sessionmaker[Session]],
) -> None:
    c, _, sessions = client
    for path in ("/desk", "/desk/preview", "/desk/preview.html", "/desk/members", "/desk/audit"):
        r = c.get(path, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"] == "/desk/login", path
    assert c.get("/desk/issues.json").status_code == 401
    wrong = c.post("/desk/login", data={"name": EDITOR, "password": "nope"}, follow_redirects=False)
    assert wrong.status_code == 403
    assert "Wrong name or password" in wrong.text
    assert "set-cookie" not in wrong.headers
    nobody = c.post("/desk/login", data={"name": "eve", "password": PASSWORD})
    assert nobody.status_code == 403
    r = c.post("/desk/login", data={"name": EDITOR, "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/desk" in cookie
    page = c.get("/desk")
    assert page.status_code == 200
    assert "Send now" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "style=" not in page.text
    # A forged cookie is no login.
    good = c.cookies.get("desk_session")
    assert good
    c.cookies.clear()
    c.cookies.set("desk_session", good[:-2] + "xx", path="/desk")
    assert c.get("/desk", follow_redirects=False).status_code == 303
    assert audit_rows(sessions) == [(EDITOR, "login", None)]


def test_login_throttle_counts_attempts_per_address_and_name() -> None:
    from newsletter.services.editors import LoginThrottle

    now = [1000.0]
    throttle = LoginThrottle(per_address=3, per_name=5, window=60, keys=4, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.admit("10.0.0.1", "ada")[0] == 0  # counted as it is admitted
        now[0] += 1
    assert throttle.admit("10.0.0.1", "someone else") == (57, 0.0)  # 1000 + 60 - 1003
    assert throttle.retry_after("10.0.0.2", "ada") == 0  # 3 of 5 against the name
    assert throttle.admit("10.0.0.2", "Ada")[0] == 0
    assert throttle.admit("10.0.0.3", "ADA")[0] == 0  # names compare without case
    assert throttle.retry_after("10.0.0.4", "ada") > 0
    assert throttle.admit("10.0.0.4", "ada")[0] > 0  # refused: not counted again
    now[0] += 60
    assert throttle.retry_after("10.0.0.1", "ada") == 0  # the window moved on
    wait, ticket = throttle.admit("10.0.0.9", "bob")
    assert wait == 0
    throttle.succeeded("10.0.0.9", "bob", ticket)  # a good login takes its attempt back
    assert ("address", "10.0.0.9") not in throttle._attempts
    assert not throttle._attempts.get(("name", "bob"))
    for n in range(10):  # many addresses: the oldest are forgotten, memory stays bounded
        throttle.admit(f"192.0.2.{n}", "x")
    assert len(throttle._attempts) <= 4


GUESSES = 100  # wrong passwords sent at once, as issue 11 did


def storm(app: Any, addresses: int) -> list[int]:
    """GUESSES logins as EDITOR sent together, spread over `addresses` client addresses; the
    status of each answer."""
    import httpx2 as httpx

    async def send_all() -> list[int]:
        clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=(f"198.51.100.{n + 1}", 5000)),
                base_url="http://x",
            )
            for n in range(addresses)
        ]
        form = {"name": EDITOR, "password": "not it"}
        try:
            answers = await asyncio.gather(
                *(clients[i % addresses].post("/desk/login", data=form) for i in range(GUESSES))
            )
        finally:
            for c in clients:
                await c.aclose()
        return [a.status_code for a in answers]

    return asyncio.run(send_all())


@hypothesis_settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(per_address=10, per_name=30, addresses=1)  # the issue's: 100 at once from one client
@example(per_address=10, per_name=30, addresses=100)  # one guess each from 100 addresses
@given(
    per_address=st.integers(1, 12),
    per_name=st.integers(1, 30),
    addresses=st.sampled_from((1, 2, 3, 7, 10, 33, 100)),
)
def test_concurrent_wrong_passwords_are_counted_before_they_are_checked(
    site: Path,
    database_url: str,
    smtp_server: RecordingHandler,
    per_address: int,
    per_name: int,
    addresses: int,
) -> None:
    """100 wrong passwords at once against one name, from one address or many: exactly as
    many reach scrypt as the configured limits admit (counted), every other one is refused
    with 429 before its password is looked at, and nothing is stored."""
    from newsletter.storage import db

    base = desk_settings(site, database_url, smtp_server.port)
    web = dataclasses.replace(
        base.web, login_attempts_per_address=per_address, login_attempts_per_name=per_name
    )
    settings = dataclasses.replace(base, web=web)
    sessions = db.open_database(settings.database_url)
    try:
        app = create_app(settings, sessions, background=False)
        before = snapshot(sessions)
        statuses = storm(app, addresses)
        # Admitted while neither the address nor the name is full: the requests' order
        # does not change how many that is.
        sent = [GUESSES // addresses + (n < GUESSES % addresses) for n in range(addresses)]
        admitted = min(per_name, sum(min(k, per_address) for k in sent))
        checks = app.state.desk.passwords.checks
        assert checks == admitted, f"{checks} passwords checked, {admitted} admitted"
        assert Counter(statuses) == +Counter({403: admitted, 429: GUESSES - admitted})
        assert snapshot(sessions) == before  # a failed login writes nothing
        # The right password now: refused unchecked while its address or the name is full.
        locked = admitted == per_name or sent[0] >= per_address
        one = TestClient(app, client=("198.51.100.1", 5000))
        r = one.post(
            "/desk/login", data={"name": EDITOR, "password": PASSWORD}, follow_redirects=False
        )
        assert r.status_code == (429 if locked else 303)
        assert app.state.desk.passwords.checks == checks + (not locked)
    finally:
        sessions.kw["bind"].dispose()


def test_repeated_wrong_passwords_lock_the_address_out(
    client: tuple[TestClient, Settings, sessionmaker[Session]],
) -> None:
    c, _, sessions = client
    wrong = {"name": EDITOR, "password": "nope"}
    for _ in range(10):
        assert c.post("/desk/login", data=wrong).status_code == 403
    # Now even the right password is not checked from this address.
    r = c.post("/desk/login", data={"name": EDITOR, "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 429
    assert "Too many failed logins" in r.text
    assert 0 < int(r.headers["retry-after"]) <= 900
    assert "set-cookie" not in r.headers
    # Another address still logs in (the name has 10 of its 30).
    other = TestClient(c.app, client=("192.0.2.7", 40000))
    r = other.post(
        "/desk/login", data={"name": EDITOR, "password": PASSWORD}, follow_redirects=False
    )
    assert r.status_code == 303
    assert "desk_session" in r.headers["set-cookie"]
    assert audit_rows(sessions) == [(EDITOR, "login", None)]


def test_serve_throttles_the_address_a_local_proxy_forwards(site: Path) -> None:
    # `newsletter serve` as operators run it, behind a reverse proxy on the same machine:
    # every connection comes from 127.0.0.1, and the proxy names the client in
    # X-Forwarded-For. One client's failures must not lock out the others.
    import http.client
    from urllib.parse import urlencode

    from tests.test_cli import free_port
    from tests.test_schedule import newsletter, stop, wait_until

    with (site / "config.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[[editor]]\nname = "{EDITOR}"\npassword_hash = "{HASH}"\n')
    port = free_port()
    serve = newsletter(site, "serve", "--port", str(port))

    def request(method: str, body: str = "", headers: dict[str, str] | None = None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, "/desk/login", body, headers or {})
            return conn.getresponse().status
        finally:
            conn.close()

    def up() -> bool:
        try:
            return request("GET") == 200
        except OSError:
            return False

    def login(client: str, password: str) -> int:
        form = urlencode({"name": EDITOR, "password": password})
        kind = "application/x-www-form-urlencoded"
        return request("POST", form, {"Content-Type": kind, "X-Forwarded-For": client})

    try:
        wait_until(up, 30)
        for _ in range(10):
            assert login("203.0.113.5", "nope") == 403
        assert login("203.0.113.5", PASSWORD) == 429
        assert login("203.0.113.6", PASSWORD) == 303
    finally:
        out = stop(serve)
    assert "failed desk login as 'ed' from 203.0.113.5" in out


def test_posts_without_the_csrf_token_change_nothing(
    client: tuple[TestClient, Settings, sessionmaker[Session]],
    smtp_server: RecordingHandler,
) -> None:
    c, settings, sessions = client
    token = log_in(c)
    publish.release_next(settings, sessions)  # issue 1, sending, nothing delivered yet
    for data in ({}, {"csrf": "wrong"}, {"csrf": token + "x"}):
        for path in ("/desk/issues/1/pause", "/desk/issues/1/cancel", "/desk/send"):
            assert c.post(path, data=data).status_code == 403, (path, data)
        assert c.post("/desk/test", data={**data, "to": "x@example.org"}).status_code == 403
    assert issue_status(sessions) == "sending"
    assert smtp_server.count() == 0
    assert audit_rows(sessions) == [(EDITOR, "login", None)]
    # The right token works; the action is audited with the editor's name.
    r = c.post("/desk/issues/1/pause", data={"csrf": token})
    assert r.status_code == 200
    assert "is paused" in r.text
    assert issue_status(sessions) == "paused"
    r = c.post("/desk/issues/1/cancel", data={"csrf": token})
    assert "is cancelled: 0 of 5 sent, 5 not sent" in r.text
    assert audit_rows(sessions)[1:] == [(EDITOR, "pause", 1), (EDITOR, "cancel", 1)]


def test_test_send_stores_nothing(
    client: tuple[TestClient, Settings, sessionmaker[Session]],
    smtp_server: RecordingHandler,
) -> None:
    c, _, sessions = client
    token = log_in(c)
    with sessions() as s:
        new_before = store.count_new_items(s)
    r = c.post("/desk/test", data={"csrf": token, "to": " Proof@Example.org "})
    assert r.status_code == 200
    assert "test message sent to Proof@Example.org" in r.text
    assert len(smtp_server.messages) == 1
    (received,) = smtp_server.messages
    assert received.rcpt_to == "proof@example.org"
    message = received.parse()
    assert str(message["Subject"]).startswith("[TEST] ")
    assert message["To"] == "proof@example.org"
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Issue)) == 0
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        assert store.count_new_items(s) == new_before > 0
    assert audit_rows(sessions)[-1] == (EDITOR, "test-send", None)
    bad = c.post("/desk/test", data={"csrf": token, "to": "not an address"})
    assert "test not sent" in bad.text
    assert len(smtp_server.messages) == 1


def test_send_now_in_the_background(
    client: tuple[TestClient, Settings, sessionmaker[Session]],
    smtp_server: RecordingHandler,
) -> None:
    c, _, sessions = client
    token = log_in(c)
    # The button leads to a page that says how many members the issue will reach...
    asked = c.get("/desk/send")
    assert "goes to <strong>5</strong> members" in asked.text
    # ... and a post without that page's confirmation sends nothing.
    unconfirmed = c.post("/desk/send", data={"csrf": token})
    assert "confirm the send first" in unconfirmed.text
    assert smtp_server.count() == 0
    r = c.post("/desk/send", data={"csrf": token, "confirm": "5"}, follow_redirects=False)
    assert r.status_code == 303
    (issue,) = wait_idle(c)
    assert issue["status"] == "sent"
    assert issue["percent"] == 100.0
    with sessions() as s:
        active = set(s.scalars(select(Member.email).where(Member.status == MemberStatus.ACTIVE)))
    received = smtp_server.by_recipient()
    assert set(received) == active
    assert all(len(m) == 1 for m in received.values())
    page = c.get("/desk")
    assert 'value="100.0"' in page.text
    assert "5 / 5" in page.text
    # Nothing left to send: the desk says so and starts nothing.
    again = c.post("/desk/send", data={"csrf": token, "confirm": "5"})
    assert "nothing to send" in again.text
    assert "no new items" in c.get("/desk/send").text
    assert audit_rows(sessions)[-1] == (EDITOR, "release", 1)
    assert "nothing to send" in c.get("/desk/preview.html").text
    results = c.get("/desk/surveys")
    assert results.status_code == 200
    assert 'class="chart"' in results.text


def test_preview_members_and_audit_pages(
    client: tuple[TestClient, Settings, sessionmaker[Session]], tmp_path: Path
) -> None:
    c, _, sessions = client
    token = log_in(c)
    frames = c.get("/desk/preview")
    assert 'class="frame-600"' in frames.text
    assert 'class="frame-375"' in frames.text
    assert "frame-src 'self'" in frames.headers["content-security-policy"]
    preview = c.get("/desk/preview.html")
    csp = preview.headers["content-security-policy"]
    assert "frame-ancestors 'self'" in csp
    assert "'unsafe-inline'" in csp
    assert preview.headers["x-frame-options"] == "SAMEORIGIN"
    assert "/preview/unsubscribe" in preview.text  # inert sample links
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Issue)) == 0

    found = c.get("/desk/members", params={"q": "LI.WEI"})
    assert "li.wei@example.org" in found.text
    assert "wang.fang@example.org" not in found.text
    csv = b"email,name\nnew.one@example.org,New One\nnot-an-address,Bad\n"
    r = c.post(
        "/desk/members/import",
        data={"csrf": token},
        files={"file": ("more.csv", csv, "text/csv")},
    )
    assert r.status_code == 200
    assert "a plain list" in r.text  # the mapping step first: nothing stored yet
    assert "new.one@example.org" not in c.get("/desk/members", params={"q": "new.one"}).text
    data = re.search(r'name="data" value="([^"]+)"', r.text)
    assert data
    r = c.post(
        "/desk/members/import/run",
        data={"csrf": token, "data": data.group(1), "filename": "more.csv"},
    )
    assert r.status_code == 200
    assert "1 added" in r.text
    assert "line 3:" in r.text
    assert "new.one@example.org" in c.get("/desk/members", params={"q": "new.one"}).text
    refused = c.post("/desk/members/import", files={"file": ("x.csv", csv, "text/csv")})
    assert refused.status_code == 403
    audit_page = c.get("/desk/audit")
    assert "import-members" in audit_page.text
    assert "more.csv" in audit_page.text


def test_a_writer_may_write_and_test_but_never_send(
    client: tuple[TestClient, Settings, sessionmaker[Session]], smtp_server: RecordingHandler
) -> None:
    """The writer's role gets 403 on every sending action and on the members, in the pages
    and in the API; what a writer may do (a test copy) works; nothing sent, nothing stored."""
    c, settings, sessions = client
    publish.release_next(settings, sessions)  # issue 1, so that pause/resume/cancel mean something
    writer = TestClient(c.app)
    csrf = log_in(writer, WRITER)
    before = smtp_server.count()
    pages = {
        "/desk/send": writer.post("/desk/send", data={"csrf": csrf, "confirm": "5"}),
        "/desk/send (the question)": writer.get("/desk/send"),
        **{
            f"/desk/issues/1/{action}": writer.post(f"/desk/issues/1/{action}", data={"csrf": csrf})
            for action in ("pause", "resume", "cancel")
        },
        "/desk/members": writer.get("/desk/members"),
        "/desk/members/import": writer.post(
            "/desk/members/import",
            data={"csrf": csrf},
            files={"file": ("m.csv", b"email\nnew@example.org\n", "text/csv")},
        ),
    }
    for path, answer in pages.items():
        assert answer.status_code == 403, path
        assert "Not allowed" in answer.text, path
        assert f"{WRITER} is a writer" in answer.text, path
    headers = {"Authorization": f"Bearer {WRITER_TOKEN}"}
    api = {
        "send": writer.post("/api/issues/send", headers=headers),
        **{
            action: writer.post(f"/api/issues/1/{action}", headers=headers)
            for action in ("pause", "resume", "cancel")
        },
        "members": writer.get("/api/members", headers=headers),
    }
    for name, answer in api.items():
        assert answer.status_code == 403, name
        assert "api:writer is a writer" in answer.json()["error"], name
    assert issue_status(sessions) == "sending"
    assert smtp_server.count() == before
    # What a writer may do: a test copy (of issue 1), through the desk and the API.
    tested = writer.post("/desk/test", data={"csrf": csrf, "to": "proof@example.org", "issue": "1"})
    assert tested.status_code == 200
    assert "test message sent to proof@example.org" in tested.text
    r = writer.post(
        "/api/issues/test", headers=headers, json={"to": "proof2@example.org", "issue_id": 1}
    )
    assert r.status_code == 200
    assert r.json()["status"] == "sent"
    assert audit_rows(sessions)[-2:] == [
        (WRITER, "test-send", 1),
        ("api:writer", "test-send", 1),
    ]
