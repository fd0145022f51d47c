"""The members' board pages (/board): threads newest first, a thread's page, posting and replying,
a member's edits and deletions, reports.

A page of the board is rendered once for each state (the board's messages, the page or
thread, signed in or not) and cut at the marks that differ per reader: the signed-in member's
bar with its form and CSRF token, each message's controls (a link to edit or delete one's own
within board.edit_minutes, or to report anyone else's) and the notice line. A request fills
those in: a join of byte strings. Entries are dropped when this process changes the board (the
services' "board" event) and after two seconds anyway, so other processes' changes show too.
Posts go to the batcher (Gateway.submit), which commits many at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from newsletter import i18n
from newsletter.i18n import N_
from newsletter.services import board
from newsletter.services.boundary import Gateway
from newsletter.services.unit import Services
from newsletter.web.auth import MemberSession
from newsletter.web.members import TTLCache, client_ip
from newsletter.web.pages import Pages, security_headers
from newsletter.web.signin import DONE, SigninPages

MAX_ID = 2**31 - 1
MARK = re.compile("\x00([a-z]+)(?:-([0-9]+))?\x00")
# Marks in a cut page (MARK), and in the member's bar (filled before it goes in).
ME, NOTICE = "\x00me\x00", "\x00notice\x00"
CSRF, NAME = "\x01csrf\x01", "\x01name\x01"
# Statuses of a refused post, by the rule that refused it.
REFUSED = {"blocked": 403, "limit": 429, "thread": 404, "session": 403}

Viewer = tuple[MemberSession, board.Viewer]


def control(message_id: int) -> str:
    """The mark where a message's controls go."""
    return f"\x00ctl-{message_id}\x00"


@dataclasses.dataclass(frozen=True, slots=True)
class Controls:
    """What a message's controls need: its author and time, and both forms of the controls
    (its author's, within board.edit_minutes, and everyone else's)."""

    author: int
    posted: dt.datetime
    own: bytes
    others: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Cut:
    """A rendered page, as bytes, cut at its marks; each message's controls beside it."""

    literals: tuple[bytes, ...]
    marks: tuple[tuple[str, int], ...]
    messages: dict[int, Controls]

    @classmethod
    def of(cls, page: str, messages: dict[int, Controls]) -> Cut:
        parts = MARK.split(page)
        marks = tuple((name, int(n or 0)) for name, n in zip(parts[1::3], parts[2::3], strict=True))
        return cls(tuple(p.encode() for p in parts[0::3]), marks, messages)

    def fill(self, value: Callable[[str, int], bytes]) -> bytes:
        out = [self.literals[0]]
        for (name, n), literal in zip(self.marks, self.literals[1:], strict=True):
            out.append(value(name, n))
            out.append(literal)
        return b"".join(out)


