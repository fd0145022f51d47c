"""The web app of one site: member pages, the desk, the API, static files, errors, headers.

A Starlette application whose routes are values (MemberPages.routes, Desk.routes), with the
API mounted as a FastAPI sub-application for its OpenAPI document. Every response carries the
security headers (pages.SecurityHeaders); a member who reaches a wrong address or a broken
page gets an HTML page in the site's style, an API client gets JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route

from newsletter.config import Settings
from newsletter.delivery.mailer import Mailer
from newsletter.delivery.providers import Fetch, fetch_https
from newsletter.services import clicks, evidence, votes
from newsletter.services.boundary import Gateway
from newsletter.services.unit import Services
from newsletter.site import defaults_dir
from newsletter.storage import db
from newsletter.storage.models import utcnow
from newsletter.web.api import api_app
from newsletter.web.board import BoardPages
from newsletter.web.desk import Desk
from newsletter.web.feed import feed_route
from newsletter.web.hooks import Hooks
from newsletter.web.jobs import Jobs
from newsletter.web.members import MemberPages
from newsletter.web.pages import Pages, SecurityHeaders, json_error
from newsletter.web.preferences import PreferencePages
from newsletter.web.redirects import Redirects
from newsletter.web.signin import SigninPages

log = logging.getLogger(__name__)


def static_route(settings: Settings) -> Route:
    folders = (settings.site_dir / "templates" / "static", defaults_dir() / "templates" / "static")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        # A file name is short and plain; anything else is not ours (and a name past the
        # file system's limit would make the lookup itself fail).
        if (
            len(name.encode()) <= 200
            and "/" not in name
            and "\\" not in name
            and not name.startswith(".")
        ):
            for folder in folders:
                path = folder / name
                if path.is_file():
                    # Static assets may be cached (an hour); pages and answers never are.
                    return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
        raise HTTPException(404)

    return Route("/static/{name}", static, methods=["GET", "HEAD"])


def favicon_route(settings: Settings) -> Route:
    """/favicon.ico, which browsers ask for on their own: the site's, else the shipped one."""
    found = [
        path
        for path in (
            settings.site_dir / "templates" / "static" / "favicon.ico",
            defaults_dir() / "templates" / "static" / "favicon.ico",
        )
        if path.is_file()
    ]

    async def favicon(request: Request) -> Response:
        if not found:
            raise HTTPException(404)
        return FileResponse(
            found[0], media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"}
        )

    return Route("/favicon.ico", favicon, methods=["GET", "HEAD"])


def under_api(request: Request) -> bool:
    path = request.url.path
    return path == "/api" or path.startswith("/api/")


def error_handlers(pages: Pages) -> dict[Any, Callable[[Request, Exception], Any]]:
    """A member who reaches a wrong address or a broken page gets a page in the site's style;
    an API client gets JSON (the API's own handlers answer first; this catches the rest)."""

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        if under_api(request):  # a path the API's mount did not take (a line break in it)
            return json_error(status, f"no such endpoint: {request.method} {request.url.path}")
        if status == 405:
            return pages.message(
                "Not here", f"{request.method} is not what this address takes.", 405
            )
        return pages.message("Not found", "There is nothing at this address.", status)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        if under_api(request):
            return json_error(500, "internal error; the server log has the details")
        return pages.message(
            "Something went wrong",
            "The page could not be shown. Nothing you sent was lost; try again in a moment.",
            500,
        )

    return {404: not_found, 405: not_found, 500: crashed, Exception: crashed}


async def maintain(gateway: Gateway, jobs: Jobs) -> None:
    """Every few seconds: release the next issue if its scheduled send is due (and send it in
    the background), settle the votes and link clicks whose quiet period has passed and fold
    old hits, a
    chunk a transaction, so a burst's requests never pay for it nor wait on its lock."""
    interval = min(60.0, max(1.0, gateway.services.settings.web.vote_window_seconds / 3))
    while True:
        await asyncio.sleep(interval)
        try:
            await jobs.send_if_scheduled()
            while (await gateway.call("system", votes.settle)).decided == votes.SETTLE_CHUNK:
                pass
            while (await gateway.call("system", clicks.settle)).decided == clicks.SETTLE_CHUNK:
                pass
            while await gateway.call("system", evidence.fold) == evidence.FOLD_CHUNK:
                pass
        except Exception:  # a background task logs the failure and tries again
            log.exception("maintenance failed; trying again in %.0f s", interval)


def lifespan(
    gateway: Gateway, jobs: Jobs, background: bool, owned: bool = False
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """While the app runs: the system mail queue and the maintenance task (with background).
    `owned`: the app opened its database itself, and closes its connections when it stops."""

    @contextlib.asynccontextmanager
    async def running(app: Starlette) -> AsyncIterator[None]:
        services = gateway.services
        tasks = []
        queue: Mailer | None = None
        if background:
            queue = Mailer(services.settings, services.sessions, clock=services.clock)
            services.listen(queue.wake)
            tasks = [asyncio.create_task(queue.run()), asyncio.create_task(maintain(gateway, jobs))]
        try:
            yield
        finally:
            if queue is not None:
                queue.stop()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            gateway.close()
            if owned:
                gateway.services.sessions.kw["bind"].dispose()

    return running


def create_app(
    settings: Settings,
    sessions: sessionmaker[Session] | None = None,
    *,
    clock: Callable[[], dt.datetime] = utcnow,
    background: bool = True,
    fetch: Fetch = fetch_https,
) -> Starlette:
    """The web app for one site. `clock` and `fetch` (how a webhook fetches a provider's
    certificate and confirms a subscription over HTTPS) are seams for tests. With `background`, while the app
    runs (its lifespan) it delivers the system mail queue, and every few seconds settles the
    votes whose quiet period has passed and folds old link hits into counts."""
    services = Services(settings, sessions or db.open_database(settings.database_url), clock=clock)
    gateway = Gateway(services)
    pages = Pages(
        services.env,
        settings.list.name,
        settings.list.base_url.rstrip("/"),
        envs=services.env_for,
        names=settings.list.name_in,
    )
    jobs = Jobs(gateway)
    signins = SigninPages(services, gateway, pages)
    board_pages = BoardPages(services, gateway, pages, signins)
    member_pages = MemberPages(services, gateway, pages, viewer=signins.viewer)
    preference_pages = PreferencePages(services, gateway, pages)
    desk = Desk(gateway, pages, jobs)
    app = Starlette(
        routes=[
            *member_pages.routes(),
            *signins.routes(),
            *board_pages.routes(),
            *Redirects(gateway, pages).routes(),
            *preference_pages.routes(),
            feed_route(gateway, settings.list.name, settings.list.base_url.rstrip("/")),
            static_route(settings),
            favicon_route(settings),
            *desk.routes(),
            *Hooks(gateway, fetch).routes(),
            Mount("/api", app=api_app(gateway, jobs)),
        ],
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers=error_handlers(pages),
        lifespan=lifespan(gateway, jobs, background, owned=sessions is None),
    )
    app.state.services = services
    app.state.gateway = gateway
    app.state.desk_jobs = jobs
    app.state.desk = desk
    return app


__all__ = ["create_app"]
