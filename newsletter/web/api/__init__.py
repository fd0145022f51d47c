"""The JSON API (/api, behind a bearer token): the desk's actions for scripts, with OpenAPI.

A FastAPI sub-application whose every error is a 4xx (or 503) JSON body {"error": "..."};
its document is /api/openapi.json. Each endpoint is one service call through the gateway,
audited as "api" (the publisher's token) or "api:writer". One module a noun; each gives a
router, and this app includes them all, so app.routes lists every endpoint.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.security import HTTPBearer

from newsletter.services.boundary import Gateway
from newsletter.web.api import editorial, issues, people, surveys
from newsletter.web.api.base import (
    ErrorOut,
    answer_request_errors,
    answer_service_errors,
    require_token,
)
from newsletter.web.jobs import Jobs


def api_app(gateway: Gateway, jobs: Jobs) -> FastAPI:
    settings = gateway.services.settings
    bearer = HTTPBearer(
        auto_error=False,
        description="NEWSLETTER_API_TOKEN (a publisher), or NEWSLETTER_API_TOKEN_WRITER (a writer)",
    )
    api = FastAPI(
        title=f"{settings.list.name}: editor API",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        # Documents the scheme; the middleware does the checking, before anything else.
        dependencies=[Depends(bearer)],
        responses={
            400: {"model": ErrorOut},
            401: {"model": ErrorOut},
            403: {"model": ErrorOut},
            404: {"model": ErrorOut},
            409: {"model": ErrorOut},
            422: {"model": ErrorOut},
        },
    )
    require_token(api, settings)
    answer_request_errors(api)
    answer_service_errors(api)
    api.include_router(issues.router(gateway, jobs))
    api.include_router(editorial.router(gateway, jobs))
    api.include_router(people.router(gateway))
    api.include_router(surveys.router(gateway))
    return api


__all__ = ["api_app"]
