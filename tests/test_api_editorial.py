"""The editorial API: every endpoint for items, the next issue and an issue's failures, called."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from tests import steps
from tests.smtpd import RecordingHandler
from tests.test_api import AUTH, api, api_routes  # noqa: F401
from tests.test_desk import WRITER_TOKEN, audit_rows, fill

WRITER = {"Authorization": f"Bearer {WRITER_TOKEN}"}
EDITORIAL = {
    ("GET", "/api/items"),
    ("POST", "/api/items"),
    ("PUT", "/api/items/{ref}"),
    ("DELETE", "/api/items/{ref}"),
    ("POST", "/api/items/{ref}/hold"),
    ("POST", "/api/items/{ref}/release"),
    ("PUT", "/api/next/order"),
    ("GET", "/api/next"),
    ("PATCH", "/api/next"),
    ("PUT", "/api/next/schedule"),
    ("GET", "/api/issues/{issue_id}/failures"),
    ("POST", "/api/issues/{issue_id}/retry"),
}


def titles(c: TestClient) -> list[str]:
    return [i["title"] for i in c.get("/api/items", headers=AUTH).json()["items"]]


def test_every_editorial_action_is_in_the_document_and_works(
    api: tuple[TestClient, Settings, sessionmaker[Session]],  # noqa: F811
    smtp_server: RecordingHandler,
    site: Any,
) -> None:
    c, settings, sessions = api
    assert set(api_routes(c)) >= EDITORIAL
    fill(sessions, site)

    # Items: write (as the writer), edit, hold, release, order, remove.
    new = {"title": "Written by the API", "body": "Some **text**.", "section": "People watch"}
    r = c.post("/api/items", headers=WRITER, json=new)
    assert r.status_code == 201, r.text
    written = r.json()
    assert written["guid"].startswith("desk:")
    assert titles(c)[0] == "Written by the API"
    bad = c.post("/api/items", headers=AUTH, json={**new, "url": "javascript:alert(1)"})
    assert bad.status_code == 400
    assert "url:" in bad.json()["error"]
    r = c.put(f"/api/items/{written['guid']}", headers=AUTH, json={**new, "title": "Edited"})
    assert r.json()["title"] == "Edited"
    assert c.post(f"/api/items/{written['id']}/hold", headers=AUTH).json()["held"] is True
    assert c.post(f"/api/items/{written['id']}/release", headers=AUTH).json()["held"] is False
    order = c.get("/api/items", headers=AUTH).json()["items"]
    last = order[-1]["guid"]
    r = c.put("/api/next/order", headers=AUTH, json={"items": [last]})
    assert r.json()["items"][0]["guid"] == last
    assert c.delete(f"/api/items/{written['guid']}", headers=AUTH).json()["title"] == "Edited"
    assert "Edited" not in titles(c)
    assert c.delete("/api/items/nothing-of-the-kind", headers=AUTH).status_code == 404

    # The next issue's settings and schedule.
    r = c.patch("/api/next", headers=WRITER, json={"note": "A *note*.", "subject": "By API"})
    assert r.json()["subject"] == "By API"
    assert c.get("/api/next", headers=AUTH).json()["note"] == "A *note*."
    assert c.patch("/api/next", headers=AUTH, json={"subject": "two\nlines"}).status_code == 400
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
    assert c.put("/api/next/schedule", headers=WRITER, json={"send_at": soon}).status_code == 403
    r = c.put("/api/next/schedule", headers=AUTH, json={"send_at": soon})
    assert r.json()["send_at"] is not None
    r = c.put("/api/next/schedule", headers=AUTH, json={"send_at": None})
    assert r.json()["send_at"] is None

    # An issue with a delivery refused for good, then retried.
    smtp_server.refuse["li.wei@example.org"] = "450 4.2.0 mailbox busy"
    steps.release_next(settings, sessions)
    with sessions.begin() as s:  # its retry deadline has passed: a 4xx now fails for good
        s.execute(text("UPDATE issues SET retry_until = created_at"))
    asyncio.run(steps.deliver(settings, sessions, steps.get_issue(sessions, 1)))
    failures = c.get("/api/issues/1/failures", headers=AUTH).json()["failures"]
    assert failures == [
        {
            "status": "failed",
            "code": 450,
            "text": "gave up at the retry deadline: 4.2.0 mailbox busy",
            "count": 1,
        }
    ]
    del smtp_server.refuse["li.wei@example.org"]
    assert c.post("/api/issues/1/retry", headers=WRITER).status_code == 403
    r = c.post("/api/issues/1/retry", headers=AUTH)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while not any(m.rcpt_to == "li.wei@example.org" for m in smtp_server.messages):
        assert time.monotonic() < deadline, "the retry did not deliver"
        time.sleep(0.05)
    assert c.get("/api/issues/1/failures", headers=AUTH).json()["failures"] == []
    actions = [a for _, a, _ in audit_rows(sessions)]
    for action in ("write-item", "edit-item", "hold-item", "release-item", "reorder-items"):
        assert action in actions
    for action in ("remove-item", "edit-draft", "schedule", "retry"):
        assert action in actions
