"""The API's frame: bearer tokens and the role each carries, and errors as JSON bodies."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from newsletter.config import API_TOKEN_ENV, Settings
from newsletter.errors import NewsletterError, NothingToSend
from newsletter.services import erasure, issues, items, votes
from newsletter.services.unit import Actor, Forbidden, Role
from newsletter.web.pages import json_error

MAX_ID = 2**31 - 1
# The audit log's name for each token's requests.
PUBLISHER, WRITER = Actor("api", Role.PUBLISHER), Actor("api:writer", Role.WRITER)


class ErrorOut(BaseModel):
    error: str


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


def actor(request: Request) -> Actor:
    """Who the request acts as: set by the token check (a dependency of every endpoint)."""
    found: Actor = request.state.actor
    return found


# An endpoint's parameter for who calls it: `who: Caller`.
Caller = Annotated[Actor, Depends(actor)]


def require_token(api: FastAPI, settings: Settings) -> None:
    """Every request but the OpenAPI document's needs a bearer token: NEWSLETTER_API_TOKEN
    acts as a publisher, NEWSLETTER_API_TOKEN_WRITER as a writer. No token, no API."""
    tokens = [
        (token.encode(), who)
        for token, who in ((settings.api_token, PUBLISHER), (settings.writer_api_token, WRITER))
        if token
    ]

    @api.middleware("http")
    async def check_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.scope["path"].endswith("/openapi.json") and request.method == "GET":
            return await call_next(request)
        if not tokens:
            return json_error(503, f"the API is disabled: set {API_TOKEN_ENV} (24+ characters)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return json_error(401, f"missing token: send 'Authorization: Bearer <{API_TOKEN_ENV}>'")
        offered = given.strip().encode("utf-8", "surrogatepass")
        # Every token is compared, in constant time, whichever matches.
        matched = [who for token, who in tokens if hmac.compare_digest(offered, token)]
        if not matched:
            return json_error(401, "wrong token")
        request.state.actor = matched[0]
        return await call_next(request)


def answer_request_errors(api: FastAPI) -> None:
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


def answer_member_errors(api: FastAPI) -> None:
    """No such member: 404; an action that does not fit the member (erased already): 409."""

    async def on_member(request: Request, exc: Exception) -> JSONResponse:
        return json_error(404 if isinstance(exc, erasure.NoSuchMember) else 409, str(exc))

    api.add_exception_handler(erasure.NoSuchMember, on_member)
    api.add_exception_handler(erasure.Conflict, on_member)


def answer_service_errors(api: FastAPI) -> None:
    """What a service call raised, as JSON with its status; anything else is a bare 500."""
    answer_member_errors(api)

    @api.exception_handler(issues.NotFound)
    async def on_not_found(request: Request, exc: issues.NotFound) -> JSONResponse:
        return json_error(404, str(exc))

    @api.exception_handler(votes.NoSuchSurvey)
    async def on_no_survey(request: Request, exc: votes.NoSuchSurvey) -> JSONResponse:
        return json_error(404, str(exc))

    @api.exception_handler(Forbidden)
    async def on_forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return json_error(403, str(exc))

    @api.exception_handler(items.NoSuchItem)
    async def on_no_item(request: Request, exc: items.NoSuchItem) -> JSONResponse:
        return json_error(404, str(exc))

    @api.exception_handler(items.ItemGoneOut)
    async def on_gone_out(request: Request, exc: items.ItemGoneOut) -> JSONResponse:
        return json_error(409, str(exc))

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
