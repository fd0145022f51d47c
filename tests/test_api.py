"""The JSON API under /api: bearer token, every error a 4xx JSON {"error": ...}, actions audited."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.storage import db
from newsletter.storage.models import (
    Issue,
    Member,
    MemberStatus,
    Survey,
)
from newsletter.web.app import create_app
from tests import steps as publish
from tests.smtpd import RecordingHandler
from tests.test_desk import TOKEN, audit_rows, desk_settings, fill, issue_status

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(
    site: Path, database_url: str, smtp_server: RecordingHandler
) -> Iterator[tuple[TestClient, Settings, sessionmaker[Session]]]:
    settings = desk_settings(site, database_url, smtp_server.port)
    sessions = db.open_database(settings.database_url)
    with TestClient(create_app(settings, sessions)) as c:
        yield c, settings, sessions
    sessions.kw["bind"].dispose()


def api_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) the API serves, read from its own OpenAPI document (which the
    app builds from its routes, so an endpoint cannot be served and left out of it)."""
    paths = client.get("/api/openapi.json").json()["paths"]
    found = [
        (method.upper(), "/api" + path)
        for path, operations in paths.items()
        for method in sorted(operations)
    ]
    assert len(found) >= 9
    return found


def wait_idle(client: TestClient, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/api/issues", headers=AUTH).json()["running"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the background job did not finish")
        time.sleep(0.05)


def assert_json_error(r: Any, *statuses: int) -> str:
    assert 400 <= r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text)
    if statuses:
        assert r.status_code in statuses, (r.request.url, r.status_code, r.text)
    body = r.json()
    assert isinstance(body.get("error"), str), body
    assert body["error"], body
    return str(body["error"])


def test_openapi_document(api: tuple[TestClient, Settings, sessionmaker[Session]]) -> None:
    c, _, _ = api
    doc = c.get("/api/openapi.json")
    assert doc.status_code == 200
    paths = doc.json()["paths"]
    for method, path in api_routes(c):
        assert method.lower() in paths[path.removeprefix("/api")], path
    assert "TestIn" in doc.json()["components"]["schemas"]


def test_every_endpoint_refuses_missing_or_wrong_tokens(
    api: tuple[TestClient, Settings, sessionmaker[Session]],
) -> None:
    c, _, sessions = api
    for method, template in api_routes(c):
        path = template.replace("{issue_id}", "1").replace("{survey_id}", "1")
        path = path.replace("{member_id}", "1")
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-wrong-token-wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": "Bearer"},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            r = c.request(method, path, headers=headers, json={"to": "x@example.org"})
            message = assert_json_error(r, 401)
            assert "token" in message
    assert audit_rows(sessions) == []


def test_every_endpoint_answers_malformed_requests_with_json_4xx(
    api: tuple[TestClient, Settings, sessionmaker[Session]],
    smtp_server: RecordingHandler,
) -> None:
    c, _, _ = api  # an empty site: no items, members, issues or surveys
    bodies: list[dict[str, Any]] = [
        {"content": b"not json {"},
        {"content": b""},
        {"json": []},
        {"json": {}},
        {"json": {"to": 5}},
        {"json": {"to": None}},
        {"json": {"to": "x" * 100_000}},
        {"json": {"to": "a@example.org", "issue_id": "one"}},
        {"json": {"to": "a@example.org", "issue_id": 10**30}},
        {"json": {"to": "a@example.org", "unknown": 1}},
        {"json": {"to": "not an address"}},
        {"json": {"to": "a@example.org\r\nBcc: b@example.org"}},
        {"content": b"\xff\xfe\x00garbage", "headers": {"Content-Type": "application/json"}},
    ]
    for method, template in api_routes(c):
        paths = {
            template.replace("{issue_id}", v).replace("{survey_id}", v).replace("{member_id}", v)
            for v in ("1", "0", "-5", "abc", "9" * 40, "1.5")
        }
        for path in paths:
            for body in bodies:
                headers = {**AUTH, **body.get("headers", {})}
                kwargs = {k: v for k, v in body.items() if k != "headers"}
                r = c.request(method, path, headers=headers, **kwargs)
                if r.status_code < 400:
                    assert method == "GET", (method, path, body, r.text)  # a list, maybe empty
                    continue
                assert_json_error(r)
        r = c.request(method, template + "/nothing-here", headers=AUTH)
        assert_json_error(r)
    # Query parameters too.
    assert_json_error(c.get("/api/members", params={"q": "x" * 1000}, headers=AUTH), 422)
    assert_json_error(c.get("/api/members", params={"limit": "lots"}, headers=AUTH), 422)
    assert "'to'" in assert_json_error(
        c.post("/api/issues/test", json={"to": 5}, headers=AUTH), 422
    )
    json_type = {**AUTH, "Content-Type": "application/json"}
    assert "not valid JSON" in assert_json_error(
        c.post("/api/issues/test", content=b"{", headers=json_type), 422
    )
    assert "JSON object" in assert_json_error(
        c.post("/api/issues/test", content=b"{", headers=AUTH), 422
    )
    assert_json_error(c.delete("/api/issues/1", headers=AUTH), 405)
    assert_json_error(c.get("/api/nowhere", headers=AUTH), 404)
    assert smtp_server.count() == 0


