"""The editor's desk pages (/desk, behind a login) and the JSON API (/api, behind a bearer token).

`install(app, links)` adds both to the web app. The pages are server-rendered with the same
strict Content-Security-Policy as the member pages; every POST form carries a CSRF token
bound to the editor's session. The API is a sub-application with its own OpenAPI document
(/api/openapi.json) whose every error is a 4xx JSON body {"error": "..."}. Every editor
action is written to the audit log (desk.audit) with the editor's name, or "api".
See docs/desk.md.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html import escape as html_escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from newsletter.errors import NewsletterError, NothingToSend
from newsletter.services import desk
from newsletter.services import sending as publish

if TYPE_CHECKING:
    from newsletter.web.members import Links

log = logging.getLogger(__name__)

COOKIE = "desk_session"
SESSION_SECONDS = 12 * 3600
MAX_UPLOAD = 20 * 1024 * 1024
MAX_ID = 2**31 - 1
API_ACTOR = "api"


# --- background jobs (send now, resume) ----------------------------------------------------


class Jobs:
    """Sends started from the desk or the API, running as tasks in the server's event loop."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.last: dict[str, str] = {}  # job name → how it ended

    def running(self) -> list[str]:
        return sorted(name for name, task in self.tasks.items() if not task.done())

    def start(self, name: str, work: Callable[[], Awaitable[str]]) -> None:
        """Start `work` unless a job of that name is running; Conflict if it is."""
        task = self.tasks.get(name)
        if task is not None and not task.done():
            raise desk.Conflict(f"{name} is already running")
        self.tasks[name] = asyncio.get_running_loop().create_task(self._run(name, work))

    async def _run(self, name: str, work: Callable[[], Awaitable[str]]) -> None:
        try:
            self.last[name] = await work()
        except NothingToSend as exc:
            self.last[name] = str(exc)
        except Exception as exc:  # a background job has nobody to raise to: log it
            log.exception("%s failed", name)
            self.last[name] = f"failed: {exc}"


def start_send(links: Links, jobs: Jobs) -> str:
    """Start `publish.send` in the background; Conflict when there is nothing to send."""
    if not desk.has_work(links.sessions):
        raise desk.Conflict("nothing to send: no new items and no unfinished issue")

    async def work() -> str:
        summaries = await publish.send(links.settings, links.sessions)
        return f"send finished: {len(summaries)} issue(s) delivered"

    jobs.start("send", work)
    return "sending started; the list shows its progress"


def start_resume(links: Links, jobs: Jobs, issue_id: int, actor: str) -> desk.IssueInfo:
    """Mark a paused issue sending again and deliver it in the background."""
    info = desk.resume(links.sessions, issue_id, actor=actor)

    async def work() -> str:
        issue = publish.get_issue(links.sessions, issue_id)
        await publish.deliver(links.settings, links.sessions, issue)
        return f"issue #{issue_id} resumed"

    jobs.start(f"resume #{issue_id}", work)
    return info


# --- editor sessions and CSRF --------------------------------------------------------------


class LoginThrottle:
    """Failed desk logins, counted per client address and per editor name over `window`
    seconds. Past `per_address` failures from one address, or `per_name` against one name,
    the login form answers 429 without checking the password (so without spending scrypt's
    50 ms on a guess) until the oldest failure leaves the window. In memory, per `serve`
    process; at most `keys` addresses and names are tracked, the least recent dropped first.
    """

    def __init__(
        self,
        per_address: int = 10,
        per_name: int = 30,
        window: float = 900.0,
        keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = {"address": per_address, "name": per_name}
        self.window = window
        self.keys = keys
        self.clock = clock
        self._failures: collections.OrderedDict[tuple[str, str], collections.deque[float]] = (
            collections.OrderedDict()
        )

    def _recent(self, key: tuple[str, str], now: float) -> collections.deque[float]:
        times = self._failures.get(key)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, address: str, name: str) -> int:
        """Seconds until a login from `address` as `name` is checked again; 0: check it now."""
        now = self.clock()
        wait = 0.0
        for kind, value in (("address", address), ("name", name.casefold())):
            times = self._recent((kind, value), now)
            if len(times) >= self.limits[kind]:
                wait = max(wait, times[0] + self.window - now)
        return math.ceil(wait)

    def failed(self, address: str, name: str) -> None:
        now = self.clock()
        for key in (("address", address), ("name", name.casefold())):
            self._failures.setdefault(key, collections.deque()).append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > self.keys:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(("address", address), None)


