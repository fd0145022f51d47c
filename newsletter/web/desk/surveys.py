"""The desk's survey pages: every survey and the one the next issue carries, making a survey,
opening and closing one, its results as a chart and its counted votes as CSV."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter.errors import NewsletterError
from newsletter.services import surveys
from newsletter.services.unit import Permission
from newsletter.web.auth import Editor
from newsletter.web.desk.base import MAX_ID, DeskBase
from newsletter.web.pages import security_headers

ACTIONS = {"open": surveys.open_survey, "close": surveys.close_survey}


def _options(form: FormData) -> list[str]:
    """The option fields as typed, the unused ones at the end left out: a blank between two
    filled ones is kept, so that an error names the field the editor sees."""
    options = [str(value) for value in form.getlist("option")]
    while options and not options[-1].strip():
        options.pop()
    return options


class SurveyPages:
    def __init__(self, desk: DeskBase) -> None:
        self.desk = desk
        self.gateway = desk.gateway

    def routes(self) -> list[Route]:
        p, f = self.desk.guard_page, self.desk.guard_form
        one = "/desk/surveys/{survey_id:int}"
        return [
            Route("/desk/surveys", p(self.index), methods=["GET"]),
            Route("/desk/surveys/new", p(self.new, Permission.SURVEYS), methods=["GET"]),
            Route("/desk/surveys/new", f(self.create, Permission.SURVEYS), methods=["POST"]),
            Route(one, p(self.survey), methods=["GET"]),
            Route(f"{one}/votes.csv", p(self.votes_csv, Permission.MEMBERS), methods=["GET"]),
            Route(f"{one}/{{action}}", f(self.act, Permission.SURVEYS), methods=["POST"]),
        ]

    def _no_survey(self, editor: Editor, text: str) -> Response:
        return self.desk.page("message.html", editor, 404, title="No survey", text=text)

    async def index(self, request: Request, editor: Editor) -> Response:
        text, kind = self.desk.auth.notice(request)
        found = await self.gateway.call(editor.actor, surveys.overview)
        return self.desk.page(
            "surveys.html",
            editor,
            overview=found,
            notice=text,
            notice_kind=kind,
            # What the page offers: the service layer refuses the rest anyway.
            manage=editor.actor.may(Permission.SURVEYS),
            export=editor.actor.may(Permission.MEMBERS),
        )

    async def new(self, request: Request, editor: Editor) -> Response:
        return self.desk.page("surveys_new.html", editor, error="", question="", options=[])

    async def create(self, request: Request, editor: Editor, form: FormData) -> Response:
        question, options = str(form.get("question", "")), _options(form)
        try:
            made = await self.gateway.call(editor.actor, surveys.create_survey, question, options)
        except surveys.InvalidSurvey as exc:  # the form again, as typed, with the reason
            return self.desk.page(
                "surveys_new.html",
                editor,
                400,
                error=str(exc),
                question=question,
                options=options,
            )
        return self.desk.back(
            f"/desk/surveys/{made.id}",
            f"survey #{made.id} made as a draft: open it to let issues carry it",
        )

    async def survey(self, request: Request, editor: Editor) -> Response:
        survey_id = int(request.path_params["survey_id"])
        if not 1 <= survey_id <= MAX_ID:
            return self._no_survey(editor, f"There is no survey #{survey_id}.")
        text, kind = self.desk.auth.notice(request)
        try:
            found = await self.gateway.call(editor.actor, surveys.report, survey_id)
        except surveys.NoSuchSurvey as exc:
            return self._no_survey(editor, str(exc))
        return self.desk.page(
            "results.html",
            editor,
            survey=found.survey,
            results=found.results,
            notice=text,
            notice_kind=kind,
            # What the page offers: the service layer refuses the rest anyway.
            manage=editor.actor.may(Permission.SURVEYS),
            export=editor.actor.may(Permission.MEMBERS),
        )

    async def votes_csv(self, request: Request, editor: Editor) -> Response:
        survey_id = int(request.path_params["survey_id"])
        if not 1 <= survey_id <= MAX_ID:
            return self._no_survey(editor, f"There is no survey #{survey_id}.")
        try:
            export = await self.gateway.call(editor.actor, surveys.votes_csv, survey_id)
        except surveys.NoSuchSurvey as exc:
            return self._no_survey(editor, str(exc))
        headers = security_headers()
        headers["Content-Disposition"] = f'attachment; filename="survey-{survey_id}-votes.csv"'
        return Response(export.text, media_type="text/csv; charset=utf-8", headers=headers)

    async def act(self, request: Request, editor: Editor, form: FormData) -> Response:
        survey_id = int(request.path_params["survey_id"])
        action = ACTIONS.get(request.path_params["action"])
        page = f"/desk/surveys/{survey_id}"
        if action is None:
            return self.desk.back(
                page, f"unknown action {request.path_params['action']!r}", error=True
            )
        if not 1 <= survey_id <= MAX_ID:
            return self._no_survey(editor, f"There is no survey #{survey_id}.")
        try:
            done = await self.gateway.call(editor.actor, action, survey_id)
        except surveys.NoSuchSurvey as exc:
            return self._no_survey(editor, str(exc))
        except NewsletterError as exc:  # Conflict: already open or closed, replaced
            return self.desk.back(page, str(exc), error=True)
        return self.desk.back(page, f"survey #{done.id} is {done.status}")
