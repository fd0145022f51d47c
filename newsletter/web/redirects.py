"""/r/TOKEN: a message's link to one of its issue's own links, answered at once with a redirect.

The token names the issue, the member and the link's place in the issue's stored link list,
signed; the redirect goes only to that stored URL, so the endpoint can never be used to send
anyone elsewhere (no open redirect). The fetch is held as evidence for the click rule
(services/clicks.py), put in the batcher's next batch without waiting for it, and nothing
else changes: a GET on a link in an email is never more than evidence.
"""

from __future__ import annotations

from collections import OrderedDict

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter.errors import TokenError
from newsletter.services import clicks
from newsletter.services.boundary import Gateway
from newsletter.tokens import Kind
from newsletter.web.pages import Pages

MAX_ID = 2**31 - 1
CACHED_ISSUES = 64  # an issue's links never change once it is released


class Redirects:
    def __init__(self, gateway: Gateway, pages: Pages) -> None:
        self.gateway = gateway
        self.pages = pages
        self.signer = gateway.services.signer
        self._targets: OrderedDict[int, tuple[str, ...] | None] = OrderedDict()

    def routes(self) -> list[Route]:
        return [Route("/r/{token}", self.redirect, methods=["GET", "HEAD"])]

    async def _links(self, issue_id: int) -> tuple[str, ...] | None:
        if issue_id in self._targets:
            self._targets.move_to_end(issue_id)
            return self._targets[issue_id]
        found = await self.gateway.read(clicks.targets, issue_id)
        if found is not None:  # an issue not there yet may be released later
            self._targets[issue_id] = found
            while len(self._targets) > CACHED_ISSUES:
                self._targets.popitem(last=False)
        return found

    async def redirect(self, request: Request) -> Response:
        try:
            issue_id, member_id, link = self.signer.check(request.path_params["token"], Kind.CLICK)
        except TokenError as exc:
            return self.pages.bad_link(str(exc))
        links = None if max(issue_id, member_id) > MAX_ID else await self._links(issue_id)
        if links is None or link >= len(links):
            return self.pages.message("Not found", "This link leads nowhere any more.", 404)
        # Answered at once: the fetch goes into the next batch, not waited for (it is
        # evidence for a count, not an action the member is shown).
        self.gateway.post(
            f"member:{member_id}",
            clicks.fetch,
            issue_id,
            member_id,
            link,
            method=request.method,
            at=self.gateway.services.clock(),  # the request's time, not the batch's
        )
        # The security middleware adds its headers (no-referrer: the target never sees the token).
        return Response(status_code=302, headers={"Location": links[link]})
