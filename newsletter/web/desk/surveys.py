"""The desk's survey pages."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter.services import votes
from newsletter.web.auth import Editor
from newsletter.web.desk.base import DeskBase


class SurveyPages:
    def __init__(self, desk: DeskBase) -> None:
        self.desk = desk
        self.gateway = desk.gateway

    def routes(self) -> list[Route]:
        p = self.desk.guard_page
        return [Route("/desk/surveys", p(self.surveys), methods=["GET"])]

    async def surveys(self, request: Request, editor: Editor) -> Response:
        raw = request.query_params.get("survey_id", "")
        survey_id = int(raw) if raw.isdigit() and len(raw) < 10 else None
        if raw and survey_id is None:
            return self.desk.page(
                "message.html", editor, 404, title="No survey", text="No such survey."
            )
        try:
            results = await self.gateway.call(editor.actor, votes.settled_results, survey_id)
        except votes.NoSuchSurvey as exc:
            return self.desk.page("message.html", editor, 404, title="No survey", text=str(exc))
        return self.desk.page("results.html", editor, results=results)
