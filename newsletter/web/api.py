"""The JSON API (/api, behind a bearer token): the desk's actions for scripts, with OpenAPI.

A FastAPI sub-application whose every error is a 4xx (or 503) JSON body {"error": "..."};
its document is /api/openapi.json. Each endpoint is one service call through the gateway,
audited as "api".
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from newsletter.errors import NewsletterError, NothingToSend
from newsletter.services import issues, members, votes
from newsletter.services.boundary import Gateway
from newsletter.web.jobs import Jobs, describe, mail_outcome
from newsletter.web.pages import json_error

MAX_ID = 2**31 - 1
API_ACTOR = "api"


class ErrorOut(BaseModel):
    error: str


class IssueOut(BaseModel):
    id: int
    subject: str
    status: str
    created_at: dt.datetime
    sent_at: dt.datetime | None
    pause_reason: str
    counts: dict[str, int]
    total: int
    done: int
    sent: int
    percent: float
    summary: str


class IssueList(BaseModel):
    issues: list[IssueOut]
    running: list[str]


class ActionOut(BaseModel):
    message: str
    issue: IssueOut


class StartedOut(BaseModel):
    message: str


class TestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=3, max_length=320, description="where the one test copy goes")
    issue_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="a stored issue to send; default the next issue"
    )


class TestOut(BaseModel):
    message: str
    message_id: str
    status: str = Field(description="sent, or queued/deferred (retried), or failed")


class OptionOut(BaseModel):
    position: int
    label: str
    votes: int
    percent: float


class ResultsOut(BaseModel):
    survey_id: int
    question: str
    status: str
    total: int
    options: list[OptionOut]


class MemberOut(BaseModel):
    id: int
    email: str
    name: str
    status: str
    created_at: dt.datetime


class MemberList(BaseModel):
    members: list[MemberOut]


def issue_out(info: issues.IssueInfo) -> IssueOut:
    return IssueOut(
        id=info.id,
        subject=info.subject,
        status=str(info.status),
        created_at=info.created_at,
        sent_at=info.sent_at,
        pause_reason=info.pause_reason,
        counts=info.counts,
        total=info.total,
        done=info.done,
        sent=info.sent,
        percent=info.percent,
        summary=info.summary,
    )


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    where = parts[0] if parts else ""
    name = ".".join(parts[1:])
    if where == "body":
        return f"body field {name!r}" if name else "the request body"
    if where in ("path", "query", "header"):
        return f"{where} parameter {name!r}"
    return ".".join(parts) or "the request"


def validation_message(exc: RequestValidationError) -> str:
    messages = []
    for err in exc.errors()[:5]:
        kind, loc = str(err.get("type", "")), err.get("loc", ())
        if kind == "json_invalid":
            messages.append("the request body is not valid JSON")
        elif kind == "missing" and tuple(loc) == ("body",):
            messages.append("the request body is missing: send a JSON object")
        elif tuple(loc) == ("body",) and kind in ("dict_type", "model_attributes_type"):
            messages.append(
                "the request body must be a JSON object (Content-Type: application/json)"
            )
        else:
            messages.append(f"{_field(loc)}: {err.get('msg', 'is not valid')}")
    return "; ".join(messages) or "the request is not valid"


def api_app(gateway: Gateway, jobs: Jobs) -> FastAPI:
    settings = gateway.services.settings
    bearer = HTTPBearer(auto_error=False, description="NEWSLETTER_API_TOKEN")
    api = FastAPI(
        title=f"{settings.list.name}: editor API",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        # Documents the scheme; the middleware below does the checking, before anything else.
        dependencies=[Depends(bearer)],
        responses={
            400: {"model": ErrorOut},
            401: {"model": ErrorOut},
            404: {"model": ErrorOut},
            409: {"model": ErrorOut},
            422: {"model": ErrorOut},
        },
    )
    _require_token(api, settings.api_token.encode())
    _answer_request_errors(api)
    _answer_service_errors(api)
    # Routes straight on the app: app.routes lists every endpoint.
    _issue_routes(api, gateway, jobs)
    _survey_and_member_routes(api, gateway)
    return api


def _require_token(api: FastAPI, token: bytes) -> None:
    """Every request but the OpenAPI document's needs the bearer token; no token, no API."""

    @api.middleware("http")
    async def require_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.scope["path"].endswith("/openapi.json") and request.method == "GET":
            return await call_next(request)
        if not token:
            return json_error(503, "the API is disabled: set NEWSLETTER_API_TOKEN (24+ characters)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return json_error(
                401, "missing token: send 'Authorization: Bearer <NEWSLETTER_API_TOKEN>'"
            )
        if not hmac.compare_digest(given.strip().encode(), token):
            return json_error(401, "wrong token")
        return await call_next(request)


