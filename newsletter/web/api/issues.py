"""The API's issue endpoints: list, one issue, send now, test copies, pause, resume, cancel."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from newsletter.errors import NewsletterError
from newsletter.services import issues
from newsletter.services.boundary import Gateway
from newsletter.web.api.base import MAX_ID, Caller
from newsletter.web.jobs import Jobs, describe, mail_outcome


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


def router(gateway: Gateway, jobs: Jobs) -> APIRouter:
    router = APIRouter()
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
    async def send_now(who: Caller) -> StartedOut:
        return StartedOut(message=await jobs.start_send(who))

    @router.post("/issues/test", response_model=TestOut)
    async def test_send(body: TestIn, who: Caller) -> TestOut:
        services = gateway.services
        try:
            mail_id = await gateway.offload(issues.send_test, services, who, body.to, body.issue_id)
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
    async def pause(who: Caller, issue_id: int = issue_path) -> ActionOut:
        info = await gateway.call(who, issues.pause, issue_id)
        return ActionOut(message=info.summary, issue=issue_out(info))

    @router.post("/issues/{issue_id}/resume", response_model=ActionOut)
    async def resume(who: Caller, issue_id: int = issue_path) -> ActionOut:
        info = await jobs.start_resume(who, issue_id)
        return ActionOut(message=info.summary, issue=issue_out(info))

    @router.post("/issues/{issue_id}/cancel", response_model=ActionOut)
    async def cancel(who: Caller, issue_id: int = issue_path) -> ActionOut:
        info = await gateway.call(who, issues.cancel, issue_id)
        return ActionOut(message=info.summary, issue=issue_out(info))

    return router