class BoardPages:
    def __init__(
        self, services: Services, gateway: Gateway, pages: Pages, signins: SigninPages
    ) -> None:
        self.services = services
        self.gateway = gateway
        self.pages = pages
        self.signins = signins
        self.auth = signins.auth
        self.limits = services.settings.board
        self.cache = TTLCache(ttl=2.0, size=256)
        self.bars: OrderedDict[tuple[Any, ...], str] = OrderedDict()
        self.controls: dict[tuple[str, str], str] = {}
        # Readers who are not signed in see the board in the list's language; a member sees
        # it in their own (each language a page of its own in the cache).
        self.language = services.settings.list.language
        services.listen(self._changed)

    def _changed(self, what: str) -> None:
        if what == "board":
            self.cache.drop()

    def routes(self) -> list[Route]:
        read = ["GET", "HEAD"]
        one = "/board/{message_id:int}"
        return [
            Route("/board", self.index, methods=read),
            Route("/board", self.post_thread, methods=["POST"]),
            Route(one, self.thread_page, methods=read),
            Route(one, self.post_reply, methods=["POST"]),
            Route(f"{one}/edit", self.edit_page, methods=read),
            Route(f"{one}/edit", self.edit_form, methods=["POST"]),
            Route(f"{one}/delete", self.delete, methods=["POST"]),
            Route(f"{one}/report", self.report_page, methods=read),
            Route(f"{one}/report", self.report, methods=["POST"]),
        ]

    # --- filling a cut page for one reader -------------------------------------------------------

    def _fragment(self, template: str, language: str) -> str:
        found = self.controls.get((template, language))
        if found is None:
            found = self.controls[(template, language)] = self.pages.render(
                f"web/{template}",
                language,
                message_id="\x00id\x00",
                minutes=self.limits.edit_minutes,
            )
        return found

    def _controls(
        self, threads: tuple[board.ThreadView, ...], language: str
    ) -> dict[int, Controls]:
        own = self._fragment("_board_own.html", language)
        others = self._fragment("_board_report.html", language)
        return {
            m.id: Controls(
                m.member_id,
                m.created_at,
                own.replace("\x00id\x00", str(m.id)).encode(),
                others.replace("\x00id\x00", str(m.id)).encode(),
            )
            for t in threads
            for m in (t.message, *t.replies)
        }

    def _bar(self, who: board.Viewer, action: str, error: str = "", draft: str = "") -> str:
        """The signed-in member's bar and form, with NAME and CSRF marks left in it."""
        language = who.language or self.language
        key = (who.notices, who.blocked, who.block_reason, who.blocked_until, action, language)
        found = None if error or draft else self.bars.get(key)
        if found is None:
            found = self.pages.render(
                "web/_board_me.html",
                language,
                name=NAME,
                csrf=CSRF,
                notices=who.notices,
                blocked=i18n.say(language, board.block_text(who)) if who.blocked else "",
                action=action,
                reply=action != "/board",
                error=i18n.say(language, error),
                draft=draft,
                limits=self.limits,
            )
            if not (error or draft):
                self.bars[key] = found
                while len(self.bars) > 512:
                    self.bars.popitem(last=False)
        return found

    def _fill(self, cut: Cut, viewer: Viewer | None, request: Request, bar: str = "") -> bytes:
        done = DONE.get(request.query_params.get("done", ""))
        if done:
            done = i18n.gettext(self._language(viewer), done)
        notice = f'<p class="done" role="status">{html.escape(done)}</p>'.encode() if done else b""
        if viewer is None:
            return cut.fill(lambda name, _: notice if name == "notice" else b"")
        session, who = viewer
        mine = (
            bar.replace(NAME, html.escape(who.name)).replace(CSRF, self.auth.csrf(session)).encode()
        )
        since = self.services.clock() - dt.timedelta(minutes=self.limits.edit_minutes)

        def value(name: str, n: int) -> bytes:
            if name == "ctl":
                found = cut.messages.get(n)
                if found is None:
                    return b""
                if found.author != who.member_id:
                    return found.others
                return found.own if found.posted >= since else b""
            return {"notice": notice, "me": mine}.get(name, b"")

        return cut.fill(value)

    def _answer(self, page: bytes, status: int = 200) -> HTMLResponse:
        return HTMLResponse(page, status_code=status, headers=security_headers())

    # --- the board and a thread ----------------------------------------------------------------

    def _language(self, viewer: Viewer | None) -> str:
        """The language of the reader's pages: a member's own, else the list's."""
        return (viewer[1].language or self.language) if viewer else self.language

    def _gate(self, viewer: Viewer | None) -> HTMLResponse | None:
        """Members-only reading: everyone else sees the seed's sentence."""
        if viewer is None and self.limits.read == "members":
            return self.pages.page("board_gate.html")
        return None

    async def _board_cut(self, number: int, viewer: Viewer | None) -> Cut:
        signed_in, language = viewer is not None, self._language(viewer)

        async def compute() -> Cut:
            found = await self.gateway.read(board.page, number)
            page = self.pages.render(
                "web/board.html",
                language,
                page=found,
                signed_in=signed_in,
                me=Markup(ME),
                notice=Markup(NOTICE),
                ctl=control,
            )
            return Cut.of(page, self._controls(found.threads, language))

        cached: Cut = await self.cache.get(("board", number, signed_in, language), compute)
        return cached

    def _number(self, request: Request) -> int:
        raw = request.query_params.get("page", "1")
        return int(raw) if raw.isascii() and raw.isdigit() and 0 < int(raw) <= MAX_ID else 1

    async def index(self, request: Request) -> Response:
        viewer = await self.signins.viewer(request)
        gate = self._gate(viewer)
        if gate is not None:
            return gate
        cut = await self._board_cut(self._number(request), viewer)
        bar = self._bar(viewer[1], "/board") if viewer else ""
        return self._answer(self._fill(cut, viewer, request, bar))

    async def _thread_cut(self, thread_id: int, viewer: Viewer | None) -> Cut | None:
        signed_in, language = viewer is not None, self._language(viewer)

        async def compute() -> Cut | None:
            found = await self.gateway.read(board.thread, thread_id)
            if found is None:
                return None
            page = self.pages.render(
                "web/thread.html",
                language,
                thread=found,
                signed_in=signed_in,
                me=Markup(ME),
                notice=Markup(NOTICE),
                ctl=control,
            )
            return Cut.of(page, self._controls((found,), language))

        if not 1 <= thread_id <= MAX_ID:
            return None
        key = ("thread", thread_id, signed_in, language)
        cached: Cut | None = await self.cache.get(key, compute)
        return cached

    def _no_thread(self, viewer: Viewer | None = None) -> HTMLResponse:
        return self.pages.message(
            N_("Not found"),
            N_("There is no such thread on the board."),
            404,
            self._language(viewer),
        )

    async def thread_page(self, request: Request) -> Response:
        viewer = await self.signins.viewer(request)
        gate = self._gate(viewer)
        if gate is not None:
            return gate
        thread_id = int(request.path_params["message_id"])
        cut = await self._thread_cut(thread_id, viewer)
        if cut is None:
            return self._no_thread(viewer)
        bar = self._bar(viewer[1], f"/board/{thread_id}") if viewer else ""
        return self._answer(self._fill(cut, viewer, request, bar))

    # --- posting -------------------------------------------------------------------------------

    async def _post(
        self,
        request: Request,
        parent_id: int | None,
        refused_page: Callable[[Viewer, str, str, int], Awaitable[Response]],
    ) -> Response:
        signed = await self.signins.signed_form(request)
        if isinstance(signed, Response):
            return signed
        session, form = signed
        done_path = "/board" if parent_id is None else f"/board/{parent_id}"
        if form.get("website"):  # a field people never see: only bots fill it in
            return self.signins.to_board("held", done_path)
        body = form.get("body", "")
        posted = await self.gateway.submit(
            f"member:{session.member_id}",
            board.post,
            session.member_id,
            session.generation,
            body,
            parent_id=parent_id,
            ip=client_ip(request),
        )
        if posted.refused:
            who = await self.gateway.submit(
                f"member:{session.member_id}", board.viewer, session.member_id, session.generation
            )
            if who is None or posted.rule == "session":
                return self.signins.members_only()
            return await refused_page(
                (session, who), posted.refused, body, REFUSED.get(posted.rule, 400)
            )
        return self.signins.to_board("held" if posted.held else "posted", done_path)

    async def post_thread(self, request: Request) -> Response:
        async def refused(viewer: Viewer, error: str, draft: str, status: int) -> Response:
            cut = await self._board_cut(1, viewer)
            bar = self._bar(viewer[1], "/board", error, draft)
            return self._answer(self._fill(cut, viewer, request, bar), status)

        return await self._post(request, None, refused)

    async def post_reply(self, request: Request) -> Response:
        thread_id = int(request.path_params["message_id"])

        async def refused(viewer: Viewer, error: str, draft: str, status: int) -> Response:
            cut = await self._thread_cut(thread_id, viewer)
            if cut is None:
                return self._no_thread(viewer)
            bar = self._bar(viewer[1], f"/board/{thread_id}", error, draft)
            return self._answer(self._fill(cut, viewer, request, bar), status)

        if not 1 <= thread_id <= MAX_ID:
            return self._no_thread()
        return await self._post(request, thread_id, refused)

    # --- a member's own messages, and reports --------------------------------------------------

    def _not_yours(self, reason: str, language: str | None = None) -> HTMLResponse:
        language = language or self.language
        said = i18n.say(language, reason)
        text = i18n.gettext(language, N_("%(sentence)s."), sentence=said[:1].upper() + said[1:])
        title = i18n.gettext(language, N_("Not possible"))
        return self.pages.page("message.html", 400, language=language, title=title, text=text)

    async def edit_page(self, request: Request) -> Response:
        viewer = await self.signins.viewer(request)
        if viewer is None:
            return self.signins.members_only()
        message_id = int(request.path_params["message_id"])
        if not 1 <= message_id <= MAX_ID:
            return self._no_thread(viewer)
        own = await self.gateway.read(board.own, viewer[1].member_id, message_id)
        if isinstance(own, str):
            return self._not_yours(own, self._language(viewer))
        return self._edit(viewer, own.id, own.markdown, "")

    def _edit(
        self, viewer: Viewer, message_id: int, draft: str, error: str, status: int = 200
    ) -> HTMLResponse:
        language = self._language(viewer)
        return self.pages.page(
            "board_edit.html",
            status,
            language=language,
            message_id=message_id,
            draft=draft,
            error=i18n.say(language, error),
            csrf=self.auth.csrf(viewer[0]),
            limits=self.limits,
        )

    async def edit_form(self, request: Request) -> Response:
        checked = await self.signins.checked_form(request)
        if isinstance(checked, Response):
            return checked
        session, who, form = checked
        message_id = int(request.path_params["message_id"])
        body = form.get("body", "")
        changed = await self.gateway.call(
            f"member:{session.member_id}",
            board.edit,
            session.member_id,
            session.generation,
            message_id,
            body,
        )
        if changed.signed_out:
            return self.signins.members_only()
        if changed.refused and changed.thread_id is not None:  # the text: the form again
            return self._edit((session, who), message_id, body, changed.refused, 400)
        if changed.refused:
            return self._not_yours(changed.refused, self._language((session, who)))
        return self.signins.to_board("edited", f"/board/{changed.thread_id}")

    async def _act(
        self, request: Request, fn: Callable[..., board.Changed], done: str, **extra: Any
    ) -> Response:
        checked = await self.signins.checked_form(request)
        if isinstance(checked, Response):
            return checked
        session, who, form = checked
        message_id = int(request.path_params["message_id"])
        if not 1 <= message_id <= MAX_ID:
            return self._no_thread((session, who))
        if "reason" in extra:
            extra["reason"] = form.get("reason", "")
        changed = await self.gateway.call(
            f"member:{session.member_id}",
            fn,
            session.member_id,
            session.generation,
            message_id,
            **extra,
        )
        if changed.signed_out:
            return self.signins.members_only()
        if changed.refused:
            return self._not_yours(changed.refused, self._language((session, who)))
        path = "/board" if changed.thread_id is None else f"/board/{changed.thread_id}"
        return self.signins.to_board(done, path)

    async def report_page(self, request: Request) -> Response:
        viewer = await self.signins.viewer(request)
        if viewer is None:
            return self.signins.members_only()
        message_id = int(request.path_params["message_id"])
        found = await self.gateway.read(board.message, message_id) if message_id <= MAX_ID else None
        if found is None:
            return self._no_thread(viewer)
        if found.member_id == viewer[1].member_id:
            return self._not_yours(board.CANNOT_REPORT_OWN, self._language(viewer))
        return self.pages.page(
            "board_report.html",
            language=self._language(viewer),
            message=found,
            csrf=self.auth.csrf(viewer[0]),
        )

    async def delete(self, request: Request) -> Response:
        return await self._act(request, board.delete, "deleted")

    async def report(self, request: Request) -> Response:
        return await self._act(request, board.report, "reported", reason="")


__all__ = ["BoardPages"]
