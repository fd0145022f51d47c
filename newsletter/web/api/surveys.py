"""The API's survey endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Path
from pydantic import BaseModel

from newsletter.services import votes
from newsletter.services.boundary import Gateway
from newsletter.web.api.base import MAX_ID, Caller


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


def router(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.get("/surveys/{survey_id}/results", response_model=ResultsOut)
    async def survey_results(who: Caller, survey_id: int = Path(ge=1, le=MAX_ID)) -> ResultsOut:
        r = await gateway.call(who, votes.settled_results, survey_id)
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

    return router
