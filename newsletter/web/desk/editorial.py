"""The desk's editorial pages: the next issue (settings, order, hold, schedule), the item editor
with its live preview, and the page of one issue (failures, retry, the message as sent)."""

from __future__ import annotations

import datetime as dt

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from newsletter.errors import NewsletterError
from newsletter.services import drafts, issues, items, members, reports, surveys
from newsletter.services.unit import Permission
from newsletter.web.auth import Editor
from newsletter.web.desk.base import MAX_ID, DeskBase
from newsletter.web.desk.issues import FRAMES_CSP, PREVIEW_CSP
from newsletter.web.pages import CSP_NONE, security_headers


def _field(form: FormData, name: str, limit: int) -> str:
    return str(form.get(name, ""))[:limit]


def item_draft(form: FormData) -> items.ItemDraft:
    """The item editor's form as an ItemDraft; BadItem names a field it cannot read."""
    raw_date = _field(form, "date", 20).strip()
    try:
        date = dt.date.fromisoformat(raw_date) if raw_date else None
    except ValueError:
        raise items.BadItem("date", f"{raw_date!r} is not a date (YYYY-MM-DD)") from None
    return items.ItemDraft(
        title=_field(form, "title", 2000),
        body_md=_field(form, "body", 400_000),
        section=_field(form, "section", 400),
        url=_field(form, "url", 2048),
        date=date,
    )


