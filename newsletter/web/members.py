"""Member pages: votes, unsubscribe, subscribe with double opt-in, archive and search (with the board).

Nothing here changes state on a plain GET or HEAD: those only show a page and record the
hit as evidence (docs/votes.md). Votes wait for evidence that a person clicked; unsubscribe
and confirmation take a POST (RFC 8058's one-click POST for List-Unsubscribe).

Each handler parses its input, makes one service call through the gateway (hits and votes go
to the batcher, which commits many at once while the requests wait) and renders the result.
What does not change per member is rendered once: the home and subscribe pages, each
archived issue's cut-up HTML, a survey's results between changes, a vote page per choice.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from newsletter.content.addresses import clean_name, normalize_address
from newsletter.content.archive import ArchivePage
from newsletter.content.results import Results
from newsletter.errors import NewsletterError, TokenError
from newsletter.services import board, evidence, issues, members, votes
from newsletter.services.boundary import Gateway
from newsletter.services.unit import Services
from newsletter.storage.models import MemberStatus
from newsletter.tokens import Kind
from newsletter.web.pages import CSP_ISSUE, CSP_NONE, Pages, empty, security_headers

CONFIRM_DAYS = 7
FORM_LIMIT = 64 * 1024  # a member's form is a few fields; anything larger is refused
MAX_ID = 2**31 - 1
TOKEN_SLOT = "\x00token\x00"  # stands in for the member's token in a cached vote page


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def agent(request: Request) -> str:
    return request.headers.get("user-agent", "")


async def form_fields(request: Request) -> dict[str, str] | None:
    """A urlencoded or multipart form as one value per field; None when it is too large or
    malformed. Urlencoded bodies (what every member form sends) are parsed directly."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=0, max_fields=50, max_part_size=FORM_LIMIT)
        except (MultiPartException, HTTPException):  # a malformed or oversized body
            return None
        return {k: v for k, v in form.items() if isinstance(v, str)}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return {k: v for k, v in urllib.parse.parse_qsl(text, keep_blank_values=True)[:50]}


class TTLCache:
    """A few computed answers, each kept for `ttl` seconds or until dropped; one computation
    at a time per key (others wait for it instead of repeating it)."""

    def __init__(self, ttl: float, size: int = 256) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._pending: dict[Any, asyncio.Future[Any]] = {}

    async def get(self, key: Any, compute: Callable[[], Awaitable[Any]]) -> Any:
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so no one is told it was never retrieved
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(value)
        self._entries[key] = (now, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def drop(self, key: Any = None) -> None:
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key, None)


