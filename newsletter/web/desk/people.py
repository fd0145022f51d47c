"""The desk's member and audit pages."""

from __future__ import annotations

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter.errors import NewsletterError
from newsletter.services import audit, bounces, members
from newsletter.services.unit import Permission
from newsletter.web.auth import Editor
from newsletter.web.desk.base import MAX_UPLOAD, DeskBase

MAX_ID = 2**31 - 1


class MemberPages:
    def __init__(self, desk: DeskBase) -> None:
        self.desk = desk
        self.gateway = desk.gateway

    def routes(self) -> list[Route]:
        p, f = self.desk.guard_page, self.desk.guard_form
        return [
            Route("/desk/members", p(self.members_page, Permission.MEMBERS), methods=["GET"]),
            Route(
                "/desk/members/import",
                f(self.members_import, Permission.MEMBERS),
                methods=["POST"],
            ),
            Route(
                "/desk/members/{member_id:int}/bounces",
                p(self.member_page, Permission.MEMBERS),
                methods=["GET"],
            ),
            Route("/desk/audit", p(self.audit_page), methods=["GET"]),
        ]

    # --- members and the audit log ---------------------------------------------------------------

    async def members_page(self, request: Request, editor: Editor) -> Response:
        text, kind = self.desk.auth.notice(request)
        q = request.query_params.get("q", "")[:200]
        return self.desk.page(
            "members.html",
            editor,
            q=q,
            members=await self.gateway.read(members.search, q, 200),
            report=None,
            notice=text,
            notice_kind=kind,
        )

    async def member_page(self, request: Request, editor: Editor) -> Response:
        """One member: status, why they left, and what came back for them (bounce history)."""
        member_id = int(request.path_params["member_id"])
        history = None
        if member_id <= MAX_ID:
            history = await self.gateway.read(bounces.history, member_id)
        if history is None:
            return self.desk.page(
                "message.html", editor, 404, title="No such member", text="There is no such member."
            )
        return self.desk.page(
            "member_bounces.html",
            editor,
            history=history,
            threshold=self.gateway.services.settings.bounces.threshold,
        )

    async def members_import(self, request: Request, editor: Editor, form: FormData) -> Response:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return self.desk.back("/desk/members", "choose a CSV file to import", error=True)
        data = await upload.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            return self.desk.back("/desk/members", "the file is larger than 20 MB", error=True)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return self.desk.back(
                "/desk/members",
                f"not UTF-8 text (byte {exc.start}); save the file as UTF-8",
                error=True,
            )
        filename = (upload.filename or "upload.csv")[:200]
        try:
            report = await self.gateway.call(
                editor.actor, members.import_members, text, source=filename
            )
        except NewsletterError as exc:
            return self.desk.back("/desk/members", str(exc), error=True)
        return self.desk.page(
            "members.html",
            editor,
            q="",
            members=await self.gateway.read(members.search, "", 200),
            report=report,
            notice="",
            notice_kind="",
        )

    async def audit_page(self, request: Request, editor: Editor) -> Response:
        return self.desk.page(
            "audit.html", editor, entries=await self.gateway.read(audit.recent, 200)
        )