class EditorialPages:
    def __init__(self, desk: DeskBase) -> None:
        self.desk = desk
        self.gateway = desk.gateway
        self.timezone = desk.settings.list.timezone

    def routes(self) -> list[Route]:
        p, f = self.desk.guard_page, self.desk.guard_form
        w = Permission.WRITE
        return [
            Route("/desk/next", p(self.next_issue), methods=["GET"]),
            Route("/desk/next", f(self.save_draft, w), methods=["POST"]),
            Route("/desk/next/order", f(self.move, w), methods=["POST"]),
            Route("/desk/next/schedule", f(self.schedule, Permission.SEND), methods=["POST"]),
            Route("/desk/items/new", p(self.new_item, w), methods=["GET"]),
            Route("/desk/items", f(self.write_item, w), methods=["POST"]),
            Route("/desk/items/preview", f(self.preview_item, w), methods=["POST"]),
            Route("/desk/items/{ref}/edit", p(self.edit_form, w), methods=["GET"]),
            Route("/desk/items/{ref}", f(self.edit_item, w), methods=["POST"]),
            Route("/desk/items/{ref}/{action}", f(self.item_action, w), methods=["POST"]),
            Route("/desk/issues/{issue_id:int}", p(self.issue_page), methods=["GET"]),
            Route("/desk/issues/{issue_id:int}/message.html", p(self.message), methods=["GET"]),
            Route("/desk/issues/{issue_id:int}/report.csv", p(self.report_csv), methods=["GET"]),
        ]

    # --- the next issue ------------------------------------------------------------------------

    async def next_issue(self, request: Request, editor: Editor) -> Response:
        text, kind = self.desk.auth.notice(request)
        draft = await self.gateway.read(drafts.info)
        local = draft.send_at_local(self.timezone)
        return self.desk.page(
            "next.html",
            editor,
            csp=FRAMES_CSP,  # it frames the preview
            draft=draft,
            items=await self.gateway.read(items.upcoming),
            audience=await self.gateway.read(members.active_count),
            surveys=await self.gateway.read(surveys.open_surveys),
            timezone=self.timezone,
            send_at_local=f"{local:%Y-%m-%d %H:%M}" if local else "",
            send_at_input=f"{local:%Y-%m-%dT%H:%M}" if local else "",
            notice=text,
            notice_kind=kind,
        )

    async def save_draft(self, request: Request, editor: Editor, form: FormData) -> Response:
        try:
            await self.gateway.call(
                editor.actor,
                drafts.save,
                note_md=_field(form, "note", drafts.NOTE_LIMIT + 1),
                subject=_field(form, "subject", drafts.SUBJECT_LIMIT + 1),
                preheader=_field(form, "preheader", drafts.PREHEADER_LIMIT + 1),
                survey=_field(form, "survey", 20),
            )
        except NewsletterError as exc:
            return self.desk.back("/desk/next", str(exc), error=True)
        return self.desk.back("/desk/next", "the next issue's settings are saved")

    async def move(self, request: Request, editor: Editor, form: FormData) -> Response:
        """Move one item up or down in the next issue's order (the whole order is stored)."""
        guid, way = _field(form, "guid", 1024), _field(form, "move", 8)
        order = [i.guid for i in await self.gateway.read(items.upcoming)]
        if guid not in order or way not in ("up", "down"):
            return self.desk.back("/desk/next", "no such item to move", error=True)
        at = order.index(guid)
        to = at - 1 if way == "up" else at + 1
        if 0 <= to < len(order):
            order[at], order[to] = order[to], order[at]
        try:
            await self.gateway.call(editor.actor, items.reorder, order)
        except NewsletterError as exc:
            return self.desk.back("/desk/next", str(exc), error=True)
        return self.desk.back("/desk/next", "the order is saved")

    async def schedule(self, request: Request, editor: Editor, form: FormData) -> Response:
        raw = _field(form, "send_at", 40)
        try:
            when = drafts.local_time(raw, self.timezone) if raw.strip() else None
            await self.gateway.call(editor.actor, drafts.schedule, when)
        except NewsletterError as exc:
            return self.desk.back("/desk/next", str(exc), error=True)
        said = f"the next issue goes out at {raw.replace('T', ' ')} ({self.timezone})"
        return self.desk.back("/desk/next", said if when else "the schedule is cancelled")

    # --- the item editor -------------------------------------------------------------------------

    async def _editor(
        self,
        editor: Editor,
        *,
        action: str,
        form: dict[str, str],
        item: items.ItemInfo | None = None,
        error: str = "",
        status: int = 200,
    ) -> HTMLResponse:
        preview = await self.gateway.read(items.preview, form.get("body", ""))
        sections = list(self.desk.settings.issue.sections)
        return self.desk.page(
            "item.html",
            editor,
            status,
            action=action,
            form=form,
            item=item,
            error=error,
            preview=preview,
            sections=sections,
        )

    async def new_item(self, request: Request, editor: Editor) -> Response:
        today = dt.datetime.now(dt.UTC).date().isoformat()
        blank = {"title": "", "section": "", "date": today, "url": "", "body": ""}
        return await self._editor(editor, action="/desk/items", form=blank)

    async def write_item(self, request: Request, editor: Editor, form: FormData) -> Response:
        try:
            info = await self.gateway.call(editor.actor, items.write, item_draft(form))
        except NewsletterError as exc:
            given = {
                k: _field(form, k, 400_000) for k in ("title", "section", "date", "url", "body")
            }
            return await self._editor(
                editor, action="/desk/items", form=given, error=str(exc), status=400
            )
        return self.desk.back("/desk/next", f"item {info.title!r} written")

    async def preview_item(self, request: Request, editor: Editor, form: FormData) -> Response:
        """The editor's live preview: the Markdown as the item will show it (sanitised)."""
        html = await self.gateway.read(items.preview, _field(form, "body", 400_000))
        return HTMLResponse(html, headers=security_headers(CSP_NONE))

    async def edit_form(self, request: Request, editor: Editor) -> Response:
        ref = request.path_params["ref"]
        try:
            info, body, url = await self.gateway.read(items.body_md, ref)
        except NewsletterError as exc:
            return self.desk.page("message.html", editor, 404, title="No such item", text=str(exc))
        form = {
            "title": info.title,
            "section": info.section,
            "date": info.published_at.date().isoformat() if info.published_at else "",
            "url": url,
            "body": body,
        }
        return await self._editor(editor, action=f"/desk/items/{info.id}", form=form, item=info)

    async def edit_item(self, request: Request, editor: Editor, form: FormData) -> Response:
        ref = request.path_params["ref"]
        try:
            info = await self.gateway.call(editor.actor, items.edit, ref, item_draft(form))
        except NewsletterError as exc:
            given = {
                k: _field(form, k, 400_000) for k in ("title", "section", "date", "url", "body")
            }
            return await self._editor(
                editor, action=f"/desk/items/{ref}", form=given, error=str(exc), status=400
            )
        return self.desk.back("/desk/next", f"item {info.title!r} saved")

    async def item_action(self, request: Request, editor: Editor, form: FormData) -> Response:
        ref, action = request.path_params["ref"], request.path_params["action"]
        try:
            if action == "hold":
                info = await self.gateway.call(editor.actor, items.hold, ref, True)
            elif action == "release":
                info = await self.gateway.call(editor.actor, items.hold, ref, False)
            elif action == "remove":
                info = await self.gateway.call(editor.actor, items.remove, ref)
            else:
                return self.desk.back("/desk/next", f"unknown action {action!r}", error=True)
        except NewsletterError as exc:
            return self.desk.back("/desk/next", str(exc), error=True)
        done = {"hold": "held", "release": "released", "remove": "removed"}[action]
        return self.desk.back("/desk/next", f"item {info.title!r} {done}")

    # --- one issue -------------------------------------------------------------------------------

    async def issue_page(self, request: Request, editor: Editor) -> Response:
        issue_id = int(request.path_params["issue_id"])
        try:
            if issue_id > MAX_ID:
                raise issues.NotFound(f"there is no issue #{issue_id}")
            # Clicks and votes whose window has passed are decided first.
            found = await self.gateway.call(editor.actor, reports.settled_report, issue_id)
        except issues.NotFound as exc:
            return self.desk.page("message.html", editor, 404, title="No such issue", text=str(exc))
        info, results = found.issue, found.results
        text, kind = self.desk.auth.notice(request)
        return self.desk.page(
            "issue.html",
            editor,
            csp=FRAMES_CSP,  # it frames the message as sent
            issue=info,
            failures=await self.gateway.read(issues.failures, issue_id),
            items=await self.gateway.read(issues.item_titles, issue_id),
            results=results,
            report=found,
            notice=text,
            notice_kind=kind,
        )

    async def report_csv(self, request: Request, editor: Editor) -> Response:
        """The issue's report as CSV: figures, clicks per link, the survey's votes."""
        issue_id = int(request.path_params["issue_id"])
        try:
            if issue_id > MAX_ID:
                raise issues.NotFound(f"there is no issue #{issue_id}")
            found = await self.gateway.call(editor.actor, reports.settled_report, issue_id)
        except issues.NotFound as exc:
            return self.desk.page("message.html", editor, 404, title="No such issue", text=str(exc))
        headers = security_headers()
        headers["Content-Disposition"] = f'attachment; filename="issue-{issue_id}-report.csv"'
        return Response(
            reports.as_csv(found), media_type="text/csv; charset=utf-8", headers=headers
        )

    async def message(self, request: Request, editor: Editor) -> Response:
        """Issue N as it was stored when released (never recompiled), for a sample reader."""
        issue_id = int(request.path_params["issue_id"])
        try:
            if issue_id > MAX_ID:
                raise issues.NotFound(f"there is no issue #{issue_id}")
            html = await self.gateway.read(issues.preview_html, issue_id)
        except issues.NotFound as exc:
            return self.desk.page("message.html", editor, 404, title="No such issue", text=str(exc))
        headers = security_headers(PREVIEW_CSP)
        headers["X-Frame-Options"] = "SAMEORIGIN"
        return HTMLResponse(html, headers=headers)
