"""The members' pages and endpoints (FastAPI's test client) on SQLite and PostgreSQL: every
action through the desk and through the API, each with its audit entry; the writer refused
(403) on every one of them; the API's document covering each."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.storage import db
from newsletter.storage.models import AuditEntry, Member
from newsletter.web.app import create_app
from tests.snapshot import snapshot
from tests.test_api import AUTH, api_routes, assert_json_error
from tests.test_desk import EDITOR, WRITER, WRITER_TOKEN, desk_settings, fill, log_in

WRITER_AUTH = {"Authorization": f"Bearer {WRITER_TOKEN}"}
NOTICE = re.compile(r'id="notice"[^>]*>([^<]*)<')
Site = tuple[TestClient, Settings, sessionmaker[Session]]

MEMBER_ENDPOINTS = {
    ("GET", "/api/members"),
    ("POST", "/api/members"),
    ("GET", "/api/members.csv"),
    ("GET", "/api/members/{member_id}"),
    ("PATCH", "/api/members/{member_id}"),
    ("POST", "/api/members/{member_id}/unsubscribe"),
    ("POST", "/api/members/{member_id}/erase"),
    ("POST", "/api/members/import/preview"),
    ("POST", "/api/members/import"),
}


@pytest.fixture
def site_client(site: Path, database_url: str) -> Iterator[Site]:
    settings = desk_settings(site, database_url, 8025)
    sessions = db.open_database(settings.database_url)
    fill(sessions, site)
    with TestClient(create_app(settings, sessions, background=False)) as c:
        yield c, settings, sessions
    sessions.kw["bind"].dispose()


def entries(sessions: sessionmaker[Session]) -> list[tuple[str, str, int | None, str]]:
    """The audit log but for the set-up's own entries (actor "test") and logins."""
    with sessions() as s:
        return [
            (a.actor, a.action, a.member_id, a.detail)
            for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))
            if a.actor != "test" and a.action != "login"
        ]


def member_id(sessions: sessionmaker[Session], email: str) -> int:
    with sessions() as s:
        found = s.scalar(select(Member.id).where(Member.email == email))
        assert found is not None
        return found


def notice(page: Any) -> str:
    found = NOTICE.search(page.text)
    return found.group(1) if found else ""


def test_every_member_action_on_the_desk_is_audited(site_client: Site) -> None:
    c, _, sessions = site_client
    csrf = log_in(c)
    listed = c.get("/desk/members")
    assert re.search(r"Active <span class=\"note\">5</span>", listed.text)
    assert "6 members match" in listed.text
    added = c.post(
        "/desk/members/add", data={"csrf": csrf, "email": "Desk@Example.org", "name": "Dee"}
    )
    assert notice(added) == "desk@example.org added"
    new = member_id(sessions, "desk@example.org")
    refused = c.post("/desk/members/add", data={"csrf": csrf, "email": "desk@example.org"})
    assert "already a member" in notice(refused)
    edited = c.post(
        f"/desk/members/{new}/edit",
        data={"csrf": csrf, "name": "Dee Dee", "attributes": "city = Xi'an\nfirm = =1+2"},
    )
    assert notice(edited) == "saved"
    bad = c.post(
        f"/desk/members/{new}/edit",
        data={"csrf": csrf, "name": "x", "attributes": "no equals sign"},
    )
    assert notice(bad) == "attributes, line 1: write name = value"
    gone = c.post(
        f"/desk/members/{new}/unsubscribe", data={"csrf": csrf, "reason": "asked on the phone"}
    )
    assert "is unsubscribed" in notice(gone)
    exported = c.post("/desk/members/export", data={"csrf": csrf})
    assert exported.headers["content-disposition"] == 'attachment; filename="members.csv"'
    rows = {r[0]: r for r in csv.reader(io.StringIO(exported.text))}
    assert rows["desk@example.org"][:3] == ["desk@example.org", "Dee Dee", "unsubscribed"]
    assert "'=1+2" in rows["desk@example.org"]
    unticked = c.post(f"/desk/members/{new}/erase", data={"csrf": csrf, "reason": "GDPR"})
    assert notice(unticked) == "tick the box to confirm the erasure"
    erased = c.post(
        f"/desk/members/{new}/erase", data={"csrf": csrf, "reason": "GDPR", "confirm": "yes"}
    )
    assert notice(erased).startswith(f"member #{new} erased")
    page = c.get(f"/desk/members/{new}")
    assert f"Member #{new} (erased)" in page.text
    assert "desk@example.org" not in page.text
    # The address comes back through the import's two steps: refused, by its line.
    upload = c.post(
        "/desk/members/import",
        data={"csrf": csrf},
        files={
            "file": (
                "back.csv",
                b"Email Address;First Name\ndesk@example.org;D\nok@example.org;O\n",
                "text/csv",
            )
        },
    )
    assert "It looks like <strong>Mailchimp</strong>, semicolon-separated" in upload.text
    data = re.search(r'name="data" value="([^"]+)"', upload.text)
    assert data
    done = c.post(
        "/desk/members/import/run",
        data={"csrf": csrf, "data": data.group(1), "filename": "back.csv", "field-1": "skip"},
    )
    assert "line 2: desk@example.org was erased at the member&#39;s request" in done.text
    assert "1 added" in done.text
    assert [(a, act, m) for a, act, m, _ in entries(sessions)] == [
        (EDITOR, "add-member", new),
        (EDITOR, "edit-member", new),
        (EDITOR, "unsubscribe-member", new),
        (EDITOR, "export-members", None),
        (EDITOR, "erase-member", new),
        (EDITOR, "import-members", None),
    ]
    details = [d for _, _, _, d in entries(sessions)]
    assert details[0] == "[erased] added by hand"  # the address redacted by the erasure
    assert (
        details[2]
        == "[erased] unsubscribed on request (asked on the phone); 0 unsent messages stopped"
    )
    assert details[3] == "7 members exported as CSV"
    assert "erased at their request (GDPR)" in details[4]
    assert "back.csv (Mailchimp, semicolon-separated): 2 rows, 1 added" in details[5]
    assert c.get("/desk/members/999").status_code == 404


