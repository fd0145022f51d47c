"""Members' sign-in pages: asking for a link, the link's "Sign in" button, signing out, reply notices.

A GET or HEAD of a sign-in link (/s/TOKEN), of an issue's board link (/b/TOKEN) or of a reply
notice's stop link (/n/TOKEN) only shows a page and records the hit; the page's button POSTs.
The button's form carries a `person` field that person.js sets on a trusted pointer, key or
touch event; a POST without it, with a scanner's marks around it, asks once more
(services/signin.py). Who is signed in comes from the session cookie (web/auth.MemberAuth),
checked against the database on every request through the batcher (services.board.viewer).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from newsletter import i18n
from newsletter.content.addresses import normalize_address
from newsletter.errors import TokenError
from newsletter.i18n import N_
from newsletter.services import board, signin
from newsletter.services.boundary import Gateway
from newsletter.services.unit import Services
from newsletter.tokens import Kind
from newsletter.web.auth import MemberAuth, MemberSession
from newsletter.web.members import agent, client_ip, form_fields
from newsletter.web.pages import CSP_NONE, Pages, empty, security_headers

MAX_ID = 2**31 - 1
# What a redirect to the board may say (?done=...): fixed texts, so a link from elsewhere
# cannot make the board show words of its choosing. Said in the reader's language.
DONE = {
    "signedin": N_("You are signed in."),
    "signedout": N_("You are signed out."),
    "everywhere": N_("You are signed out on every device."),
    "notices-off": N_("Reply notices are off."),
    "notices-on": N_("Reply notices are on."),
    "held": N_("Thank you. You are new here, so your message waits for an editor's approval."),
    "posted": N_("Your message is on the board."),
    "edited": N_("Your message is changed."),
    "deleted": N_("Your message is deleted."),
    "reported": N_("Thank you: an editor will look at the message."),
}


class SigninPages:
    def __init__(self, services: Services, gateway: Gateway, pages: Pages) -> None:
        self.services = services
        self.gateway = gateway
        self.pages = pages
        self.signer = services.signer
        self.auth = MemberAuth(services.settings, services.signer)
        # Pages for no one in particular (the sign-in form) are in the list's language.
        self.language = services.settings.list.language

    def routes(self) -> list[Route]:
        read = ["GET", "HEAD"]
        return [
            Route("/signin", self.signin_page, methods=read),
            Route("/signin", self.signin_form, methods=["POST"]),
            Route("/s/{token}", self.link_page, methods=read),
            Route("/s/{token}", self.link_form, methods=["POST"]),
            Route("/b/{token}", self.link_page, methods=read),
            Route("/b/{token}", self.link_form, methods=["POST"]),
            Route("/signout", self.signout, methods=["POST"]),
            Route("/signout/everywhere", self.signout_everywhere, methods=["POST"]),
            Route("/n/{token}", self.notices_page, methods=read),
            Route("/n/{token}", self.notices_form, methods=["POST"]),
            Route("/board/notices", self.notices_toggle, methods=["POST"]),
        ]

    # --- who is signed in ----------------------------------------------------------------------

    async def viewer(self, request: Request) -> tuple[MemberSession, board.Viewer] | None:
        """The signed-in member, if the cookie names a session that is still good."""
        session = self.auth.session(request)
        if session is None:
            return None
        who = await self.gateway.submit(
            f"member:{session.member_id}", board.viewer, session.member_id, session.generation
        )
        return None if who is None else (session, who)

    def to_board(self, done: str, path: str = "/board") -> RedirectResponse:
        return RedirectResponse(f"{path}?done={done}", status_code=303, headers=security_headers())

    def members_only(self, language: str | None = None) -> Response:
        """The answer to a member's form posted by someone not signed in (or forged)."""
        return self.pages.page("members_only.html", 403, language=language)

    async def signed_form(
        self, request: Request
    ) -> tuple[MemberSession, dict[str, str]] | Response:
        """A form with the CSRF token of the session its cookie names, else the 403 page. The
        session is not checked against the database here: the use-case the form calls does
        that in its own transaction (a post makes one trip to the batcher, not two)."""
        form = await form_fields(request)
        session = self.auth.session(request)
        if session is None or form is None or not self.auth.csrf_ok(session, form.get("csrf")):
            return self.members_only()
        return session, form

    async def checked_form(
        self, request: Request
    ) -> tuple[MemberSession, board.Viewer, dict[str, str]] | Response:
        """A signed-in member's form with the session's CSRF token, the session still good;
        else the 403 page."""
        signed = await self.signed_form(request)
        if isinstance(signed, Response):
            return signed
        session, form = signed
        who = await self.gateway.submit(
            f"member:{session.member_id}", board.viewer, session.member_id, session.generation
        )
        return self.members_only() if who is None else (session, who, form)

    # --- asking for a link ---------------------------------------------------------------------

    async def signin_page(self, request: Request) -> Response:
        return self.pages.page("signin.html", error="", email="", sent=False)

    async def signin_form(self, request: Request) -> Response:
        form = await form_fields(request)
        if form is None:
            error = i18n.gettext(self.language, N_("The form could not be read."))
            return self.pages.page("signin.html", 400, error=error, email="", sent=False)
        raw = form.get("email", "")
        if form.get("website"):  # a field people never see: only bots fill it in
            return self.pages.page("signin.html", error="", email="", sent=True)
        try:
            email = normalize_address(raw)
        except ValueError as exc:
            return self.pages.page("signin.html", 400, error=str(exc), email=raw[:320], sent=False)
        asked = await self.gateway.call("web", signin.request_link, email, ip=client_ip(request))
        if asked.limited:
            return self.pages.message(
                N_("Too many requests"),
                N_(
                    "Too many sign-in links were asked for from your network; try again in an hour."
                ),
                429,
                self.language,
            )
        # The same answer whatever the address: the page reveals no membership.
        return self.pages.page("signin.html", error="", email="", sent=True)

    # --- the link's page and its button ------------------------------------------------------

    def _link(self, request: Request) -> tuple[str, int, int | None, int | None]:
        """(kind, member, sign-in id, issue id) of a sign-in link (/s/) or an issue's board
        link (/b/, good for board.issue_link_days); TokenError for anything else."""
        token = request.path_params["token"]
        if request.url.path.startswith("/s/"):
            member_id, signin_id = self.signer.check(token, Kind.SIGNIN)
            values, kind, issue_id = (member_id, signin_id), "signin", None
        else:
            days = self.services.settings.board.issue_link_days
            try:
                member_id, issue_id = self.signer.check(token, Kind.BOARD, max_age_days=days)
            except TokenError as exc:
                if str(exc) != "the token has expired":
                    raise
                raise TokenError(
                    f"an issue's board link signs in for {days} days; ask for a sign-in link "
                    "on the sign-in page"
                ) from None
            values, kind, signin_id = (member_id, issue_id), "board", None
        if any(v > MAX_ID for v in values):
            raise TokenError("the link names something that does not exist")
        return kind, member_id, signin_id, issue_id

    async def link_page(self, request: Request) -> Response:
        try:
            kind, member_id, signin_id, issue_id = self._link(request)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        page = await self.gateway.submit(
            f"member:{member_id}",
            signin.visit,
            member_id,
            kind=kind,
            method=request.method,
            signin_id=signin_id,
            issue_id=issue_id,
            ip=client_ip(request),
            user_agent=agent(request),
        )
        if page is None:
            return self.pages.bad_link("the link names a member or sign-in that does not exist")
        if request.method == "HEAD":
            return empty()
        return self.pages.page(
            "signin_link.html",
            language=page.language,
            problem=i18n.say(page.language, page.problem),
            email=page.email,
            action=request.url.path,
            confirm=False,
        )

    async def link_form(self, request: Request) -> Response:
        try:
            _, member_id, signin_id, issue_id = self._link(request)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        form = await form_fields(request) or {}
        done = await self.gateway.call(
            f"member:{member_id}",
            signin.sign_in,
            member_id,
            signin_id=signin_id,
            issue_id=issue_id,
            person=form.get("person") == "1",
            confirmed=form.get("confirm") == "1",
        )
        if done.refused:
            return self.pages.page(
                "signin_link.html",
                400,
                language=done.language,
                problem=i18n.say(done.language, done.refused),
                email="",
                action="",
                confirm=False,
            )
        if done.ask_again:
            return self.pages.page(
                "signin_link.html",
                language=done.language,
                problem="",
                email="",
                action=request.url.path,
                confirm=True,
            )
        response = self.to_board("signedin")
        self.auth.set(response, self.auth.new(done.member_id, done.generation))
        return response

    # --- signing out ---------------------------------------------------------------------------

    async def signout(self, request: Request) -> Response:
        checked = await self.checked_form(request)
        if isinstance(checked, Response):
            return checked
        response = self.to_board("signedout")
        self.auth.clear(response)
        return response

    async def signout_everywhere(self, request: Request) -> Response:
        checked = await self.checked_form(request)
        if isinstance(checked, Response):
            return checked
        session, _, _ = checked
        await self.gateway.call(
            f"member:{session.member_id}",
            signin.sign_out_everywhere,
            session.member_id,
            session.generation,
        )
        response = self.to_board("everywhere")
        self.auth.clear(response)
        return response

    # --- reply notices -------------------------------------------------------------------------

    async def notices_toggle(self, request: Request) -> Response:
        checked = await self.checked_form(request)
        if isinstance(checked, Response):
            return checked
        session, _, form = checked
        on = form.get("notices") == "on"
        await self.gateway.call(
            f"member:{session.member_id}",
            signin.set_notices,
            session.member_id,
            on,
            via="the board page",
        )
        return self.to_board("notices-on" if on else "notices-off")

    def _notices_member(self, request: Request) -> int:
        (member_id,) = self.signer.check(request.path_params["token"], Kind.NOTICES)
        if member_id > MAX_ID:
            raise TokenError("the link names a member that does not exist")
        return member_id

    async def notices_page(self, request: Request) -> Response:
        try:
            member_id = self._notices_member(request)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        if request.method == "HEAD":
            return empty()
        language = await self.gateway.read(signin.language, member_id)
        return self.pages.page(
            "notices.html", language=language, token=request.path_params["token"], done=False
        )

    async def notices_form(self, request: Request) -> Response:
        try:
            member_id = self._notices_member(request)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        form = await form_fields(request) or {}
        one_click = form.get("List-Unsubscribe") == "One-Click"
        await self.gateway.call(
            f"member:{member_id}",
            signin.set_notices,
            member_id,
            False,
            via="one-click POST (RFC 8058)" if one_click else "the link in a reply notice",
        )
        if one_click:
            return PlainTextResponse("reply notices off\n", headers=security_headers(CSP_NONE))
        language = await self.gateway.read(signin.language, member_id)
        return self.pages.page(
            "notices.html", language=language, token=request.path_params["token"], done=True
        )