@dataclass(frozen=True, slots=True)
class Editor:
    name: str
    sid: str


class DeskAuth:
    """Signed session cookies (stdlib HMAC-SHA256) and per-session CSRF tokens."""

    def __init__(self, links: Links) -> None:
        self.settings = links.settings
        secret = links.settings.require_secret()[0]
        self.key = hmac.new(secret, b"newsletter desk session", hashlib.sha256).digest()
        # Checked when the name is unknown, so a wrong name takes as long as a wrong password.
        self._dummy_hash = ""

    def _sign(self, purpose: bytes, data: bytes) -> str:
        mac = hmac.new(self.key, purpose + b"\x00" + data, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def login(self, name: str, password: str) -> str | None:
        """The editor's name when name and password match an [[editor]] entry, else None."""
        found = None
        for editor in self.settings.editor:
            if hmac.compare_digest(editor.name.encode(), name.encode()):
                found = editor
        if found is None and not self._dummy_hash:
            self._dummy_hash = desk.hash_password(secrets.token_urlsafe(16))
        ok = desk.verify_password(password, found.password_hash if found else self._dummy_hash)
        return found.name if found and ok else None

    def cookie(self, name: str) -> str:
        payload = json.dumps(
            {"n": name, "s": secrets.token_urlsafe(16), "e": int(time.time()) + SESSION_SECONDS}
        ).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._sign(b'session', body.encode())}"

    def editor(self, request: Request) -> Editor | None:
        value = request.cookies.get(COOKIE, "")
        body, _, sig = value.partition(".")
        if not body or not hmac.compare_digest(sig, self._sign(b"session", body.encode())):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            name, sid, expires = str(data["n"]), str(data["s"]), int(data["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time() or name not in {e.name for e in self.settings.editor}:
            return None
        return Editor(name, sid)

    def csrf(self, editor: Editor) -> str:
        return self._sign(b"csrf", editor.sid.encode())

    def csrf_ok(self, editor: Editor, token: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token, self.csrf(editor))

    def notice_query(self, text: str, error: bool = False) -> str:
        """A redirect's query string carrying a message the page shows; signed, so a link
        from elsewhere cannot make the desk display words of its choosing."""
        kind = "error" if error else "done"
        return "?" + urlencode(
            {"n": text, "k": kind, "s": self._sign(b"notice", f"{kind}:{text}".encode())}
        )

    def notice(self, request: Request) -> tuple[str, str]:
        text, kind, sig = (request.query_params.get(k, "") for k in ("n", "k", "s"))
        if text and hmac.compare_digest(sig, self._sign(b"notice", f"{kind}:{text}".encode())):
            return text, kind
        return "", ""


# --- pages ---------------------------------------------------------------------------------


def desk_router(links: Links, jobs: Jobs) -> APIRouter:
    from newsletter.web.members import CSP, CSP_ISSUE, client_ip, security_headers

    auth = DeskAuth(links)
    throttle = LoginThrottle()
    router = APIRouter(prefix="/desk", include_in_schema=False)
    # The preview is the email's HTML (inline styles) shown in this site's own frames.
    preview_csp = CSP_ISSUE.replace("frame-ancestors 'none'", "frame-ancestors 'self'")
    # The preview page frames /desk/preview.html from this origin.
    frames_csp = CSP.replace("default-src 'none'", "default-src 'none'; frame-src 'self'")

    def page(
        template: str, editor: Editor | None, status: int = 200, csp: str = CSP, **context: Any
    ) -> HTMLResponse:
        html = links.env.get_template(f"desk/{template}").render(
            list_name=links.settings.list.name,
            editor=editor,
            csrf=auth.csrf(editor) if editor else "",
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=security_headers(csp))

    def to_login() -> RedirectResponse:
        return RedirectResponse("/desk/login", status_code=303, headers=security_headers())

    def back(path: str, text: str, error: bool = False) -> RedirectResponse:
        return RedirectResponse(
            path + auth.notice_query(text, error), status_code=303, headers=security_headers()
        )

    def forbidden(editor: Editor | None) -> HTMLResponse:
        return page(
            "message.html",
            editor,
            403,
            title="Refused",
            text="The form's security token is missing or out of date; nothing was changed. "
            "Reload the page and try again.",
        )

    async def posted(request: Request) -> tuple[Editor | None, Any, Response | None]:
        """The editor and form of a POST, or the response refusing it (login, CSRF)."""
        editor = auth.editor(request)
        if editor is None:
            return None, None, to_login()
        try:
            form = await request.form(max_part_size=MAX_UPLOAD)
        except Exception:  # a malformed multipart body
            return editor, None, forbidden(editor)
        if not auth.csrf_ok(editor, form.get("csrf")):
            await form.close()
            return editor, None, forbidden(editor)
        return editor, form, None

    @router.get("/login", response_model=None)
    def login_form(request: Request) -> Response:
        if auth.editor(request) is not None:
            return RedirectResponse("/desk", status_code=303)
        return page("login.html", None, error="", name="")

    @router.post("/login", response_model=None)
    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("name", ""))[:200], str(form.get("password", ""))[:1000]
        if not links.settings.editor:
            return page(
                "login.html", None, 403, error="No editor is configured ([[editor]])", name=name
            )
        address = client_ip(request)
        wait = throttle.retry_after(address, name)
        if wait:
            minutes = math.ceil(wait / 60)
            refused = page(
                "login.html",
                None,
                429,
                error=f"Too many failed logins. Try again in {minutes} minute(s).",
                name=name,
            )
            refused.headers["Retry-After"] = str(wait)
            return refused
        found = await asyncio.to_thread(auth.login, name, password)
        if found is None:
            throttle.failed(address, name)
            log.warning("failed desk login as %r from %s", name[:80], address or "?")
            return page("login.html", None, 403, error="Wrong name or password.", name=name)
        throttle.succeeded(address)
        with links.sessions.begin() as session:
            desk.audit(session, found, "login")
        response = RedirectResponse("/desk", status_code=303, headers=security_headers())
        response.set_cookie(
            COOKIE,
            auth.cookie(found),
            max_age=SESSION_SECONDS,
            path="/desk",
            httponly=True,
            samesite="strict",
            secure=links.settings.list.base_url.startswith("https://"),
        )
        return response

    @router.post("/logout", response_model=None)
    async def logout(request: Request) -> Response:
        _, _, refused = await posted(request)
        if refused is not None:
            return refused
        response = to_login()
        response.delete_cookie(COOKIE, path="/desk")
        return response

    @router.get("", response_model=None)
    def index(request: Request) -> Response:
        editor = auth.editor(request)
        if editor is None:
            return to_login()
        text, kind = auth.notice(request)
        return page(
            "index.html",
            editor,
            issues=desk.list_issues(links.sessions),
            running=jobs.running(),
            last=jobs.last,
            notice=text,
            notice_kind=kind,
        )

    @router.get("/issues.json", response_model=None)
    def issues_json(request: Request) -> Response:
        if auth.editor(request) is None:
            return JSONResponse({"error": "log in first"}, 401, headers=security_headers())
        body = {
            "issues": [
                issue_out(i).model_dump(mode="json") for i in desk.list_issues(links.sessions)
            ],
            "running": jobs.running(),
        }
        return JSONResponse(body, headers=security_headers())

    @router.post("/send", response_model=None)
    async def send_now(request: Request) -> Response:
        editor, _, refused = await posted(request)
        if refused is not None or editor is None:
            return refused or to_login()
        try:
            text = start_send(links, jobs)
        except NewsletterError as exc:
            return back("/desk", str(exc), error=True)
        with links.sessions.begin() as session:
            desk.audit(session, editor.name, "send")
        return back("/desk", text)

    @router.post("/test", response_model=None)
    async def test_send(request: Request) -> Response:
        editor, form, refused = await posted(request)
        if refused is not None or editor is None:
            return refused or to_login()
        to = str(form.get("to", ""))[:320]
        raw_issue = str(form.get("issue", "")).strip()
        try:
            issue_id = int(raw_issue) if raw_issue else None
            await desk.test_send(links.settings, links.sessions, to, issue_id, actor=editor.name)
        except (ValueError, NewsletterError) as exc:
            return back("/desk", f"test not sent: {exc}", error=True)
        return back("/desk", f"test message sent to {to.strip()}")

    @router.post("/issues/{issue_id}/{action}", response_model=None)
    async def issue_action(
        request: Request, action: str, issue_id: int = Path(ge=1, le=MAX_ID)
    ) -> Response:
        editor, _, refused = await posted(request)
        if refused is not None or editor is None:
            return refused or to_login()
        try:
            if action == "pause":
                info = desk.pause(links.sessions, issue_id, actor=editor.name)
            elif action == "resume":
                info = start_resume(links, jobs, issue_id, editor.name)
            elif action == "cancel":
                info = desk.cancel(links.sessions, issue_id, actor=editor.name)
            else:
                return back("/desk", f"unknown action {action!r}", error=True)
        except NewsletterError as exc:
            return back("/desk", str(exc), error=True)
        return back("/desk", info.summary)

    @router.get("/preview", response_model=None)
    def preview(request: Request) -> Response:
        editor = auth.editor(request)
        if editor is None:
            return to_login()
        return page("preview.html", editor, csp=frames_csp)

    @router.get("/preview.html", response_model=None)
    def preview_html(request: Request) -> Response:
        if auth.editor(request) is None:
            return to_login()
        try:
            html = desk.preview_html(links.settings, links.sessions)
        except NewsletterError as exc:  # no new items, or the issue is too large
            text = html_escape(str(exc))
            html = f"<!DOCTYPE html><title>No preview</title><p>{text}</p>"
        headers = security_headers(preview_csp)
        headers["X-Frame-Options"] = "SAMEORIGIN"
        return HTMLResponse(html, headers=headers)

    @router.get("/surveys", response_model=None)
    def surveys(request: Request, survey_id: int | None = Query(None, ge=1, le=MAX_ID)) -> Response:
        editor = auth.editor(request)
        if editor is None:
            return to_login()
        try:
            results = desk.survey_results(links.sessions, survey_id)
        except desk.NotFound as exc:
            return page("message.html", editor, 404, title="No survey", text=str(exc))
        return page("results.html", editor, results=results)

    @router.get("/members", response_model=None)
    def members_page(request: Request, q: str = Query("", max_length=200)) -> Response:
        editor = auth.editor(request)
        if editor is None:
            return to_login()
        text, kind = auth.notice(request)
        return page(
            "members.html",
            editor,
            q=q,
            members=desk.search_members(links.sessions, q, 200),
            report=None,
            notice=text,
            notice_kind=kind,
        )

    @router.post("/members/import", response_model=None)
    async def members_import(request: Request) -> Response:
        editor, form, refused = await posted(request)
        if refused is not None or editor is None:
            return refused or to_login()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            await form.close()
            return back("/desk/members", "choose a CSV file to import", error=True)
        data = await upload.read(MAX_UPLOAD + 1)
        filename = upload.filename or ""
        await form.close()
        if len(data) > MAX_UPLOAD:
            return back("/desk/members", "the file is larger than 20 MB", error=True)
        try:
            report = await asyncio.to_thread(
                lambda: desk.import_members(
                    links.sessions, data, actor=editor.name, filename=filename
                )
            )
        except NewsletterError as exc:
            return back("/desk/members", str(exc), error=True)
        return page(
            "members.html",
            editor,
            q="",
            members=desk.search_members(links.sessions, "", 200),
            report=report,
            notice="",
            notice_kind="",
        )

    @router.get("/audit", response_model=None)
    def audit_page(request: Request) -> Response:
        editor = auth.editor(request)
        if editor is None:
            return to_login()
        return page("audit.html", editor, entries=desk.recent_audit(links.sessions, 200))

    return router


# --- the JSON API --------------------------------------------------------------------------


class ErrorOut(BaseModel):
    error: str


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


class MemberOut(BaseModel):
    id: int
    email: str
    name: str
    status: str
    created_at: dt.datetime


class MemberList(BaseModel):
    members: list[MemberOut]


def issue_out(info: desk.IssueInfo) -> IssueOut:
    return IssueOut(
        id=info.id,
        subject=info.subject,
        status=info.status,
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


def api_app(links: Links, jobs: Jobs) -> FastAPI:
    bearer = HTTPBearer(auto_error=False, description="NEWSLETTER_API_TOKEN")
    api = FastAPI(
        title=f"{links.settings.list.name}: editor API",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        # Documents the scheme; the middleware below does the checking, before anything else.
        dependencies=[Depends(bearer)],
        responses={
            400: {"model": ErrorOut},
            401: {"model": ErrorOut},
            404: {"model": ErrorOut},
            409: {"model": ErrorOut},
            422: {"model": ErrorOut},
        },
    )
    token = links.settings.api_token.encode()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @api.middleware("http")
    async def require_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.scope["path"].endswith("/openapi.json") and request.method == "GET":
            return await call_next(request)
        if not token:
            return error(503, "the API is disabled: set NEWSLETTER_API_TOKEN (24+ characters)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return error(401, "missing token: send 'Authorization: Bearer <NEWSLETTER_API_TOKEN>'")
        if not hmac.compare_digest(given.strip().encode(), token):
            return error(401, "wrong token")
        return await call_next(request)

    @api.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, validation_message(exc))

    @api.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error(exc.status_code, message)

    @api.exception_handler(desk.NotFound)
    async def on_not_found(request: Request, exc: desk.NotFound) -> JSONResponse:
        return error(404, str(exc))

    @api.exception_handler(desk.Conflict)
    async def on_conflict(request: Request, exc: desk.Conflict) -> JSONResponse:
        return error(409, str(exc))

    @api.exception_handler(NothingToSend)
    async def on_nothing(request: Request, exc: NothingToSend) -> JSONResponse:
        return error(409, str(exc))

    @api.exception_handler(NewsletterError)
    async def on_newsletter(request: Request, exc: NewsletterError) -> JSONResponse:
        return error(400, str(exc))

    router = api  # routes straight on the app: app.routes lists every endpoint
    issue_path = Path(ge=1, le=MAX_ID, description="the issue's number")

    def audit(action: str, issue_id: int | None = None, detail: str = "") -> None:
        with links.sessions.begin() as session:
            desk.audit(session, API_ACTOR, action, issue_id, detail)

    @router.get("/issues", response_model=IssueList)
    def list_issues(limit: int = Query(100, ge=1, le=1000)) -> IssueList:
        return IssueList(
            issues=[issue_out(i) for i in desk.list_issues(links.sessions, limit)],
            running=jobs.running(),
        )

    @router.get("/issues/{issue_id}", response_model=IssueOut)
    def get_issue(issue_id: int = issue_path) -> IssueOut:
        return issue_out(desk.issue_info(links.sessions, issue_id))

    @router.post("/issues/send", response_model=StartedOut, status_code=202)
    async def send_now() -> StartedOut:
        message = start_send(links, jobs)
        audit("send")
        return StartedOut(message=message)

    @router.post("/issues/test", response_model=TestOut)
    async def test_send(body: TestIn) -> TestOut:
        try:
            message_id = await desk.test_send(
                links.settings, links.sessions, body.to, body.issue_id, actor=API_ACTOR
            )
        except ValueError as exc:  # the address
            raise NewsletterError(f"body field 'to': {exc}") from None
        return TestOut(message=f"test message sent to {body.to.strip()}", message_id=message_id)

    @router.post("/issues/{issue_id}/pause", response_model=ActionOut)
    def pause(issue_id: int = issue_path) -> ActionOut:
        info = desk.pause(links.sessions, issue_id, actor=API_ACTOR)
        return ActionOut(message=info.summary, issue=issue_out(info))

    @router.post("/issues/{issue_id}/resume", response_model=ActionOut)
    async def resume(issue_id: int = issue_path) -> ActionOut:
        info = start_resume(links, jobs, issue_id, API_ACTOR)
        return ActionOut(message=info.summary, issue=issue_out(info))

    @router.post("/issues/{issue_id}/cancel", response_model=ActionOut)
    def cancel(issue_id: int = issue_path) -> ActionOut:
        info = desk.cancel(links.sessions, issue_id, actor=API_ACTOR)
        return ActionOut(message=info.summary, issue=issue_out(info))

    @router.get("/surveys/{survey_id}/results", response_model=ResultsOut)
    def survey_results(survey_id: int = Path(ge=1, le=MAX_ID)) -> ResultsOut:
        r = desk.survey_results(links.sessions, survey_id)
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

    @router.get("/members", response_model=MemberList)
    def members(
        q: str = Query("", max_length=200), limit: int = Query(100, ge=1, le=1000)
    ) -> MemberList:
        return MemberList(
            members=[
                MemberOut(
                    id=m.id, email=m.email, name=m.name, status=m.status, created_at=m.created_at
                )
                for m in desk.search_members(links.sessions, q, limit)
            ]
        )

    return api


def install(app: FastAPI, links: Links) -> None:
    """Add the desk pages (/desk) and the JSON API (/api) to the web app."""
    jobs = Jobs()
    app.state.desk_jobs = jobs
    app.include_router(desk_router(links, jobs))
    app.mount("/api", api_app(links, jobs))


__all__ = ["Jobs", "install"]