def test_every_member_endpoint_is_in_the_document_and_works(site_client: Site) -> None:
    c, _, sessions = site_client
    assert set(api_routes(c)) >= MEMBER_ENDPOINTS
    doc = c.get("/api/openapi.json").json()
    assert {"MemberIn", "MemberPatch", "ReasonIn", "ImportIn", "ImportOut", "PreviewOut"} <= set(
        doc["components"]["schemas"]
    )
    listed = c.get("/api/members", headers=AUTH, params={"limit": 2, "offset": 2}).json()
    assert (listed["total"], listed["offset"], len(listed["members"])) == (6, 2, 2)
    assert listed["counts"] == {"active": 5, "unsubscribed": 1}
    made = c.post(
        "/api/members",
        headers=AUTH,
        json={"email": "api@example.org", "name": "Api", "attributes": {"k": "v"}},
    )
    assert made.status_code == 201, made.text
    new = made.json()["id"]
    assert "already a member" in assert_json_error(
        c.post("/api/members", headers=AUTH, json={"email": "api@example.org"}), 409
    )
    assert c.get(f"/api/members/{new}", headers=AUTH).json()["attributes"] == {"k": "v"}
    patched = c.patch(
        f"/api/members/{new}", headers=AUTH, json={"attributes": {"k": "", "city": "Hangzhou"}}
    )
    assert patched.json()["attributes"] == {"city": "Hangzhou"}
    assert_json_error(c.patch(f"/api/members/{new}", headers=AUTH, json={}), 400)
    left = c.post(f"/api/members/{new}/unsubscribe", headers=AUTH, json={"reason": "by mail"})
    assert left.json()["status"] == "unsubscribed"
    assert "already" in assert_json_error(
        c.post(f"/api/members/{new}/unsubscribe", headers=AUTH, json={"reason": "again"}), 409
    )
    exported = c.get("/api/members.csv", headers=AUTH, params={"status": "unsubscribed"})
    assert exported.headers["content-type"].startswith("text/csv")
    assert [r[0] for r in csv.reader(io.StringIO(exported.text))][1:] == [
        "former.member@example.org",
        "api@example.org",
    ]
    erased = c.post(f"/api/members/{new}/erase", headers=AUTH, json={"reason": "ticket 7"})
    assert erased.json()["member"]["email"] == f"erased:{new}"
    assert_json_error(
        c.post(f"/api/members/{new}/erase", headers=AUTH, json={"reason": "again"}), 409
    )
    assert "there is no member #999" in assert_json_error(
        c.get("/api/members/999", headers=AUTH), 404
    )
    body = {
        "csv": 'email\tname\tattributes\napi@example.org\tA\t\nlm@example.org\tL\t{"tier": "gold"}\n'
    }
    preview = c.post("/api/members/import/preview", headers=AUTH, json=body).json()
    assert (preview["source"], preview["delimiter"]) == ("listmonk", "\t")
    assert preview["columns"][2] == {"column": "attributes", "field": "attributes_json"}
    report = c.post("/api/members/import", headers=AUTH, json={**body, "source": "lm.tsv"}).json()
    assert (report["added"], report["suppressed"]) == (1, 1)
    assert report["errors"][0]["line"] == 2
    mapped = c.post(
        "/api/members/import",
        headers=AUTH,
        json={"csv": "mail,who\nm@example.org,M\n", "mapping": {"mail": "email", "who": "name"}},
    ).json()
    assert mapped["added"] == 1
    assert_json_error(c.post("/api/members/import", headers=AUTH, json={"csv": "a,b\n1,2\n"}), 400)
    assert_json_error(
        c.post(
            "/api/members/import",
            headers=AUTH,
            json={"csv": "e\nx@y.org\n", "mapping": {"e": "mail"}},
        ),
        422,
    )
    assert [(a, act) for a, act, _, _ in entries(sessions)] == [
        ("api", "add-member"),
        ("api", "edit-member"),
        ("api", "unsubscribe-member"),
        ("api", "export-members"),
        ("api", "erase-member"),
        ("api", "import-members"),
        ("api", "import-members"),
    ]


