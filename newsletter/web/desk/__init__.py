"""The editor's desk (/desk, behind a login): pages over the service layer, one module a noun.

Server-rendered with the same strict Content-Security-Policy as the member pages; every POST
form carries a CSRF token bound to the editor's session. Each handler is one service call
through the gateway, so no database or compile work runs on the event loop; the guards in
base.py are the only places that check the login, the CSRF token and the editor's role
(the service layer checks the role again for every use-case). See docs/desk.md.
"""

from __future__ import annotations

from starlette.routing import Route

from newsletter.services.boundary import Gateway
from newsletter.web.desk.base import DeskBase
from newsletter.web.desk.board import BoardPages
from newsletter.web.desk.editorial import EditorialPages
from newsletter.web.desk.issues import IssuePages
from newsletter.web.desk.people import MemberPages
from newsletter.web.desk.surveys import SurveyPages
from newsletter.web.jobs import Jobs
from newsletter.web.pages import Pages


class Desk(DeskBase):
    def __init__(self, gateway: Gateway, pages: Pages, jobs: Jobs) -> None:
        super().__init__(gateway, pages)
        self.jobs = jobs
        self.issues = IssuePages(self, jobs)
        self.editorial = EditorialPages(self)
        self.people = MemberPages(self)
        self.surveys = SurveyPages(self)
        self.board = BoardPages(self)

    def routes(self) -> list[Route]:
        return [
            *self.session_routes(),
            *self.issues.routes(),
            *self.editorial.routes(),
            *self.people.routes(),
            *self.surveys.routes(),
            *self.board.routes(),
        ]


__all__ = ["Desk"]
