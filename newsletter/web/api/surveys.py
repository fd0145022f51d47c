"""The API's survey endpoints: list, make, open and close surveys; results and the votes as CSV.

The wrong state for an action (opening an open survey) is a 409, raised here as an
HTTPException, which base.py's handler answers as JSON like every other error."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from newsletter.errors import NewsletterError
from newsletter.services import surveys, votes
from newsletter.services.boundary import Gateway
from newsletter.web.api.base import MAX_ID, Caller
from newsletter.web.pages import security_headers


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


class SurveyOut(BaseModel):
    id: int
    key: str
    question: str
    source: str = Field(description="config (config.toml's [survey]) or desk (made by an editor)")
    status: str = Field(description="draft, open or closed")
    options: list[str]
    votes: int = Field(description="members whose vote is counted")
    created_at: dt.datetime | None
    opened_at: dt.datetime | None
    closed_at: dt.datetime | None
    replaced: bool = Field(description="from config.toml, which now asks another: not reopened")


class SurveyList(BaseModel):
    surveys: list[SurveyOut]
    default_id: int | None = Field(
        description="the default survey, which the next issue carries unless its settings "
        "choose another (null: none is open, or config.toml's survey is not stored yet)"
    )


class SurveyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Bounds on the body only; the rules (and their messages) are the service layer's.
    question: str = Field(max_length=10_000, description="one line, 1 to 1000 characters")
    options: list[str] = Field(
        max_length=100, description="2 to 10 distinct options, each 1 to 200 characters"
    )


class SurveyActionOut(BaseModel):
    message: str
    survey: SurveyOut


def survey_out(info: surveys.SurveyInfo) -> SurveyOut:
    return SurveyOut(
        id=info.id,
        key=info.key,
        question=info.question,
        source=str(info.source),
        status=str(info.status),
        options=list(info.options),
        votes=info.votes,
        created_at=info.created_at,
        opened_at=info.opened_at,
        closed_at=info.closed_at,
        replaced=info.replaced,
    )


def router(gateway: Gateway) -> APIRouter:
    router = APIRouter()
    survey_path = Path(ge=1, le=MAX_ID, description="the survey's number")

    @router.get("/surveys", response_model=SurveyList)
    async def list_surveys() -> SurveyList:
        found = await gateway.read(surveys.listing)
        default = found.default
        return SurveyList(
            surveys=[survey_out(s) for s in found.surveys],
            default_id=default.id if default is not None and default.stored else None,
        )

    @router.post("/surveys", response_model=SurveyActionOut, status_code=201)
    async def create_survey(body: SurveyIn, who: Caller) -> SurveyActionOut:
        try:
            made = await gateway.call(who, surveys.create_survey, body.question, body.options)
        except surveys.InvalidSurvey as exc:  # named as a body field, and as people count
            place = f" (option {exc.index + 1})" if exc.index is not None else ""
            raise NewsletterError(f"body field {exc.path!r}{place}: {exc.reason}") from None
        return SurveyActionOut(
            message=f"survey #{made.id} made as a draft: open it to let issues carry it",
            survey=survey_out(made),
        )

    @router.post("/surveys/{survey_id}/open", response_model=SurveyActionOut)
    async def open_survey(who: Caller, survey_id: int = survey_path) -> SurveyActionOut:
        try:
            info = await gateway.call(who, surveys.open_survey, survey_id)
        except surveys.Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        return SurveyActionOut(message=f"survey #{info.id} is open", survey=survey_out(info))

    @router.post("/surveys/{survey_id}/close", response_model=SurveyActionOut)
    async def close_survey(who: Caller, survey_id: int = survey_path) -> SurveyActionOut:
        try:
            info = await gateway.call(who, surveys.close_survey, survey_id)
        except surveys.Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        return SurveyActionOut(
            message=f"survey #{info.id} is closed: {info.votes} votes counted",
            survey=survey_out(info),
        )

    @router.get("/surveys/{survey_id}/results", response_model=ResultsOut)
    async def survey_results(who: Caller, survey_id: int = survey_path) -> ResultsOut:
        r = await gateway.call(who, votes.settled_results, survey_id, drafts=True)
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

    @router.get(
        "/surveys/{survey_id}/votes.csv",
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}, "description": "every counted vote"}},
    )
    async def survey_votes(who: Caller, survey_id: int = survey_path) -> Response:
        """Every counted vote (email, option, label, counted_at): a publisher's, since each
        row names a member."""
        export = await gateway.call(who, surveys.votes_csv, survey_id)
        headers = security_headers()
        headers["Content-Disposition"] = f'attachment; filename="survey-{survey_id}-votes.csv"'
        return Response(export.text, media_type="text/csv; charset=utf-8", headers=headers)

    return router
