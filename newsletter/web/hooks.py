"""Sending providers' webhooks: /hooks/ses (Amazon SES through SNS) and /hooks/postmark.

Each request is authenticated as its provider documents (delivery/providers.py) before
anything is read: a bad signature or wrong credentials get 401/403 and change nothing. A good
one is applied by the bounce service as a trusted report (its recipient names the member).
A hook whose configuration is empty answers 404, as if it did not exist.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from newsletter.delivery import providers
from newsletter.delivery.dsn import Returned
from newsletter.delivery.providers import Certificates, Fetch, Malformed, Refused
from newsletter.services import bounces
from newsletter.services.boundary import Gateway

log = logging.getLogger(__name__)

BODY_LIMIT = 256 * 1024  # a notification is a few KB; SES's with headers a few tens


def _answer(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": status, "message": message}, status_code=status)


async def _json(request: Request) -> Any:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_LIMIT:
            raise Malformed(f"the body is larger than {BODY_LIMIT} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise Malformed("the body is not JSON") from None


class Hooks:
    def __init__(self, gateway: Gateway, fetch: Fetch = providers.fetch_https) -> None:
        self.gateway = gateway
        self.settings = gateway.services.settings
        self.fetch = fetch
        self.certificates = Certificates(fetch)

    def routes(self) -> list[Route]:
        return [
            Route("/hooks/ses", self.ses, methods=["POST"]),
            Route("/hooks/postmark", self.postmark, methods=["POST"]),
        ]

    async def _apply(self, source: str, returned: Returned) -> Response:
        applied = await self.gateway.call(
            f"hooks:{source}", bounces.apply, returned, source=source, trusted=True
        )
        return _answer(200, f"{applied.outcome}: {applied.note}")

    async def ses(self, request: Request) -> Response:
        topics = tuple(self.settings.bounces.ses_topics)
        if not topics:
            return _answer(404, "no such hook")
        try:
            message = await _json(request)
            if not isinstance(message, dict):
                raise Malformed("the body is not an SNS message")
            # Fetching Amazon's certificate (once) and RSA are blocking: off the loop.
            await self.gateway.offload(providers.verify_sns, message, self.certificates, topics)
            notice = providers.read_ses(message)
        except Refused as exc:
            log.warning("SES hook refused: %s", exc)
            return _answer(403, str(exc))
        except Malformed as exc:
            return _answer(400, str(exc))
        if notice.kind == "subscribe":
            # Confirming is a GET of the signed SubscribeURL (SNS documents no other way).
            await self.gateway.offload(self.fetch, notice.subscribe_url)
            log.info("SES hook: subscription to %s confirmed", message.get("TopicArn"))
            return _answer(200, "subscription confirmed")
        if notice.returned is None:
            return _answer(200, "nothing to do")
        return await self._apply("ses", notice.returned)

    async def postmark(self, request: Request) -> Response:
        user = self.settings.bounces.postmark_user
        if not user:
            return _answer(404, "no such hook")
        try:
            providers.check_basic_auth(
                request.headers.get("authorization", ""), user, self.settings.postmark_password
            )
        except Refused as exc:
            log.warning("Postmark hook refused: %s", exc)
            return JSONResponse(
                {"status": 401, "message": str(exc)},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="bounces"'},
            )
        try:
            record = await _json(request)
            if not isinstance(record, dict):
                raise Malformed("the body is not a Postmark record")
            returned = providers.postmark_returned(record)
        except Malformed as exc:
            return _answer(400, str(exc))
        return await self._apply("postmark", returned)