def test_a_writer_gets_403_on_every_member_action(site_client: Site) -> None:
    c, _, sessions = site_client
    publisher_csrf = log_in(c)
    one = member_id(sessions, "li.wei@example.org")
    upload = c.post(
        "/desk/members/import",
        data={"csrf": publisher_csrf},
        files={"file": ("m.csv", b"email\nw@example.org\n", "text/csv")},
    )
    data = re.search(r'name="data" value="([^"]+)"', upload.text)
    assert data
    writer = TestClient(c.app)
    csrf = log_in(writer, WRITER)
    before = snapshot(sessions)
    pages = {
        "GET /desk/members": writer.get("/desk/members"),
        "GET /desk/members/N": writer.get(f"/desk/members/{one}"),
        "add": writer.post("/desk/members/add", data={"csrf": csrf, "email": "w@example.org"}),
        "export": writer.post("/desk/members/export", data={"csrf": csrf}),
        "import": writer.post(
            "/desk/members/import",
            data={"csrf": csrf},
            files={"file": ("m.csv", b"email\nw@example.org\n", "text/csv")},
        ),
        "import/run": writer.post(
            "/desk/members/import/run", data={"csrf": csrf, "data": data.group(1)}
        ),
        "edit": writer.post(f"/desk/members/{one}/edit", data={"csrf": csrf, "name": "W"}),
        "unsubscribe": writer.post(
            f"/desk/members/{one}/unsubscribe", data={"csrf": csrf, "reason": "r"}
        ),
        "erase": writer.post(
            f"/desk/members/{one}/erase", data={"csrf": csrf, "reason": "r", "confirm": "yes"}
        ),
    }
    for name, answer in pages.items():
        assert answer.status_code == 403, name
        assert f"{WRITER} is a writer" in answer.text, name
    reason = {"reason": "r"}
    api = {
        "GET /api/members": writer.get("/api/members", headers=WRITER_AUTH),
        "POST /api/members": writer.post(
            "/api/members", headers=WRITER_AUTH, json={"email": "w@example.org"}
        ),
        "GET /api/members.csv": writer.get("/api/members.csv", headers=WRITER_AUTH),
        "GET /api/members/N": writer.get(f"/api/members/{one}", headers=WRITER_AUTH),
        "PATCH": writer.patch(f"/api/members/{one}", headers=WRITER_AUTH, json={"name": "W"}),
        "unsubscribe": writer.post(
            f"/api/members/{one}/unsubscribe", headers=WRITER_AUTH, json=reason
        ),
        "erase": writer.post(f"/api/members/{one}/erase", headers=WRITER_AUTH, json=reason),
        "preview": writer.post(
            "/api/members/import/preview",
            headers=WRITER_AUTH,
            json={"csv": "email\nw@example.org\n"},
        ),
        "import": writer.post(
            "/api/members/import", headers=WRITER_AUTH, json={"csv": "email\nw@example.org\n"}
        ),
    }
    # One call per endpoint of the document:
    assert len(api) == len(MEMBER_ENDPOINTS)
    for name, answer in api.items():
        assert answer.status_code == 403, name
        assert "api:writer is a writer" in answer.json()["error"], name
    assert snapshot(sessions) == before  # nothing read out, nothing written, not even an entry
