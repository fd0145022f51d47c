"""The desk's board page: the moderation queue, approve, hide, delete, block and unblock members.

Held posts (a new member's first) and reported messages wait here; a block has a reason,
shown to the member, and an optional end in list.timezone.
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter.errors import NewsletterError
from newsletter.services import drafts, moderation
from newsletter.services.unit import Permission
from newsletter.web.auth import Editor
from newsletter.web.desk.base import MAX_ID, DeskBase

PAGE = "/desk/board"
ACTIONS = {
    "approve": (moderation.approve, "is on the board"),
    "hide": (moderation.hide, "is hidden"),
    "delete": (moderation.remove, "is deleted"),
}


class BoardPages:
    def __init__(self, desk: DeskBase) -> None:
        self.desk = desk
        self.gateway = desk.gateway
        self.timezone = desk.settings.list.timezone

    def routes(self) -> list[Route]:
        p, f = self.desk.guard_page, self.desk.guard_form
        need = Permission.MODERATE
        return [
            Route(PAGE, p(self.queue, need), methods=["GET"]),
            Route(f"{PAGE}/{{message_id:int}}/{{action}}", f(self.act, need), methods=["POST"]),
            Route(f"{PAGE}/members/{{member_id:int}}/block", f(self.block, need), methods=["POST"]),
            Route(
                f"{PAGE}/members/{{member_id:int}}/unblock", f(self.unblock, need), methods=["POST"]
            ),
        ]

    async def queue(self, request: Request, editor: Editor) -> Response:
        text, kind = self.desk.auth.notice(request)
        found = await self.gateway.read(moderation.queue)
        return self.desk.page(
            "board.html",
            editor,
            queue=found,
            timezone=self.timezone,
            notice=text,
            notice_kind=kind,
        )

    async def act(self, request: Request, editor: Editor, form: FormData) -> Response:
        message_id = int(request.path_params["message_id"])
        found = ACTIONS.get(request.path_params["action"])
        if found is None or not 1 <= message_id <= MAX_ID:
            return self.desk.back(PAGE, "no such action on a board message", error=True)
        action, said = found
        try:
            await self.gateway.call(editor.actor, action, message_id)
        except NewsletterError as exc:  # NotFound, Conflict
            return self.desk.back(PAGE, str(exc), error=True)
        return self.desk.back(PAGE, f"message #{message_id} {said}")

    async def block(self, request: Request, editor: Editor, form: FormData) -> Response:
        member_id = int(request.path_params["member_id"])
        if not 1 <= member_id <= MAX_ID:
            return self.desk.back(PAGE, f"there is no member #{member_id}", error=True)
        reason = str(form.get("reason", ""))[:2000]
        raw = str(form.get("until", ""))[:40]
        try:
            until = drafts.local_time(raw, self.timezone) if raw.strip() else None
        except drafts.BadDraft:
            return self.desk.back(PAGE, f"until: {raw!r} is not a date and time", error=True)
        try:
            await self.gateway.call(editor.actor, moderation.block, member_id, reason, until)
        except NewsletterError as exc:
            return self.desk.back(PAGE, str(exc), error=True)
        ends = f" until {raw.replace('T', ' ')} ({self.timezone})" if until else ""
        return self.desk.back(PAGE, f"member #{member_id} may not post{ends}")

    async def unblock(self, request: Request, editor: Editor, form: FormData) -> Response:
        member_id = int(request.path_params["member_id"])
        if not 1 <= member_id <= MAX_ID:
            return self.desk.back(PAGE, f"there is no member #{member_id}", error=True)
        done = await self.gateway.call(editor.actor, moderation.unblock, member_id)
        said = "may post again" if done else "was not blocked"
        return self.desk.back(PAGE, f"member #{member_id} {said}")