def test_disabled_api(site: Path, database_url: str, smtp_server: RecordingHandler) -> None:
    settings = desk_settings(site, database_url, smtp_server.port, token="")
    sessions = db.open_database(settings.database_url)
    with TestClient(create_app(settings, sessions)) as c:
        r = c.get("/api/issues", headers=AUTH)
        assert "NEWSLETTER_API_TOKEN" in r.json()["error"]
        assert r.status_code == 503
    sessions.kw["bind"].dispose()


def test_pause_resume_cancel_and_send_through_the_api(
    api: tuple[TestClient, Settings, sessionmaker[Session]],
    site: Path,
    smtp_server: RecordingHandler,
) -> None:
    c, settings, sessions = api
    fill(sessions, site)
    assert_json_error(c.get("/api/issues/1", headers=AUTH), 404)
    publish.release_next(settings, sessions)
    r = c.post("/api/issues/1/pause", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["issue"]["status"] == "paused"
    assert issue_status(sessions) == "paused"
    assert "not sending" in assert_json_error(c.post("/api/issues/1/pause", headers=AUTH), 409)
    r = c.post("/api/issues/1/resume", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["issue"]["status"] == "sending"
    wait_idle(c)
    info = c.get("/api/issues/1", headers=AUTH).json()
    assert info["status"] == "sent"
    assert info["percent"] == 100.0
    assert info["sent"] == 5
    with sessions() as s:
        active = set(s.scalars(select(Member.email).where(Member.status == MemberStatus.ACTIVE)))
    received = smtp_server.by_recipient()
    assert set(received) == active
    assert all(len(m) == 1 for m in received.values())
    assert "already sent" in assert_json_error(c.post("/api/issues/1/cancel", headers=AUTH), 409)
    assert "nothing to send" in assert_json_error(c.post("/api/issues/send", headers=AUTH), 409)
    assert audit_rows(sessions) == [("api", "pause", 1), ("api", "resume", 1)]

    # A new item makes a second issue; cancel it before anything goes out.
    (site / "posts").mkdir()
    (site / "posts" / "late.md").write_text("---\ntitle: A late report\n---\nBody.\n")
    from tests.steps import import_source

    import_source(sessions, str(site / "posts"))
    publish.release_next(settings, sessions)
    r = c.post("/api/issues/2/cancel", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["message"] == "issue #2 is cancelled: 0 of 5 sent, 5 not sent (cancelled)"
    assert issue_status(sessions, 2) == "cancelled"
    assert audit_rows(sessions)[-1] == ("api", "cancel", 2)
    listing = c.get("/api/issues", headers=AUTH).json()["issues"]
    assert [i["id"] for i in listing] == [2, 1]
    assert smtp_server.count() == 5


def test_send_now_test_send_results_and_members(
    api: tuple[TestClient, Settings, sessionmaker[Session]],
    site: Path,
    smtp_server: RecordingHandler,
) -> None:
    c, _, sessions = api
    fill(sessions, site)
    r = c.post("/api/issues/test", json={"to": "proof@example.org"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "sent"
    (received,) = smtp_server.messages
    assert received.parse()["Message-ID"] == r.json()["message_id"]  # a copy's own
    assert received.rcpt_to == "proof@example.org"
    assert str(received.parse()["Subject"]).startswith("[TEST] ")
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Issue)) == 0
    assert "'to'" in assert_json_error(
        c.post("/api/issues/test", json={"to": "bad address"}, headers=AUTH), 400
    )

    r = c.post("/api/issues/send", headers=AUTH)
    assert r.status_code == 202
    wait_idle(c)
    assert smtp_server.count() == 1 + 5
    (issue,) = c.get("/api/issues", headers=AUTH).json()["issues"]
    assert issue["status"] == "sent"
    assert c.post("/api/issues/test", json={"to": "p@example.org", "issue_id": 1}, headers=AUTH)
    assert smtp_server.count() == 7
    assert_json_error(
        c.post("/api/issues/test", json={"to": "p@example.org", "issue_id": 2}, headers=AUTH), 404
    )

    with sessions() as s:  # on PostgreSQL the test sends' rolled-back surveys used up ids
        survey_id = s.scalar(select(Survey.id))
    assert survey_id is not None
    results = c.get(f"/api/surveys/{survey_id}/results", headers=AUTH).json()
    assert results["total"] == 0
    assert len(results["options"]) == 3
    assert_json_error(c.get(f"/api/surveys/{survey_id + 1}/results", headers=AUTH), 404)
    found = c.get("/api/members", params={"q": "wang"}, headers=AUTH).json()["members"]
    assert [m["email"] for m in found] == ["wang.fang@example.org"]
    assert [a[:2] for a in audit_rows(sessions)] == [
        ("api", "test-send"),
        ("api", "release"),
        ("api", "test-send"),
    ]
