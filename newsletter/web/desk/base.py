"""The desk's frame: sessions, the login, rendering, and the guards every desk page goes through."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from newsletter.services import editors
from newsletter.services.boundary import Gateway
from newsletter.services.unit import Forbidden, Permission
from newsletter.web.auth import COOKIE, SESSION_SECONDS, DeskAuth, Editor
from newsletter.web.members import client_ip
from newsletter.web.pages import CSP, Pages, security_headers

log = logging.getLogger("newsletter.web.desk")

MAX_UPLOAD = 20 * 1024 * 1024
MAX_ID = 2**31 - 1

PageHandler = Callable[[Request, Editor], Awaitable[Response]]
FormHandler = Callable[[Request, Editor, FormData], Awaitable[Response]]


class DeskBase:
    """What every desk page needs: the gateway, templates, the editor's session and its guards."""

    def __init__(self, gateway: Gateway, pages: Pages) -> None:
        self.gateway = gateway
        self.settings = gateway.services.settings
        self.pages = pages
        self.auth = DeskAuth(self.settings)
        self.passwords = editors.Passwords(self.settings.editor)
        web = self.settings.web
        self.throttle = editors.LoginThrottle(
            per_address=web.login_attempts_per_address,
            per_name=web.login_attempts_per_name,
            window=web.login_window_seconds,
        )

    # --- rendering -----------------------------------------------------------------------------

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

    def not_allowed(self, editor: Editor, exc: Forbidden) -> HTMLResponse:
        return self.page("message.html", editor, 403, title="Not allowed", text=str(exc))

    # --- the guards ----------------------------------------------------------------------------

    def guard_page(
        self, handler: PageHandler, need: Permission | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        """A page for logged-in editors (whose role has `need`); everyone else is sent to the
        login form, or told they may not."""

        async def guarded(request: Request) -> Response:
            editor = self.auth.editor(request)
            if editor is None:
                return self.to_login()
            try:
                if need is not None and not editor.actor.may(need):
                    raise Forbidden(editor.name, editor.role, need)
                return await handler(request, editor)
            except Forbidden as exc:
                return self.not_allowed(editor, exc)

        return guarded

    def guard_form(
        self, handler: FormHandler, need: Permission | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        """A form post by a logged-in editor with the session's CSRF token (and a role that
        has `need`); else nothing runs."""

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
                if need is not None and not editor.actor.may(need):
                    raise Forbidden(editor.name, editor.role, need)
                return await handler(request, editor, form)
            except Forbidden as exc:  # the service layer refused the role
                return self.not_allowed(editor, exc)
            finally:
                await form.close()

        return guarded

    # --- login ---------------------------------------------------------------------------------

    def session_routes(self) -> list[Route]:
        return [
            Route("/desk/login", self.login_form, methods=["GET"]),
            Route("/desk/login", self.login, methods=["POST"]),
            Route("/desk/logout", self.guard_form(self.logout), methods=["POST"]),
        ]

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
