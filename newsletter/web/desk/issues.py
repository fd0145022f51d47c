"""The desk's issue pages: the list with live progress, send now, test copies, pause, resume,
cancel, and the preview of the next issue."""

from __future__ import annotations

from html import escape as html_escape
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from newsletter.errors import NewsletterError
from newsletter.services import issues, members
from newsletter.services.unit import Permission
from newsletter.web.auth import Editor
from newsletter.web.desk.base import MAX_ID, DeskBase
from newsletter.web.jobs import Jobs, describe, mail_outcome
from newsletter.web.pages import CSP, CSP_ISSUE, security_headers

# The preview is the email's HTML (inline styles) shown in this site's own frames.
PREVIEW_CSP = CSP_ISSUE.replace("frame-ancestors 'none'", "frame-ancestors 'self'")
# The preview page frames /desk/preview.html from this origin.
FRAMES_CSP = CSP.replace("default-src 'none'", "default-src 'none'; frame-src 'self'")


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


def back_to(form: FormData) -> str:
    """Where a form asked to go back to: a desk page, or the issue list."""
    back = str(form.get("back", ""))
    return back if back.startswith("/desk") and "//" not in back and "\\" not in back else "/desk"


class IssuePages:
    def __init__(self, desk: DeskBase, jobs: Jobs) -> None:
        self.desk = desk
        self.gateway = desk.gateway
        self.jobs = jobs

    def routes(self) -> list[Route]:
        p, f = self.desk.guard_page, self.desk.guard_form
        return [
            Route("/desk", p(self.index), methods=["GET"]),
            Route("/desk/issues.json", self.issues_json, methods=["GET"]),
            Route("/desk/send", p(self.confirm_send, Permission.SEND), methods=["GET"]),
            Route("/desk/send", f(self.send_now, Permission.SEND), methods=["POST"]),
            Route("/desk/test", f(self.test_send, Permission.WRITE), methods=["POST"]),
            Route(
                "/desk/issues/{issue_id:int}/{action}",
                f(self.issue_action, Permission.SEND),
                methods=["POST"],
            ),
            Route("/desk/preview", p(self.preview), methods=["GET"]),
            Route("/desk/preview.html", p(self.preview_html), methods=["GET"]),
        ]

    async def index(self, request: Request, editor: Editor) -> Response:
        text, kind = self.desk.auth.notice(request)
        running = self.jobs.running()
        return self.desk.page(
            "index.html",
            editor,
            issues=await self.gateway.read(issues.newest),
            running=running,
            last=self.jobs.last,
            notice=text,
            notice_kind=kind,
        )

    async def issues_json(self, request: Request) -> Response:
        if self.desk.auth.editor(request) is None:
            return JSONResponse({"error": "log in first"}, 401, headers=security_headers())
        # Which jobs run is read first: a job that ends meanwhile then shows as finished
        # issues, never as an idle desk with an issue still "sending" from before.
        running = self.jobs.running()
        found = await self.gateway.read(issues.newest)
        body = {"issues": [issue_json(i) for i in found], "running": running}
        return JSONResponse(body, headers=security_headers())

    async def confirm_send(self, request: Request, editor: Editor) -> Response:
        """Sending to the list asks first, and says how many members it will reach."""
        audience = await self.gateway.read(members.active_count)
        try:
            compiled = await self.gateway.read(issues.next_compiled)
            subject, problem = compiled.subject, ""
        except NewsletterError as exc:
            subject, problem = "", str(exc)
        text, kind = self.desk.auth.notice(request)
        return self.desk.page(
            "confirm_send.html",
            editor,
            subject=subject,
            audience=audience,
            problem=problem,
            notice=text,
            notice_kind=kind,
        )

    async def send_now(self, request: Request, editor: Editor, form: FormData) -> Response:
        if not str(form.get("confirm", "")).isdigit():  # only the confirmation page's button
            return self.desk.back("/desk/send", "confirm the send first", error=True)
        try:
            text = await self.jobs.start_send(editor.actor)
        except NewsletterError as exc:
            return self.desk.back("/desk", str(exc), error=True)
        return self.desk.back("/desk", text)

    async def test_send(self, request: Request, editor: Editor, form: FormData) -> Response:
        to = str(form.get("to", ""))[:320]
        raw_issue = str(form.get("issue", "")).strip()
        try:
            issue_id = int(raw_issue) if raw_issue else None
            if issue_id is not None and not 1 <= issue_id <= MAX_ID:
                raise ValueError(f"there is no issue #{raw_issue}")
            mail_id = await self.gateway.offload(
                issues.send_test, self.gateway.services, editor.actor, to, issue_id
            )
        except (ValueError, NewsletterError) as exc:
            return self.desk.back(back_to(form), f"test not sent: {exc}", error=True)
        text, error = describe(to.strip(), await mail_outcome(self.gateway, mail_id))
        return self.desk.back(back_to(form), text, error=error)

    async def issue_action(self, request: Request, editor: Editor, form: FormData) -> Response:
        issue_id = int(request.path_params["issue_id"])
        action = request.path_params["action"]
        try:
            if not 1 <= issue_id <= MAX_ID:
                raise issues.NotFound(f"there is no issue #{issue_id}")
            if action == "pause":
                info = await self.gateway.call(editor.actor, issues.pause, issue_id)
            elif action == "resume":
                info = await self.jobs.start_resume(editor.actor, issue_id)
            elif action == "cancel":
                info = await self.gateway.call(editor.actor, issues.cancel, issue_id)
            elif action == "retry":
                info = await self.jobs.start_retry(editor.actor, issue_id)
                said = f"the failed deliveries are being retried; {info.summary}"
                return self.desk.back(f"/desk/issues/{issue_id}", said)
            else:
                return self.desk.back("/desk", f"unknown action {action!r}", error=True)
        except NewsletterError as exc:
            return self.desk.back("/desk", str(exc), error=True)
        return self.desk.back("/desk", info.summary)

    async def preview(self, request: Request, editor: Editor) -> Response:
        return self.desk.page("preview.html", editor, csp=FRAMES_CSP)

    async def preview_html(self, request: Request, editor: Editor) -> Response:
        try:
            html = await self.gateway.read(issues.preview_html)
        except NewsletterError as exc:  # no new items, or the issue is too large
            html = f"<!DOCTYPE html><title>No preview</title><p>{html_escape(str(exc))}</p>"
        headers = security_headers(PREVIEW_CSP)
        headers["X-Frame-Options"] = "SAMEORIGIN"
        return HTMLResponse(html, headers=headers)