class MemberPages:
    """The member-facing routes of one site."""

    def __init__(
        self,
        services: Services,
        gateway: Gateway,
        pages: Pages,
        *,
        viewer: Callable[[Request], Awaitable[object | None]] | None = None,
    ) -> None:
        self.services = services
        # Who is signed in to the board (web/signin.py), for search's board hits.
        self.viewer = viewer
        self.gateway = gateway
        self.pages = pages
        self.signer = services.signer
        # Counted results change only when the vote rule counts (a person's click, settling,
        # closing); other processes' changes show within the TTL.
        self.results_cache = TTLCache(ttl=2.0)
        self.vote_pages: OrderedDict[tuple[Results, int | None, int], str] = OrderedDict()
        self.archive_cache = TTLCache(ttl=2.0)
        self.search_cache = TTLCache(ttl=5.0, size=512)
        # (issue, variant): the issue's own copy is variant None.
        self.issue_pages: OrderedDict[tuple[int, int | None], ArchivePage] = OrderedDict()
        self.static_pages: dict[str, str] = {}
        services.listen(self._changed)

    def _changed(self, what: str) -> None:
        if what.startswith("survey:"):
            self.results_cache.drop(int(what.split(":", 1)[1]))
            self.vote_pages.clear()
        elif what == "issues":
            self.archive_cache.drop()
        elif what == "board":
            self.search_cache.drop()

    def routes(self) -> list[Route]:
        read = ["GET", "HEAD"]
        return [
            Route("/", self.home, methods=read),
            Route("/v/{token}", self.vote_page, methods=read),
            Route("/v/{token}", self.vote_form, methods=["POST"]),
            Route("/v/{token}/person", self.vote_person, methods=["POST"]),
            Route("/survey/{survey_id:int}", self.survey_results, methods=read),
            Route("/t/{token}", self.trap, methods=read),
            Route("/u/{token}", self.unsubscribe_page, methods=read),
            Route("/u/{token}", self.unsubscribe_form, methods=["POST"]),
            Route("/subscribe", self.subscribe_page, methods=read),
            Route("/subscribe", self.subscribe_form, methods=["POST"]),
            Route("/c/{token}", self.confirm_page, methods=read),
            Route("/c/{token}", self.confirm_form, methods=["POST"]),
            Route("/archive", self.archive, methods=read),
            Route("/archive/{issue_id:int}", self.archived_issue, methods=read),
            Route("/search", self.search, methods=read),
        ]

    def check(self, token: str, kind: Kind, *, max_age_days: int | None = None) -> tuple[int, ...]:
        """A token's values; TokenError for a bad token, and for a genuine one whose ids no
        row can have (the database's ids are 32-bit), so it gets the same clear page."""
        values = self.signer.check(token, kind, max_age_days=max_age_days)
        if any(v > MAX_ID for v in values):
            raise TokenError("the link names something that does not exist")
        return values

    def _static(self, template: str) -> HTMLResponse:
        html = self.static_pages.get(template)
        if html is None:
            html = self.static_pages[template] = self.pages.render(f"web/{template}")
        return HTMLResponse(html, headers=security_headers())

    async def home(self, request: Request) -> Response:
        return self._static("home.html")

    # --- votes -------------------------------------------------------------------------------

    async def results(self, survey_id: int) -> Results:
        async def compute() -> Results:
            return await self.gateway.read(votes.results, survey_id)

        result: Results = await self.results_cache.get(survey_id, compute)
        return result

    async def _vote_answer(
        self,
        request: Request,
        token: str,
        click: votes.Click,
        *,
        wrong_option: Callable[[], Response],
    ) -> Response:
        if click.outcome == votes.Outcome.UNKNOWN:
            return self.pages.bad_link("the link names a survey or member that does not exist")
        if click.outcome == votes.Outcome.NO_OPTION:
            return wrong_option()
        if click.outcome == votes.Outcome.CLOSED:
            results = await self.results(click.survey_id)
            return self.pages.page("results.html", results=results, closed=True)
        if request.method == "HEAD":
            return empty()
        results = await self.results(click.survey_id)
        key = (results, click.counted_before, click.option)
        html = self.vote_pages.get(key)
        if html is None:
            mine = results.with_choice(click.counted_before, click.option)
            html = self.pages.render(
                "web/vote.html",
                results=mine,
                chosen=click.option,
                chosen_label=mine.label(click.option),
                token=TOKEN_SLOT,
            )
            self.vote_pages[key] = html
            while len(self.vote_pages) > 256:
                self.vote_pages.popitem(last=False)
        return HTMLResponse(html.replace(TOKEN_SLOT, token), headers=security_headers())

    async def vote_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            survey_id, member_id, option = self.check(token, Kind.VOTE)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        click = await self.gateway.submit(
            f"member:{member_id}",
            votes.click,
            survey_id,
            member_id,
            option,
            method=request.method,
            ip=client_ip(request),
            user_agent=agent(request),
        )
        return await self._vote_answer(
            request,
            token,
            click,
            wrong_option=lambda: self.pages.bad_link(f"the survey has no option {option}"),
        )

    async def vote_form(self, request: Request) -> Response:
        """The vote page's own form: choose again, or the person field set by its script."""
        token = request.path_params["token"]
        try:
            survey_id, member_id, _ = self.check(token, Kind.VOTE)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        form = await form_fields(request) or {}
        try:
            option = int(form.get("option", ""))
        except ValueError:
            option = -1
        if not 0 <= option <= MAX_ID:
            return self.pages.message(
                "Choose an option", "The form did not say which option you chose.", 400
            )
        click = await self.gateway.submit(
            f"member:{member_id}",
            votes.click,
            survey_id,
            member_id,
            option,
            method="POST",
            person=form.get("person") == "1",
            ip=client_ip(request),
            user_agent=agent(request),
        )
        return await self._vote_answer(
            request,
            token,
            click,
            wrong_option=lambda: self.pages.message(
                "Choose an option", f"There is no option {option} in this survey.", 400
            ),
        )

    async def vote_person(self, request: Request) -> Response:
        """The vote page's script reports a trusted pointer, key or touch event."""
        try:
            survey_id, member_id, option = self.check(request.path_params["token"], Kind.VOTE)
        except TokenError:
            return empty(400)
        counted = await self.gateway.submit(
            f"member:{member_id}",
            votes.person,
            survey_id,
            member_id,
            option,
            ip=client_ip(request),
            user_agent=agent(request),
        )
        return empty(204 if counted else 404)

    async def survey_results(self, request: Request) -> Response:
        survey_id = int(request.path_params["survey_id"])
        if survey_id > MAX_ID:
            return self.pages.message("No such survey", f"There is no survey #{survey_id}.", 404)
        try:
            results = await self.gateway.call("web", votes.settled_results, survey_id)
        except votes.NoSuchSurvey:
            return self.pages.message("No such survey", f"There is no survey #{survey_id}.", 404)
        return self.pages.page("results.html", results=results, closed=results.status != "open")

    # --- the hidden link -----------------------------------------------------------------------

    async def trap(self, request: Request) -> Response:
        not_found = self.pages.message("Not found", "There is nothing at this address.", 404)
        try:
            member_id, issue_id = self.check(request.path_params["token"], Kind.TRAP)
        except TokenError:
            return not_found
        visitor = await self.gateway.submit(
            f"member:{member_id}",
            evidence.visit,
            member_id,
            kind="trap",
            method=request.method,
            issue_id=issue_id,
            ip=client_ip(request),
            user_agent=agent(request),
        )
        if visitor is None:  # signed, but for no member: the same answer as a bad token
            return not_found
        return HTMLResponse("<!DOCTYPE html><title></title>", headers=security_headers(CSP_NONE))

    # --- unsubscribe ---------------------------------------------------------------------------

    def _unsubscribe_view(self, token: str, page: members.UnsubscribePage) -> HTMLResponse:
        return self.pages.page(
            "unsubscribe.html",
            member=page,
            token=token,
            confirm=page.ask_again,
            done=page.done,
        )

    async def unsubscribe_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            member_id, issue_id = self.check(token, Kind.UNSUBSCRIBE)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        page = await self.gateway.submit(
            f"member:{member_id}",
            members.unsubscribe_link,
            member_id,
            issue_id,
            method=request.method,
            ip=client_ip(request),
            user_agent=agent(request),
        )
        if page is None:
            return self.pages.bad_link("the link names a member that does not exist")
        if request.method == "HEAD":
            return empty()
        return self._unsubscribe_view(token, page)

    async def unsubscribe_form(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            member_id, issue_id = self.check(token, Kind.UNSUBSCRIBE)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        form = await form_fields(request)
        if form is None:
            return self.pages.message("Choose an action", "The form could not be read.", 400)
        one_click = form.get("List-Unsubscribe") == "One-Click"
        action = form.get("action", "")
        if not one_click and action not in ("unsubscribe", "resubscribe"):
            return self.pages.message("Choose an action", "The form did not say what to do.", 400)
        page = await self.gateway.submit(
            f"member:{member_id}",
            members.unsubscribe_link,
            member_id,
            issue_id,
            method="POST",
            action=action,
            confirmed=form.get("confirm") == "1",
            one_click=one_click,
            ip=client_ip(request),
            user_agent=agent(request),
        )
        if page is None:
            return self.pages.bad_link("the link names a member that does not exist")
        if one_click:  # RFC 8058: a mail client's one-click POST; no page, no questions
            return PlainTextResponse("unsubscribed\n", headers=security_headers(CSP_NONE))
        return self._unsubscribe_view(token, page)

    # --- subscribe (double opt-in) -------------------------------------------------------------

    async def subscribe_page(self, request: Request) -> Response:
        return self.pages.page("subscribe.html", error="", email="", name="")

    async def subscribe_form(self, request: Request) -> Response:
        form = await form_fields(request)
        if form is None:
            return self.pages.page(
                "subscribe.html", 400, error="The form could not be read.", email="", name=""
            )
        raw_email, raw_name = form.get("email", ""), form.get("name", "")
        if form.get("website"):  # a field people never see: only bots fill it in
            return self.pages.page("subscribed.html")
        try:
            email = normalize_address(raw_email)
            name = clean_name(raw_name)
        except ValueError as exc:
            return self.pages.page(
                "subscribe.html", 400, error=str(exc), email=raw_email[:320], name=raw_name[:200]
            )
        signup = await self.gateway.call(
            "web", members.subscribe, email, name, ip=client_ip(request)
        )
        if signup.limited:
            return self.pages.message(
                "Too many sign-ups",
                "Too many sign-ups from your network; try again in an hour.",
                429,
            )
        # The same answer whatever the address's state: the page reveals no membership. The
        # message is queued, so a relay outage delays it rather than losing it.
        return self.pages.page("subscribed.html")

    def _confirm_token(self, token: str) -> int:
        (member_id,) = self.check(token, Kind.CONFIRM, max_age_days=CONFIRM_DAYS)
        return member_id

    async def confirm_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            member_id = self._confirm_token(token)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        if request.method == "HEAD":
            return empty()
        member = await self.gateway.submit("web", evidence.member, member_id)
        if member is None:
            return self.pages.bad_link("the link names a member that does not exist")
        return self.pages.page("confirm.html", member=member, token=token, done=False)

    async def confirm_form(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            member_id = self._confirm_token(token)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        try:
            await self.gateway.call(f"member:{member_id}", members.confirm, member_id)
        except NewsletterError:
            return self.pages.bad_link("this address cannot be subscribed")
        member = await self.gateway.submit("web", evidence.member, member_id)
        return self.pages.page("confirm.html", member=member, token=token, done=True)

    # --- archive and search --------------------------------------------------------------------

    async def archive(self, request: Request) -> Response:
        async def compute() -> str:
            entries = await self.gateway.read(issues.archive_list)
            return self.pages.render("web/archive.html", issues=entries)

        html: str = await self.archive_cache.get("archive", compute)
        return HTMLResponse(html, headers=security_headers())

    async def _issue_page(self, issue_id: int, variant: int | None = None) -> ArchivePage | None:
        page = self.issue_pages.get((issue_id, variant))
        if page is None:
            compiled = await self.gateway.read(issues.archived, issue_id, variant)
            if compiled is None:
                return None
            page = ArchivePage(compiled, issue_id, self.services.links)
            self.issue_pages[(issue_id, variant)] = page
            while len(self.issue_pages) > 64:
                self.issue_pages.popitem(last=False)
        return page

    async def archived_issue(self, request: Request) -> Response:
        issue_id = int(request.path_params["issue_id"])
        page = await self._issue_page(issue_id) if issue_id <= MAX_ID else None
        if page is None:
            return self.pages.message(
                "No such issue", f"There is no issue #{issue_id} in the archive.", 404
            )
        member: tuple[int, str] | None = None
        token = request.query_params.get("t", "")
        if token:
            try:
                token_issue, member_id = self.check(token, Kind.VIEW)
            except TokenError:
                token_issue = member_id = 0
            if token_issue == issue_id:
                visitor = await self.gateway.submit(
                    f"member:{member_id}",
                    evidence.visit,
                    member_id,
                    kind="view",
                    method=request.method,
                    issue_id=issue_id,
                    ip=client_ip(request),
                    user_agent=agent(request),
                )
                if visitor is not None and visitor.status == MemberStatus.ACTIVE:
                    member = (visitor.member_id, visitor.name)
                    # The member sees the copy they were sent (their sections, their language).
                    variant = await self.gateway.read(issues.variant_of, issue_id, member_id)
                    page = await self._issue_page(issue_id, variant) or page
        return HTMLResponse(page.render(member), headers=security_headers(CSP_ISSUE))

    async def _board_visible(self, request: Request) -> bool:
        """Board messages are found by anyone when the board is public, else by members."""
        if self.services.settings.board.read == "public":
            return True
        return self.viewer is not None and await self.viewer(request) is not None

    async def search(self, request: Request) -> Response:
        q = request.query_params.get("q", "")[:200]
        hits: list[Any] = []
        board_hits: list[Any] = []
        if q.strip():

            async def compute() -> list[Any]:
                return await self.gateway.read(issues.search_archive, q)

            async def compute_board() -> list[Any]:
                return await self.gateway.read(board.search_board, q)

            hits = await self.search_cache.get(q.strip(), compute)
            if await self._board_visible(request):
                board_hits = await self.search_cache.get(("board", q.strip()), compute_board)
        return self.pages.page("search.html", q=q, hits=hits, board_hits=board_hits)


__all__ = ["MemberPages", "client_ip"]
