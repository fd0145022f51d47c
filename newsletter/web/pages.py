"""Rendering for the web door: templates, the security headers every response carries, error pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jinja2 import Environment
from starlette.responses import HTMLResponse, JSONResponse, Response

from newsletter import i18n

# Pages load nothing from elsewhere and run only our own script; forms post only here.
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# An archived issue is the email's HTML, whose styles are inline (email clients need that).
CSP_ISSUE = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
# JSON and plain answers: nothing in them may load or run anything.
CSP_NONE = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"

_BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def security_headers(csp: str = CSP) -> dict[str, str]:
    return {"Content-Security-Policy": csp, **_BASE_HEADERS}


# The defaults the middleware adds to any response that set none of its own (404s, JSON,
# redirects, plain text): every answer carries them.
DEFAULT_HEADERS = [
    (name.lower().encode(), value.encode()) for name, value in security_headers(CSP_NONE).items()
]


class SecurityHeaders:
    """ASGI middleware: each security header a response lacks is added with its strict default."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                missing = [(n, v) for n, v in DEFAULT_HEADERS if n not in present]
                if missing:
                    message = {**message, "headers": [*message.get("headers", []), *missing]}
            await send(message)

        await self.app(scope, receive, with_headers)


class Pages:
    """Renders the site's templates with what every page needs (list name, base URL)."""

    def __init__(
        self,
        env: Environment,
        list_name: str,
        base: str,
        envs: Callable[[str], Environment] | None = None,
        names: Callable[[str], str] | None = None,
    ) -> None:
        self.env = env
        self.list_name = list_name
        self.base = base
        # The templates and the list's name in another language (a member's own pages).
        self.envs = envs
        self.names = names

    def render(self, template: str, language: str | None = None, **context: Any) -> str:
        env, name = self.env, self.list_name
        if language is not None and self.envs is not None:
            env = self.envs(language)
            name = self.names(language) if self.names else name
        return env.get_template(template).render(list_name=name, base=self.base, **context)

    def page(
        self,
        template: str,
        status: int = 200,
        csp: str = CSP,
        language: str | None = None,
        **context: Any,
    ) -> HTMLResponse:
        return HTMLResponse(
            self.render(f"web/{template}", language, **context),
            status_code=status,
            headers=security_headers(csp),
        )

    def message(
        self, title: str, text: str, status: int = 200, language: str | None = None
    ) -> HTMLResponse:
        """A page of one title and one paragraph; with `language`, both are message ids (or
        i18n.Said) said in it."""
        if language is not None:
            title, text = i18n.say(language, title), i18n.say(language, text)
        return self.page("message.html", status, language=language, title=title, text=text)

    def bad_link(self, reason: str) -> HTMLResponse:
        return self.message("This link does not work", f"{reason}. Nothing was recorded.", 400)


def json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=security_headers(CSP_NONE))


def empty(status: int = 200) -> Response:
    return Response(status_code=status, headers=security_headers(CSP_NONE))
