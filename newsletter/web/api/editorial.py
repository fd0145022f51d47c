"""The API's editorial endpoints: items (write, edit, hold, release, remove, order), the next
issue's settings and schedule, an issue's failures and the retry of the failed."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from newsletter.services import drafts, issues, items
from newsletter.services.boundary import Gateway
from newsletter.web.api.base import MAX_ID, Caller
from newsletter.web.api.issues import ActionOut, issue_out
from newsletter.web.jobs import Jobs


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=1000)
    body: str = Field("", max_length=400_000, description="Markdown")
    section: str = Field("", max_length=200)
    url: str = Field("", max_length=2048, description="a link to the full report, http(s)")
    date: dt.date | None = None

    def draft(self) -> items.ItemDraft:
        return items.ItemDraft(self.title, self.body, self.section, self.url, self.date)


class ItemOut(BaseModel):
    id: int
    guid: str
    title: str
    section: str
    published_at: dt.datetime | None
    held: bool
    position: int | None
    size: int


class ItemList(BaseModel):
    items: list[ItemOut]


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[str] = Field(
        max_length=1000, description="GUIDs (or numbers) first in the next issue, in order"
    )


class DraftIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(None, max_length=drafts.NOTE_LIMIT, description="Markdown")
    subject: str | None = Field(None, max_length=drafts.SUBJECT_LIMIT)
    preheader: str | None = Field(None, max_length=drafts.PREHEADER_LIMIT)
    survey: str | None = Field(None, description="'default', 'none' or a survey's number")

    @model_validator(mode="after")
    def something(self) -> DraftIn:
        if all(v is None for v in (self.note, self.subject, self.preheader, self.survey)):
            raise ValueError("name at least one of note, subject, preheader, survey to change")
        return self


class DraftOut(BaseModel):
    note: str
    subject: str
    preheader: str
    survey: str
    send_at: dt.datetime | None


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    send_at: dt.datetime | None = Field(
        description="when to send the next issue (with its offset), or null to cancel"
    )


class FailureOut(BaseModel):
    status: str
    code: int | None
    text: str
    count: int


class FailureList(BaseModel):
    failures: list[FailureOut]


def item_out(info: items.ItemInfo) -> ItemOut:
    return ItemOut(
        id=info.id,
        guid=info.guid,
        title=info.title,
        section=info.section,
        published_at=info.published_at,
        held=info.held,
        position=info.position,
        size=info.size,
    )


def draft_out(info: drafts.DraftInfo) -> DraftOut:
    return DraftOut(
        note=info.note_md,
        subject=info.subject,
        preheader=info.preheader,
        survey=info.survey,
        send_at=info.send_at,
    )


def router(gateway: Gateway, jobs: Jobs) -> APIRouter:
    router = APIRouter()
    router.include_router(_items(gateway))
    router.include_router(_next_issue(gateway, jobs))
    return router


def _items(gateway: Gateway) -> APIRouter:
    router = APIRouter()
    ref_path = Path(max_length=1024, description="the item's GUID, or its number")

    @router.get("/items", response_model=ItemList)
    async def upcoming() -> ItemList:
        """Every item not gone out yet, in the next issue's order (held ones marked)."""
        return ItemList(items=[item_out(i) for i in await gateway.read(items.upcoming)])

    @router.post("/items", response_model=ItemOut, status_code=201)
    async def write(body: ItemIn, who: Caller) -> ItemOut:
        return item_out(await gateway.call(who, items.write, body.draft()))

    @router.put("/items/{ref}", response_model=ItemOut)
    async def edit(body: ItemIn, who: Caller, ref: str = ref_path) -> ItemOut:
        return item_out(await gateway.call(who, items.edit, ref, body.draft()))

    @router.delete("/items/{ref}", response_model=ItemOut)
    async def remove(who: Caller, ref: str = ref_path) -> ItemOut:
        return item_out(await gateway.call(who, items.remove, ref))

    @router.post("/items/{ref}/hold", response_model=ItemOut)
    async def hold(who: Caller, ref: str = ref_path) -> ItemOut:
        return item_out(await gateway.call(who, items.hold, ref, True))

    @router.post("/items/{ref}/release", response_model=ItemOut)
    async def release(who: Caller, ref: str = ref_path) -> ItemOut:
        return item_out(await gateway.call(who, items.hold, ref, False))

    return router


def _next_issue(gateway: Gateway, jobs: Jobs) -> APIRouter:
    router = APIRouter()
    issue_path = Path(ge=1, le=MAX_ID, description="the issue's number")

    @router.put("/next/order", response_model=ItemList)
    async def order(body: OrderIn, who: Caller) -> ItemList:
        await gateway.call(who, items.reorder, body.items)
        return ItemList(items=[item_out(i) for i in await gateway.read(items.upcoming)])

    @router.get("/next", response_model=DraftOut)
    async def next_settings() -> DraftOut:
        return draft_out(await gateway.read(drafts.info))

    @router.patch("/next", response_model=DraftOut)
    async def save(body: DraftIn, who: Caller) -> DraftOut:
        info = await gateway.call(
            who,
            drafts.save,
            note_md=body.note,
            subject=body.subject,
            preheader=body.preheader,
            survey=body.survey,
        )
        return draft_out(info)

    @router.put("/next/schedule", response_model=DraftOut)
    async def schedule(body: ScheduleIn, who: Caller) -> DraftOut:
        return draft_out(await gateway.call(who, drafts.schedule, body.send_at))

    @router.get("/issues/{issue_id}/failures", response_model=FailureList)
    async def failures(issue_id: int = issue_path) -> FailureList:
        found = await gateway.read(issues.failures, issue_id)
        return FailureList(
            failures=[
                FailureOut(status=f.status, code=f.code, text=f.text, count=f.count) for f in found
            ]
        )

    @router.post("/issues/{issue_id}/retry", response_model=ActionOut)
    async def retry(who: Caller, issue_id: int = issue_path) -> ActionOut:
        info = await jobs.start_retry(who, issue_id)
        return ActionOut(
            message=f"{info.summary}; the failed are being retried", issue=issue_out(info)
        )

    return router
