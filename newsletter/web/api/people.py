"""The API's member endpoints (a publisher's token): the list with counts and pages, one member
added, read, edited, unsubscribed on request or erased, the list as CSV, and the import with
its layout previewed or chosen (column → field)."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from newsletter.content.mapping import Field as Column
from newsletter.errors import NewsletterError
from newsletter.services import erasure, members, membership
from newsletter.services.boundary import Gateway
from newsletter.services.unit import Actor, Forbidden, Permission
from newsletter.storage.models import MemberStatus
from newsletter.web.api.base import MAX_ID, Caller
from newsletter.web.pages import security_headers

MAX_CSV = 20 * 1024 * 1024


class MemberOut(BaseModel):
    id: int
    email: str = Field(description="the address; erased:N for an erased member")
    name: str
    status: str = Field(description="active, pending, unsubscribed, bounced or erased")
    created_at: dt.datetime


class MemberDetailOut(MemberOut):
    attributes: dict[str, str]
    updated_at: dt.datetime
    unsubscribed_at: dt.datetime | None
    bounce_count: int


class MemberList(BaseModel):
    members: list[MemberOut]
    total: int = Field(description="members matching q and status, on every page")
    offset: int
    counts: dict[str, int] = Field(description="members by status, of the whole list")


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=1000)
    name: str = Field("", max_length=1000)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=200)


class MemberPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=1000)
    attributes: dict[str, str] | None = Field(
        None, max_length=200, description="replaces them all; an empty value removes one"
    )


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(max_length=2000, description="for the audit log: how they asked")


class ErasedOut(BaseModel):
    message: str
    member: MemberDetailOut


class ImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csv: str = Field(max_length=MAX_CSV, description="the file's text (comma, semicolon or tab)")
    source: str = Field("api", max_length=200, description="a name for the audit log")
    mapping: dict[str, Column] = Field(
        default_factory=dict,
        max_length=500,
        description="column name → field, in place of what the detected layout proposes",
    )


class ColumnOut(BaseModel):
    column: str
    field: str


class PreviewOut(BaseModel):
    source: str = Field(description="whose export it looks like")
    delimiter: str
    columns: list[ColumnOut]
    rows: list[list[str]] = Field(description="the first rows, as cells")


class RowErrorOut(BaseModel):
    line: int
    reason: str


class ImportOut(BaseModel):
    rows: int
    added: int
    updated: int
    unchanged: int
    merged: int
    unsubscribed: int
    kept_unsubscribed: int
    suppressed: int = Field(description="rows refused as erased addresses")
    errors: list[RowErrorOut]


def member_out(m: membership.MemberDetail) -> MemberDetailOut:
    return MemberDetailOut(
        id=m.id,
        email=m.email,
        name=m.name,
        status=str(m.status),
        created_at=m.created_at,
        attributes=m.attributes,
        updated_at=m.updated_at,
        unsubscribed_at=m.unsubscribed_at,
        bounce_count=m.bounce_count,
    )


MEMBER_PATH = Path(ge=1, le=MAX_ID, description="the member's number")


def publisher(who: Actor) -> None:
    """Reads of the member list are personal data: publishers only (use-cases check this
    themselves; the reads here are not use-cases)."""
    if not who.may(Permission.MEMBERS):
        assert who.role is not None
        raise Forbidden(who.name, who.role, Permission.MEMBERS)


def router(gateway: Gateway) -> APIRouter:
    router = APIRouter()
    reads(router, gateway)
    changes(router, gateway)
    imports(router, gateway)
    return router


def reads(router: APIRouter, gateway: Gateway) -> None:
    member_path = MEMBER_PATH

    @router.get("/members", response_model=MemberList)
    async def members_list(
        who: Caller,
        q: str = Query("", max_length=200),
        status: MemberStatus | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=10**7),
    ) -> MemberList:
        publisher(who)
        found = await gateway.read(membership.overview, q, status, offset // limit + 1, limit)
        return MemberList(
            members=[
                MemberOut(
                    id=m.id,
                    email=m.email,
                    name=m.name,
                    status=str(m.status),
                    created_at=m.created_at,
                )
                for m in found.members
            ],
            total=found.total,
            offset=(found.page - 1) * limit,
            counts={str(s): n for s, n in found.counts.items()},
        )

    @router.get(
        "/members.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}}
    )
    async def export_members(who: Caller, status: MemberStatus | None = None) -> Response:
        """Every member as CSV (email, name, status, created_at, unsubscribed_at, then one
        column per attribute), formula-safe cells; audited as an export."""
        done = await gateway.call(who, membership.export_members, status)
        headers = security_headers()
        headers["Content-Disposition"] = 'attachment; filename="members.csv"'
        return Response(done.text, media_type="text/csv; charset=utf-8", headers=headers)

    @router.get("/members/{member_id}", response_model=MemberDetailOut)
    async def get_member(who: Caller, member_id: int = member_path) -> MemberDetailOut:
        publisher(who)
        return member_out(await gateway.read(membership.detail, member_id))


def changes(router: APIRouter, gateway: Gateway) -> None:
    member_path = MEMBER_PATH

    @router.post("/members", response_model=MemberDetailOut, status_code=201)
    async def add_member(body: MemberIn, who: Caller) -> MemberDetailOut:
        added = await gateway.call(
            who, membership.add_member, body.email, body.name, body.attributes
        )
        return member_out(added)

    @router.patch("/members/{member_id}", response_model=MemberDetailOut)
    async def edit_member(
        body: MemberPatch, who: Caller, member_id: int = member_path
    ) -> MemberDetailOut:
        if body.name is None and body.attributes is None:
            raise NewsletterError("the request body: give name, attributes or both")
        done = await gateway.call(
            who, membership.edit_member, member_id, name=body.name, attributes=body.attributes
        )
        return member_out(done)

    @router.post("/members/{member_id}/unsubscribe", response_model=MemberDetailOut)
    async def unsubscribe_member(
        body: ReasonIn, who: Caller, member_id: int = member_path
    ) -> MemberDetailOut:
        done = await gateway.call(who, membership.unsubscribe_member, member_id, reason=body.reason)
        return member_out(done)

    @router.post("/members/{member_id}/erase", response_model=ErasedOut)
    async def erase_member(body: ReasonIn, who: Caller, member_id: int = member_path) -> ErasedOut:
        done = await gateway.call(who, erasure.erase_member, member_id, reason=body.reason)
        after = await gateway.read(membership.detail, member_id)
        return ErasedOut(
            message=f"member #{done.member_id} erased: {done.summary}", member=member_out(after)
        )


def imports(router: APIRouter, gateway: Gateway) -> None:
    @router.post("/members/import/preview", response_model=PreviewOut)
    async def preview_import(body: ImportIn, who: Caller) -> PreviewOut:
        """The layout the import would use (detected, or with `mapping` applied) and the first
        rows; nothing is stored."""
        publisher(who)
        mapping = {k: str(v) for k, v in body.mapping.items()}
        seen = await gateway.offload(members.preview, body.csv, mapping)
        layout = seen.layout
        return PreviewOut(
            source=layout.source,
            delimiter=layout.delimiter,
            columns=[
                ColumnOut(column=c, field=str(f))
                for c, f in zip(layout.columns, layout.fields, strict=True)
            ],
            rows=seen.rows,
        )

    @router.post("/members/import", response_model=ImportOut)
    async def import_members(body: ImportIn, who: Caller) -> ImportOut:
        """Import a member list: good rows are stored, each bad row is named by its line."""
        mapping = {k: str(v) for k, v in body.mapping.items()}
        report = await gateway.call(
            who, members.import_members, body.csv, source=body.source, overrides=mapping
        )
        return ImportOut(
            rows=report.rows,
            added=report.added,
            updated=report.updated,
            unchanged=report.unchanged,
            merged=report.merged,
            unsubscribed=report.unsubscribed,
            kept_unsubscribed=report.kept_unsubscribed,
            suppressed=report.suppressed,
            errors=[RowErrorOut(line=e.line, reason=e.reason) for e in report.errors],
        )
