"""The API's survey endpoints on SQLite and PostgreSQL: each action called, its audit entry,
its refusals as JSON (the field named, 403 for a writer, 409 for the wrong state)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.services import votes
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.web.app import create_app
from tests.snapshot import snapshot
from tests.test_api import AUTH, api_routes, assert_json_error
from tests.test_desk import WRITER_TOKEN, audit_rows, desk_settings, fill

WRITER_AUTH = {"Authorization": f"Bearer {WRITER_TOKEN}"}
Api = tuple[TestClient, Settings, sessionmaker[Session]]


@pytest.fixture
def api(site: Path, database_url: str) -> Iterator[Api]:
    settings = desk_settings(site, database_url, 8025)
    sessions = db.open_database(settings.database_url)
    fill(sessions, site)
    with TestClient(create_app(settings, sessions, background=False)) as c:
        yield c, settings, sessions
    sessions.kw["bind"].dispose()


def test_the_document_has_every_survey_action(api: Api) -> None:
    c, _, _ = api
    routes = set(api_routes(c))
    assert {
        ("GET", "/api/surveys"),
        ("POST", "/api/surveys"),
        ("POST", "/api/surveys/{survey_id}/open"),
        ("POST", "/api/surveys/{survey_id}/close"),
        ("GET", "/api/surveys/{survey_id}/results"),
        ("GET", "/api/surveys/{survey_id}/votes.csv"),
    } <= routes
    doc = c.get("/api/openapi.json").json()
    assert {"SurveyIn", "SurveyOut", "SurveyList", "SurveyActionOut"} <= set(
        doc["components"]["schemas"]
    )
    csv = doc["paths"]["/surveys/{survey_id}/votes.csv"]["get"]["responses"]["200"]
    assert "text/csv" in csv["content"]


def test_every_survey_action_through_the_api(api: Api) -> None:
    c, settings, sessions = api
    listed = c.get("/api/surveys", headers=AUTH)
    assert listed.json() == {"surveys": [], "default_id": None}  # config.toml's: not stored yet
    made = c.post(
        "/api/surveys",
        headers=AUTH,
        json={"question": " Which section first? ", "options": ["People watch", "Firms"]},
    )
    assert made.status_code == 201, made.text
    survey = made.json()["survey"]
    assert made.json()["message"] == "survey #2 made as a draft: open it to let issues carry it"
    assert {k: survey[k] for k in ("id", "key", "question", "source", "status", "options")} == {
        "id": 2,
        "key": "desk-2",
        "question": "Which section first?",
        "source": "desk",
        "status": "draft",
        "options": ["People watch", "Firms"],
    }
    listed = c.get("/api/surveys", headers=AUTH).json()
    assert [(s["id"], s["source"], s["status"]) for s in listed["surveys"]] == [
        (2, "desk", "draft"),
        (1, "config", "open"),
    ]
    assert listed["default_id"] == 1
    opened = c.post("/api/surveys/2/open", headers=AUTH)
    assert opened.status_code == 200, opened.text
    assert opened.json()["survey"]["status"] == "open"
    assert_json_error(c.post("/api/surveys/2/open", headers=AUTH), 409)
    closed = c.post("/api/surveys/1/close", headers=AUTH)
    assert closed.json()["message"] == "survey #1 is closed: 0 votes counted"
    assert c.get("/api/surveys", headers=AUTH).json()["default_id"] == 2
    assert "already closed" in assert_json_error(c.post("/api/surveys/1/close", headers=AUTH), 409)
    services = Services(settings, sessions)
    services.run("member:1", votes.click, 2, 1, 2, method="POST", person=True)
    results = c.get("/api/surveys/2/results", headers=AUTH).json()
    assert (results["total"], [o["votes"] for o in results["options"]]) == (1, [0, 1])
    export = c.get("/api/surveys/2/votes.csv", headers=AUTH)
    assert export.status_code == 200
    assert export.headers["content-type"] == "text/csv; charset=utf-8"
    header, row = export.text.splitlines()
    assert header == "email,option,label,counted_at"
    assert row.split(",")[1:3] == ["2", "Firms"]
    assert [a[:2] for a in audit_rows(sessions)][-4:] == [
        ("api", "create-survey"),
        ("api", "open-survey"),
        ("api", "close-survey"),
        ("member:1", "vote"),
    ]
    for path in ("/api/surveys/9/open", "/api/surveys/9/close", "/api/surveys/9/results"):
        method = "GET" if path.endswith("results") else "POST"
        assert_json_error(c.request(method, path, headers=AUTH), 404)
    assert_json_error(c.get("/api/surveys/9/votes.csv", headers=AUTH), 404)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"question": "", "options": ["A", "B"]}, "body field 'question': is empty"),
        (
            {"question": "Which?\r\nBcc: x", "options": ["A", "B"]},
            "body field 'question': must be one line",
        ),
        (
            {"question": "Which?", "options": ["A"]},
            "body field 'options': a survey has 2 to 10 options, not 1",
        ),
        (
            {"question": "Which?", "options": ["A", "B", "a "]},
            "body field 'options.2' (option 3): repeats option 1",
        ),
        (
            {"question": "Which?", "options": ["A", "\x00"]},
            "body field 'options.1' (option 2): contains the control character U+0000",
        ),
    ],
)
def test_a_refused_survey_names_the_field_and_stores_nothing(
    api: Api, body: dict[str, object], message: str
) -> None:
    c, _, sessions = api
    before = snapshot(sessions)
    r = c.post("/api/surveys", headers=AUTH, json=body)
    assert r.status_code == 400
    assert r.json()["error"].startswith(message), r.json()
    assert snapshot(sessions) == before


def test_malformed_bodies_are_refused_as_json(api: Api) -> None:
    c, _, _ = api
    bodies: list[dict[str, object]] = [
        {},
        {"question": "Q?"},
        {"question": 5, "options": ["A", "B"]},
        {"question": "Q?", "options": "A, B"},
        {"question": "Q?", "options": ["A", "B"], "key": "x"},
        {"question": "Q" * 10_001, "options": ["A", "B"]},
    ]
    for body in bodies:
        assert_json_error(c.post("/api/surveys", headers=AUTH, json=body), 422)


def test_a_writers_token_reads_surveys_but_may_not_change_them(api: Api) -> None:
    c, _, sessions = api
    c.post("/api/surveys", headers=AUTH, json={"question": "Which?", "options": ["A", "B"]})
    before = snapshot(sessions)
    refused = {
        "create": c.post(
            "/api/surveys", headers=WRITER_AUTH, json={"question": "Q?", "options": ["A", "B"]}
        ),
        "open": c.post("/api/surveys/2/open", headers=WRITER_AUTH),
        "close": c.post("/api/surveys/1/close", headers=WRITER_AUTH),
        "votes.csv": c.get("/api/surveys/1/votes.csv", headers=WRITER_AUTH),
    }
    for name, answer in refused.items():
        assert "api:writer is a writer" in assert_json_error(answer, 403), name
    assert snapshot(sessions) == before
    assert c.get("/api/surveys", headers=WRITER_AUTH).status_code == 200
    assert c.get("/api/surveys/2/results", headers=WRITER_AUTH).status_code == 200
