"""The editor's desk pages (/desk, behind a login): issues, preview, test sends, members, audit.

Server-rendered with the same strict Content-Security-Policy as the member pages; every POST
form carries a CSRF token bound to the editor's session. Each handler is one service call
through the gateway, so no database or compile work runs on the event loop; the guards
`page` and `form` are the only places that check the login and the CSRF token.
See docs/desk.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from html import escape as html_escape
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from newsletter.errors import NewsletterError
from newsletter.services import audit, editors, issues, members, votes
from newsletter.services.boundary import Gateway
from newsletter.web.auth import COOKIE, SESSION_SECONDS, DeskAuth, Editor
from newsletter.web.jobs import Jobs, describe, mail_outcome
from newsletter.web.members import client_ip
from newsletter.web.pages import CSP, CSP_ISSUE, Pages, security_headers

log = logging.getLogger(__name__)

MAX_UPLOAD = 20 * 1024 * 1024
MAX_ID = 2**31 - 1
# The preview is the email's HTML (inline styles) shown in this site's own frames.
PREVIEW_CSP = CSP_ISSUE.replace("frame-ancestors 'none'", "frame-ancestors 'self'")
# The preview page frames /desk/preview.html from this origin.
FRAMES_CSP = CSP.replace("default-src 'none'", "default-src 'none'; frame-src 'self'")

PageHandler = Callable[[Request, Editor], Awaitable[Response]]
FormHandler = Callable[[Request, Editor, FormData], Awaitable[Response]]


def issue_json(info: issues.IssueInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "subject": info.subject,
        "status": str(info.status),
        "created_at": info.created_at.isoformat(),
        "sent_at": info.sent_at.isoformat() if info.sent_at else None,
        "pause_reason": info.pause_reason,
        "counts": info.counts,
        "total": info.total,
        "done": info.done,
        "sent": info.sent,
        "percent": info.percent,
        "summary": info.summary,
    }


class Desk:
    def __init__(self, gateway: Gateway, pages: Pages, jobs: Jobs) -> None:
        self.gateway = gateway
        self.settings = gateway.services.settings
        self.pages = pages
        self.jobs = jobs
        self.auth = DeskAuth(self.settings)
        self.passwords = editors.Passwords(self.settings.editor)
        self.throttle = editors.LoginThrottle()

    # --- rendering and the two guards ----------------------------------------------------------

    def page(
        self,
        template: str,
        editor: Editor | None,
        status: int = 200,
        csp: str = CSP,
        **context: Any,
    ) -> HTMLResponse:
        html = self.pages.render(
            f"desk/{template}",
            editor=editor,
            csrf=self.auth.csrf(editor) if editor else "",
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=security_headers(csp))

    def to_login(self) -> RedirectResponse:
        return RedirectResponse("/desk/login", status_code=303, headers=security_headers())

    def back(self, path: str, text: str, error: bool = False) -> RedirectResponse:
        return RedirectResponse(
            path + self.auth.notice_query(text, error), status_code=303, headers=security_headers()
        )

    def refused(self, editor: Editor | None) -> HTMLResponse:
        return self.page(
            "message.html",
            editor,
            403,
            title="Refused",
            text="The form's security token is missing or out of date; nothing was changed. "
            "Reload the page and try again.",
        )

    def guard_page(self, handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
        """A page for logged-in editors; everyone else is sent to the login form."""

        async def guarded(request: Request) -> Response:
            editor = self.auth.editor(request)
            if editor is None:
                return self.to_login()
            return await handler(request, editor)

        return guarded

    def guard_form(self, handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
        """A form post by a logged-in editor with the session's CSRF token; else nothing runs."""

        async def guarded(request: Request) -> Response:
            editor = self.auth.editor(request)
            if editor is None:
                return self.to_login()
            try:
                form = await request.form(max_part_size=MAX_UPLOAD)
            except (MultiPartException, HTTPException):  # a malformed or oversized body
                return self.refused(editor)
            try:
                if not self.auth.csrf_ok(editor, form.get("csrf")):
                    return self.refused(editor)
                return await handler(request, editor, form)
            finally:
                await form.close()

        return guarded

    def routes(self) -> list[Route]:
        p, f = self.guard_page, self.guard_form
        return [
            Route("/desk/login", self.login_form, methods=["GET"]),
            Route("/desk/login", self.login, methods=["POST"]),
            Route("/desk/logout", f(self.logout), methods=["POST"]),
            Route("/desk", p(self.index), methods=["GET"]),
            Route("/desk/issues.json", self.issues_json, methods=["GET"]),
            Route("/desk/send", f(self.send_now), methods=["POST"]),
            Route("/desk/test", f(self.test_send), methods=["POST"]),
            Route("/desk/issues/{issue_id:int}/{action}", f(self.issue_action), methods=["POST"]),
            Route("/desk/preview", p(self.preview), methods=["GET"]),
            Route("/desk/preview.html", p(self.preview_html), methods=["GET"]),
            Route("/desk/surveys", p(self.surveys), methods=["GET"]),
            Route("/desk/members", p(self.members_page), methods=["GET"]),
            Route("/desk/members/import", f(self.members_import), methods=["POST"]),
            Route("/desk/audit", p(self.audit_page), methods=["GET"]),
        ]

    # --- login ---------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if self.auth.editor(request) is not None:
            return RedirectResponse("/desk", status_code=303, headers=security_headers())
        return self.page("login.html", None, error="", name="")

    async def login(self, request: Request) -> Response:
        try:
            form = await request.form(max_part_size=64 * 1024)
        except (MultiPartException, HTTPException):
            return self.page("login.html", None, 400, error="The form could not be read.", name="")
        name, password = str(form.get("name", ""))[:200], str(form.get("password", ""))[:1000]
        await form.close()
        if not self.settings.editor:
            return self.page(
                "login.html", None, 403, error="No editor is configured ([[editor]])", name=name
            )
        address = client_ip(request)
        # The attempt counts before its password is checked: guesses sent all at once are
        # refused once over the limit, without running scrypt for them.
        wait, ticket = self.throttle.admit(address, name)
        if wait:
            refused = self.page(
                "login.html",
                None,
                429,
                error=f"Too many failed logins. Try again in {math.ceil(wait / 60)} minute(s).",
                name=name,
            )
            refused.headers["Retry-After"] = str(wait)
            return refused
        found = await self.gateway.offload(self.passwords.check, name, password)
        if found is None:
            log.warning("failed desk login as %r from %s", name[:80], address or "?")
            return self.page("login.html", None, 403, error="Wrong name or password.", name=name)
        self.throttle.succeeded(address, name, ticket)
        await self.gateway.call(found, editors.login, found, address=address)
        response = RedirectResponse("/desk", status_code=303, headers=security_headers())
        response.set_cookie(
            COOKIE,
            self.auth.cookie(found),
            max_age=SESSION_SECONDS,
            path="/desk",
            httponly=True,
            samesite="strict",
            secure=self.auth.secure,
        )
        return response

    async def logout(self, request: Request, editor: Editor, form: FormData) -> Response:
        response = self.to_login()
        response.delete_cookie(COOKIE, path="/desk")
        return response

    # --- issues --------------------------------------------------------------------------------

    async def index(self, request: Request, editor: Editor) -> Response:
        text, kind = self.auth.notice(request)
        running = self.jobs.running()
        return self.page(
            "index.html",
            editor,
            issues=await self.gateway.read(issues.newest),
            running=running,
            last=self.jobs.last,
            notice=text,
            notice_kind=kind,
        )

    async def issues_json(self, request: Request) -> Response:
        if self.auth.editor(request) is None:
            return JSONResponse({"error": "log in first"}, 401, headers=security_headers())
        # Which jobs run is read first: a job that ends meanwhile then shows as finished
        # issues, never as an idle desk with an issue still "sending" from before.
        running = self.jobs.running()
        found = await self.gateway.read(issues.newest)
        body = {"issues": [issue_json(i) for i in found], "running": running}
        return JSONResponse(body, headers=security_headers())

    async def send_now(self, request: Request, editor: Editor, form: FormData) -> Response:
        try:
            text = await self.jobs.start_send(editor.name)
        except NewsletterError as exc:
            return self.back("/desk", str(exc), error=True)
        return self.back("/desk", text)

    async def test_send(self, request: Request, editor: Editor, form: FormData) -> Response:
        to = str(form.get("to", ""))[:320]
        raw_issue = str(form.get("issue", "")).strip()
        try:
            issue_id = int(raw_issue) if raw_issue else None
            if issue_id is not None and not 1 <= issue_id <= MAX_ID:
                raise ValueError(f"there is no issue #{raw_issue}")
            mail_id = await self.gateway.offload(
                issues.send_test, self.gateway.services, editor.name, to, issue_id
            )
        except (ValueError, NewsletterError) as exc:
            return self.back("/desk", f"test not sent: {exc}", error=True)
        text, error = describe(to.strip(), await mail_outcome(self.gateway, mail_id))
        return self.back("/desk", text, error=error)

    async def issue_action(self, request: Request, editor: Editor, form: FormData) -> Response:
        issue_id = int(request.path_params["issue_id"])
        action = request.path_params["action"]
        try:
            if not 1 <= issue_id <= MAX_ID:
                raise issues.NotFound(f"there is no issue #{issue_id}")
            if action == "pause":
                info = await self.gateway.call(editor.name, issues.pause, issue_id)
            elif action == "resume":
                info = await self.jobs.start_resume(editor.name, issue_id)
            elif action == "cancel":
                info = await self.gateway.call(editor.name, issues.cancel, issue_id)
            else:
                return self.back("/desk", f"unknown action {action!r}", error=True)
        except NewsletterError as exc:
            return self.back("/desk", str(exc), error=True)
        return self.back("/desk", info.summary)

    async def preview(self, request: Request, editor: Editor) -> Response:
        return self.page("preview.html", editor, csp=FRAMES_CSP)

    async def preview_html(self, request: Request, editor: Editor) -> Response:
        try:
            html = await self.gateway.read(issues.preview_html)
        except NewsletterError as exc:  # no new items, or the issue is too large
            html = f"<!DOCTYPE html><title>No preview</title><p>{html_escape(str(exc))}</p>"
        headers = security_headers(PREVIEW_CSP)
        headers["X-Frame-Options"] = "SAMEORIGIN"
        return HTMLResponse(html, headers=headers)

    async def surveys(self, request: Request, editor: Editor) -> Response:
        raw = request.query_params.get("survey_id", "")
        survey_id = int(raw) if raw.isdigit() and len(raw) < 10 else None
        if raw and survey_id is None:
            return self.page("message.html", editor, 404, title="No survey", text="No such survey.")
        try:
            results = await self.gateway.call(editor.name, votes.settled_results, survey_id)
        except votes.NoSuchSurvey as exc:
            return self.page("message.html", editor, 404, title="No survey", text=str(exc))
        return self.page("results.html", editor, results=results)

    # --- members and the audit log ---------------------------------------------------------------

    async def members_page(self, request: Request, editor: Editor) -> Response:
        text, kind = self.auth.notice(request)
        q = request.query_params.get("q", "")[:200]
        return self.page(
            "members.html",
            editor,
            q=q,
            members=await self.gateway.read(members.search, q, 200),
            report=None,
            notice=text,
            notice_kind=kind,
        )

    async def members_import(self, request: Request, editor: Editor, form: FormData) -> Response:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return self.back("/desk/members", "choose a CSV file to import", error=True)
        data = await upload.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            return self.back("/desk/members", "the file is larger than 20 MB", error=True)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return self.back(
                "/desk/members",
                f"not UTF-8 text (byte {exc.start}); save the file as UTF-8",
                error=True,
            )
        filename = (upload.filename or "upload.csv")[:200]
        try:
            report = await self.gateway.call(
                editor.name, members.import_members, text, source=filename
            )
        except NewsletterError as exc:
            return self.back("/desk/members", str(exc), error=True)
        return self.page(
            "members.html",
            editor,
            q="",
            members=await self.gateway.read(members.search, "", 200),
            report=report,
            notice="",
            notice_kind="",
        )

    async def audit_page(self, request: Request, editor: Editor) -> Response:
        return self.page("audit.html", editor, entries=await self.gateway.read(audit.recent, 200))
