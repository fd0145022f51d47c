"""The preference page (/p/TOKEN) and a new address's confirmation page (/a/TOKEN).

A GET or HEAD shows the page and changes nothing, so a mail scanner that fetches every link
changes no one's choices. The page's form posts back to the same URL with the button that
was pressed (`action`) and a form token derived from the link's; a post from another site,
or one without its button (a script calling form.submit()), changes nothing either.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter import i18n
from newsletter.errors import TokenError
from newsletter.i18n import N_
from newsletter.services import preferences
from newsletter.services.boundary import Gateway
from newsletter.services.preferences import PreferenceError, Preferences
from newsletter.services.unit import Services
from newsletter.tokens import Kind
from newsletter.web.members import MAX_ID, agent, client_ip, form_fields
from newsletter.web.pages import Pages, empty

ACTIONS = ("save", "pause", "resume", "address", "unsubscribe")


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class PreferencePages:
    """The routes of a member's own choices."""

    def __init__(self, services: Services, gateway: Gateway, pages: Pages) -> None:
        self.services = services
        self.gateway = gateway
        self.pages = pages
        self.signer = services.signer
        self._form_key = hashlib.sha256(
            b"preference form\x00" + services.settings.require_secret()[0]
        ).digest()
        self.origin = origin_of(services.settings.list.base_url)

    def routes(self) -> list[Route]:
        read = ["GET", "HEAD"]
        return [
            Route("/p/{token}", self.page, methods=read),
            Route("/p/{token}", self.form, methods=["POST"]),
            Route("/a/{token}", self.address_page, methods=read),
            Route("/a/{token}", self.address_form, methods=["POST"]),
        ]

    def message(self, title: str, text: str, status: int) -> Response:
        language = self.services.settings.list.language
        return self.pages.page(
            "message.html",
            status,
            language=language,
            title=i18n.gettext(language, title),
            text=i18n.gettext(language, text),
        )

    def refused(self) -> Response:
        return self.message(
            N_("The form was not accepted"),
            N_("Open the page from your link again and use its buttons. Nothing was changed."),
            403,
        )

    def form_token(self, token: str) -> str:
        return hmac.new(self._form_key, token.encode(), hashlib.sha256).hexdigest()[:32]

    def same_origin(self, request: Request) -> bool:
        """A browser's post from this site: Sec-Fetch-Site and Origin, where sent, say so."""
        site = request.headers.get("sec-fetch-site", "")
        if site and site not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin", "").lower()
        if not origin:
            return True  # an older browser, or a client that is not one
        if origin == "null":
            # Our pages send no referrer, so a browser posts their forms with Origin: null;
            # then only Sec-Fetch-Site can tell this site's form from another's.
            return site == "same-origin"
        own = origin_of(str(request.url))
        return origin in (self.origin, own)

    def _member(self, token: str) -> tuple[int, int]:
        member_id, issue_id = self.signer.check(token, Kind.PREFERENCES)
        if member_id > MAX_ID or issue_id > MAX_ID:
            raise TokenError("the link names something that does not exist")
        return member_id, issue_id

    def _show(
        self, token: str, prefs: Preferences, *, error: str = "", status: int = 200
    ) -> Response:
        return self.pages.page(
            "preferences.html",
            status,
            language=prefs.language,
            prefs=prefs,
            token=token,
            csrf=self.form_token(token),
            error=error,
            now=self.services.clock(),
            weeks=preferences.PAUSE_WEEKS,
        )

    async def page(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            member_id, issue_id = self._member(token)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        prefs = await self.gateway.submit(
            f"member:{member_id}",
            preferences.visit,
            member_id,
            issue_id,
            method=request.method,
            ip=client_ip(request),
            user_agent=agent(request),
        )
        if prefs is None:
            return self.pages.bad_link("the link names a member that does not exist")
        if request.method == "HEAD":
            return empty()
        return self._show(token, prefs)

    async def form(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            member_id, _ = self._member(token)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        form = await form_fields(request)
        if (
            form is None
            or not self.same_origin(request)
            or not hmac.compare_digest(form.get("csrf", ""), self.form_token(token))
        ):
            return self.refused()
        action = form.get("action", "")
        if action not in ACTIONS:
            return self.message(N_("Choose an action"), N_("The form did not say what to do."), 400)
        actor = f"member:{member_id}"
        try:
            prefs = await self._act(actor, member_id, action, form)
        except PreferenceError as exc:
            current = await self.gateway.read(preferences.show, member_id)
            if current is None:
                return self.pages.bad_link("the link names a member that does not exist")
            return self._show(token, current, error=exc.said_in(current.language), status=400)
        return self._show(token, prefs)

    async def _act(
        self, actor: str, member_id: int, action: str, form: dict[str, str]
    ) -> Preferences:
        if action == "save":
            sections = [v for k, v in form.items() if k.startswith("section:")]
            return await self.gateway.call(
                actor,
                preferences.save,
                member_id,
                sections=sections,
                language=form.get("language", ""),
                survey=form.get("survey") == "1",
            )
        if action in ("pause", "resume"):
            weeks = form.get("weeks", "0") if action == "pause" else "0"
            return await self.gateway.call(
                actor, preferences.pause, member_id, int(weeks) if weeks.isdigit() else -1
            )
        if action == "address":
            return await self.gateway.call(
                actor, preferences.change_address, member_id, form.get("email", "")[:400]
            )
        return await self.gateway.call(
            actor, preferences.leave, member_id, confirmed=form.get("confirm") == "1"
        )

    # --- a new address confirms ---------------------------------------------------------------

    def _change(self, token: str) -> tuple[int, int]:
        member_id, nonce = self.signer.check(
            token, Kind.ADDRESS, max_age_days=preferences.ADDRESS_DAYS
        )
        if member_id > MAX_ID or nonce > MAX_ID:
            raise TokenError("the link names something that does not exist")
        return member_id, nonce

    async def address_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            member_id, nonce = self._change(token)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        if request.method == "HEAD":
            return empty()
        change = await self.gateway.read(preferences.address_change, member_id, nonce)
        return self.pages.page(
            "address.html",
            language=change.language,
            change=change,
            token=token,
            csrf=self.form_token(token),
        )

    async def address_form(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            member_id, nonce = self._change(token)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        form = await form_fields(request)
        if (
            form is None
            or not self.same_origin(request)
            or not hmac.compare_digest(form.get("csrf", ""), self.form_token(token))
            or form.get("action") != "confirm"
        ):
            return self.refused()
        change = await self.gateway.call(
            f"member:{member_id}", preferences.confirm_address, member_id, nonce
        )
        return self.pages.page(
            "address.html",
            language=change.language,
            change=change,
            token=token,
            csrf=self.form_token(token),
        )


__all__ = ["PreferencePages"]
