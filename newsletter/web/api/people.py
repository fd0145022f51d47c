"""The API's member endpoints."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Query
from pydantic import BaseModel

from newsletter.services import members
from newsletter.services.boundary import Gateway
from newsletter.services.unit import Forbidden, Permission
from newsletter.web.api.base import Caller


class MemberOut(BaseModel):
    id: int
    email: str
    name: str
    status: str
    created_at: dt.datetime


class MemberList(BaseModel):
    members: list[MemberOut]


def router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.get("/members", response_model=MemberList)
    async def members_list(
        who: Caller,
        q: str = Query("", max_length=200),
        limit: int = Query(100, ge=1, le=1000),
    ) -> MemberList:
        if not who.may(Permission.MEMBERS):  # the list is personal data: publishers only
            assert who.role is not None
            raise Forbidden(who.name, who.role, Permission.MEMBERS)
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

    return router