def _answer_request_errors(api: FastAPI) -> None:
    """A request the API cannot take (no such endpoint, a bad parameter or body) as JSON."""

    @api.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return json_error(422, validation_message(exc))

    @api.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return json_error(exc.status_code, message)


def _answer_service_errors(api: FastAPI) -> None:
    """What a service call raised, as JSON with its status; anything else is a bare 500."""

    @api.exception_handler(issues.NotFound)
    async def on_not_found(request: Request, exc: issues.NotFound) -> JSONResponse:
        return json_error(404, str(exc))

    @api.exception_handler(votes.NoSuchSurvey)
    async def on_no_survey(request: Request, exc: votes.NoSuchSurvey) -> JSONResponse:
        return json_error(404, str(exc))

    @api.exception_handler(issues.Conflict)
    async def on_conflict(request: Request, exc: issues.Conflict) -> JSONResponse:
        return json_error(409, str(exc))

    @api.exception_handler(NothingToSend)
    async def on_nothing(request: Request, exc: NothingToSend) -> JSONResponse:
        return json_error(409, str(exc))

    @api.exception_handler(NewsletterError)
    async def on_newsletter(request: Request, exc: NewsletterError) -> JSONResponse:
        return json_error(400, str(exc))

    @api.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        return json_error(500, "internal error; the server log has the details")


def _issue_routes(router: FastAPI, gateway: Gateway, jobs: Jobs) -> None:
    issue_path = Path(ge=1, le=MAX_ID, description="the issue's number")

    @router.get("/issues", response_model=IssueList)
    async def list_issues(limit: int = Query(100, ge=1, le=1000)) -> IssueList:
        running = jobs.running()  # read first: see desk.issues_json
        found = await gateway.read(issues.newest, limit)
        return IssueList(issues=[issue_out(i) for i in found], running=running)

    @router.get("/issues/{issue_id}", response_model=IssueOut)
    async def get_issue(issue_id: int = issue_path) -> IssueOut:
        return issue_out(await gateway.read(issues.info, issue_id))

    @router.post("/issues/send", response_model=StartedOut, status_code=202)
    async def send_now() -> StartedOut:
        return StartedOut(message=await jobs.start_send(API_ACTOR))

    @router.post("/issues/test", response_model=TestOut)
    async def test_send(body: TestIn) -> TestOut:
        services = gateway.services
        try:
            mail_id = await gateway.offload(
                issues.send_test, services, API_ACTOR, body.to, body.issue_id
            )
        except ValueError as exc:  # the address
            raise NewsletterError(f"body field 'to': {exc}") from None
        info = await mail_outcome(gateway, mail_id)
        text, _ = describe(body.to.strip(), info)
        return TestOut(
            message=text,
            message_id=info.message_id if info else "",
            status=str(info.status) if info else "gone",
        )

    @router.post("/issues/{issue_id}/pause", response_model=ActionOut)
    async def pause(issue_id: int = issue_path) -> ActionOut:
        info = await gateway.call(API_ACTOR, issues.pause, issue_id)
        return ActionOut(message=info.summary, issue=issue_out(info))

    @router.post("/issues/{issue_id}/resume", response_model=ActionOut)
    async def resume(issue_id: int = issue_path) -> ActionOut:
        info = await jobs.start_resume(API_ACTOR, issue_id)
        return ActionOut(message=info.summary, issue=issue_out(info))

    @router.post("/issues/{issue_id}/cancel", response_model=ActionOut)
    async def cancel(issue_id: int = issue_path) -> ActionOut:
        info = await gateway.call(API_ACTOR, issues.cancel, issue_id)
        return ActionOut(message=info.summary, issue=issue_out(info))


def _survey_and_member_routes(router: FastAPI, gateway: Gateway) -> None:
    @router.get("/surveys/{survey_id}/results", response_model=ResultsOut)
    async def survey_results(survey_id: int = Path(ge=1, le=MAX_ID)) -> ResultsOut:
        r = await gateway.call(API_ACTOR, votes.settled_results, survey_id)
        return ResultsOut(
            survey_id=r.survey_id,
            question=r.question,
            status=r.status,
            total=r.total,
            options=[
                OptionOut(position=o.position, label=o.label, votes=o.votes, percent=o.percent)
                for o in r.options
            ],
        )

    @router.get("/members", response_model=MemberList)
    async def members_list(
        q: str = Query("", max_length=200), limit: int = Query(100, ge=1, le=1000)
    ) -> MemberList:
        found = await gateway.read(members.search, q, limit)
        return MemberList(
            members=[
                MemberOut(
                    id=m.id,
                    email=m.email,
                    name=m.name,
                    status=str(m.status),
                    created_at=m.created_at,
                )
                for m in found
            ]
        )


__all__ = ["api_app"]
