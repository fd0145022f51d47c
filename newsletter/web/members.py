"""Member pages: votes, unsubscribe, subscribe with double opt-in, archive and search.

Nothing here changes state on a plain GET or HEAD: those only show a page and record the
hit as evidence (docs/votes.md). Votes wait for evidence that a person clicked; unsubscribe
and confirmation take a POST (RFC 8058's one-click POST for List-Unsubscribe).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content.compiler import from_row
from newsletter.content.personalize import Personalizer, Recipient
from newsletter.delivery.smtp import Relays
from newsletter.errors import TokenError
from newsletter.services import members, votes
from newsletter.site import defaults_dir, environment
from newsletter.storage import db, search
from newsletter.storage.models import (
    ACTIVE,
    BOUNCED,
    PENDING,
    SENDING,
    SENT,
    UNSUBSCRIBED,
    Issue,
    LinkHit,
    Member,
    SignupRequest,
    Survey,
    utcnow,
)
from newsletter.tokens import Kind, Signer
from newsletter.web import desk as admin

# Pages load nothing from elsewhere and run only our own script; forms post only here.
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# An archived issue is the email's HTML, whose styles are inline (email clients need that).
CSP_ISSUE = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
CONFIRM_DAYS = 7
SIGNUPS_PER_IP_HOUR = 10
MAILS_PER_ADDRESS_DAY = 3


class Links:
    """Everything a request handler needs, built once per app."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        clock: Callable[[], dt.datetime],
        rule: votes.VoteRule,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        self.rule = rule
        self.signer = Signer(settings.require_secret())
        self.env = environment(settings.site_dir)
        self.base = settings.list.base_url.rstrip("/")

    def page(
        self, template: str, status: int = 200, csp: str = CSP, **context: Any
    ) -> HTMLResponse:
        html = self.env.get_template(f"web/{template}").render(
            list_name=self.settings.list.name, base=self.base, **context
        )
        return HTMLResponse(html, status_code=status, headers=security_headers(csp))

    def message(self, title: str, text: str, status: int = 200) -> HTMLResponse:
        return self.page("message.html", status, title=title, text=text)

    def bad_link(self, exc: TokenError) -> HTMLResponse:
        return self.message("This link does not work", f"{exc}. Nothing was recorded.", 400)


def security_headers(csp: str = CSP) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def create_app(
    settings: Settings,
    sessions: sessionmaker[Session] | None = None,
    *,
    clock: Callable[[], dt.datetime] = utcnow,
    rule: votes.VoteRule | None = None,
) -> FastAPI:
    """The web app for one site. `clock` and `rule` are seams for tests and tuning."""
    links = Links(
        settings,
        sessions or db.open_database(settings.database_url),
        clock,
        rule or votes.VoteRule.from_settings(settings),
    )
    app = FastAPI(title=f"{settings.list.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.links = links
    admin.install(app, links)  # the editor's desk (/desk) and the JSON API (/api)

    def hit(session: Session, request: Request, kind: str, member_id: int, **fields: Any) -> None:
        votes.record_hit(
            session,
            kind=kind,
            method=request.method,
            member_id=member_id,
            at=links.clock(),
            ip=client_ip(request),
            user_agent=request.headers.get("user-agent", ""),
            **fields,
        )

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    def home() -> HTMLResponse:
        return links.page("home.html")

    @app.api_route("/static/{name}", methods=["GET", "HEAD"])
    def static(name: str) -> Response:
        for folder in (
            settings.site_dir / "templates" / "static",
            defaults_dir() / "templates" / "static",
        ):
            path = folder / name
            if "/" not in name and not name.startswith(".") and path.is_file():
                return FileResponse(
                    path,
                    headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
                )
        return Response(status_code=404)

    # --- votes ---------------------------------------------------------------------------

    def vote_target(token: str) -> tuple[int, int, int]:
        survey_id, member_id, option = links.signer.check(token, Kind.VOTE)
        return survey_id, member_id, option

    @app.api_route("/v/{token}", methods=["GET", "HEAD"], response_model=None)
    def vote_page(token: str, request: Request) -> Response:
        try:
            survey_id, member_id, option = vote_target(token)
        except TokenError as exc:
            return links.bad_link(exc)
        with links.sessions.begin() as session:
            survey, member = session.get(Survey, survey_id), session.get(Member, member_id)
            if survey is None or member is None:
                return links.bad_link(
                    TokenError("the link names a survey or member that does not exist")
                )
            if survey.status != "open":  # a closed survey's links record nothing at all
                return closed_page(session, survey_id)
            hit(session, request, "vote", member_id, survey_id=survey_id, option=option)
            if request.method == "HEAD":
                return Response(headers=security_headers())
            votes.settle(session, links.clock(), links.rule)
            before = votes.member_vote(session, survey_id, member_id)
            counted = before.option if before else None
            votes.click(session, survey_id, member_id, option, links.clock())
            return vote_view(session, token, survey_id, member_id, counted, option)

    def vote_view(
        session: Session,
        token: str,
        survey_id: int,
        member_id: int,
        counted: int | None,
        chosen: int,
    ) -> HTMLResponse:
        results = votes.results(session, survey_id, extra=(member_id, counted, chosen))
        label = next(o.label for o in results.options if o.position == chosen)
        return links.page(
            "vote.html", results=results, chosen=chosen, chosen_label=label, token=token
        )

    def closed_page(session: Session, survey_id: int) -> HTMLResponse:
        results = votes.results(session, survey_id)
        return links.page("results.html", results=results, closed=True)

    @app.post("/v/{token}", response_model=None)
    async def vote_change(token: str, request: Request) -> Response:
        try:
            survey_id, member_id, _ = vote_target(token)
        except TokenError as exc:
            return links.bad_link(exc)
        form = await request.form()
        try:
            option = int(str(form.get("option", "")))
        except ValueError:
            return links.message(
                "Choose an option", "The form did not say which option you chose.", 400
            )
        person = form.get("person") == "1"
        with links.sessions.begin() as session:
            survey = session.get(Survey, survey_id)
            if survey is None or session.get(Member, member_id) is None:
                return links.bad_link(
                    TokenError("the link names a survey or member that does not exist")
                )
            if survey.status != "open":
                return closed_page(session, survey_id)
            if option not in {o.position for o in votes.results(session, survey_id).options}:
                return links.message(
                    "Choose an option", f"There is no option {option} in this survey.", 400
                )
            hit(session, request, "vote", member_id, survey_id=survey_id, option=option)
            before = votes.member_vote(session, survey_id, member_id)
            counted = before.option if before else None
            votes.click(session, survey_id, member_id, option, links.clock(), person=person)
            return vote_view(session, token, survey_id, member_id, counted, option)

    @app.post("/v/{token}/person")
    def vote_person(token: str, request: Request) -> Response:
        """The vote page's script reports a trusted pointer, key or touch event."""
        try:
            survey_id, member_id, option = vote_target(token)
        except TokenError:
            return Response(status_code=400)
        with links.sessions.begin() as session:
            survey = session.get(Survey, survey_id)
            if survey is None or survey.status != "open" or session.get(Member, member_id) is None:
                return Response(status_code=404)
            hit(session, request, "person", member_id, survey_id=survey_id, option=option)
            votes.confirm_person(session, survey_id, member_id, links.clock())
        return Response(status_code=204)

    @app.api_route("/survey/{survey_id}", methods=["GET", "HEAD"])
    def survey_results(survey_id: int) -> HTMLResponse:
        with links.sessions.begin() as session:
            if session.get(Survey, survey_id) is None:
                return links.message("No such survey", f"There is no survey #{survey_id}.", 404)
            votes.settle(session, links.clock(), links.rule)
            results = votes.results(session, survey_id)
        return links.page("results.html", results=results, closed=results.status != "open")

    # --- the hidden link -----------------------------------------------------------------

    @app.api_route("/t/{token}", methods=["GET", "HEAD"])
    def trap(token: str, request: Request) -> Response:
        try:
            member_id, issue_id = links.signer.check(token, Kind.TRAP)
        except TokenError:
            return Response(status_code=404)
        with links.sessions.begin() as session:
            if session.get(Member, member_id) is not None:
                hit(session, request, "trap", member_id, issue_id=issue_id)
        return HTMLResponse("<!DOCTYPE html><title></title>", headers=security_headers())

    # --- unsubscribe ---------------------------------------------------------------------

    def unsubscribe_target(token: str) -> tuple[int, int]:
        member_id, issue_id = links.signer.check(token, Kind.UNSUBSCRIBE)
        return member_id, issue_id

    @app.api_route("/u/{token}", methods=["GET", "HEAD"], response_model=None)
    def unsubscribe_page(token: str, request: Request) -> Response:
        try:
            member_id, issue_id = unsubscribe_target(token)
        except TokenError as exc:
            return links.bad_link(exc)
        with links.sessions.begin() as session:
            member = session.get(Member, member_id)
            if member is None:
                return links.bad_link(TokenError("the link names a member that does not exist"))
            hit(session, request, "unsubscribe", member_id, issue_id=issue_id)
            if request.method == "HEAD":
                return Response(headers=security_headers())
            return links.page(
                "unsubscribe.html", member=member, token=token, confirm=False, done=""
            )

    @app.post("/u/{token}", response_model=None)
    async def unsubscribe_post(token: str, request: Request) -> Response:
        try:
            member_id, issue_id = unsubscribe_target(token)
        except TokenError as exc:
            return links.bad_link(exc)
        form = await request.form()
        now = links.clock()
        with links.sessions.begin() as session:
            member = session.get(Member, member_id)
            if member is None:
                return links.bad_link(TokenError("the link names a member that does not exist"))
            hit(session, request, "unsubscribe", member_id, issue_id=issue_id)
            if form.get("List-Unsubscribe") == "One-Click":
                # RFC 8058: a mail client's one-click POST; no page, no questions.
                members.unsubscribe(session, member, now)
                return Response(
                    "unsubscribed\n", media_type="text/plain", headers=security_headers()
                )
            action = form.get("action")
            if action == "resubscribe":
                members.resubscribe(session, member, now)
            elif action == "unsubscribe":
                if form.get("confirm") != "1" and machine_nearby(session, member_id, now):
                    return links.page(
                        "unsubscribe.html", member=member, token=token, confirm=True, done=""
                    )
                members.unsubscribe(session, member, now)
            else:
                return links.message("Choose an action", "The form did not say what to do.", 400)
            return links.page(
                "unsubscribe.html", member=member, token=token, confirm=False, done=action
            )

    def machine_nearby(session: Session, member_id: int, now: dt.datetime) -> bool:
        """A HEAD or the hidden link around now: a scanner may be submitting forms."""
        return bool(
            session.scalar(
                select(func.count())
                .select_from(LinkHit)
                .where(
                    LinkHit.member_id == member_id,
                    LinkHit.at >= now - links.rule.window,
                    (LinkHit.method == "HEAD") | (LinkHit.kind == "trap"),
                )
            )
        )

    # --- subscribe (double opt-in) -------------------------------------------------------

    @app.api_route("/subscribe", methods=["GET", "HEAD"])
    def subscribe_form() -> HTMLResponse:
        return links.page("subscribe.html", error="", email="", name="")

    @app.post("/subscribe")
    async def subscribe(request: Request) -> HTMLResponse:
        form = await request.form()
        raw_email, raw_name = str(form.get("email", "")), str(form.get("name", ""))
        if form.get("website"):  # a field people never see: only bots fill it in
            return links.page("subscribed.html")
        try:
            email = members.normalize_address(raw_email)
            name = members.clean_name(raw_name)
        except ValueError as exc:
            return links.page("subscribe.html", 400, error=str(exc), email=raw_email, name=raw_name)
        ip, now = client_ip(request), links.clock()
        with links.sessions.begin() as session:
            recent_ip = session.scalar(
                select(func.count())
                .select_from(SignupRequest)
                .where(SignupRequest.ip == ip, SignupRequest.at >= now - dt.timedelta(hours=1))
            )
            if (recent_ip or 0) >= SIGNUPS_PER_IP_HOUR:
                return links.message(
                    "Too many sign-ups",
                    "Too many sign-ups from your network; try again in an hour.",
                    429,
                )
            mailed = session.execute(
                select(func.count(), func.max(SignupRequest.at)).where(
                    SignupRequest.email == email,
                    SignupRequest.mailed == 1,
                    SignupRequest.at >= now - dt.timedelta(days=1),
                )
            ).one()
            member = session.scalar(select(Member).where(Member.email == email))
            if member is None:
                member = Member(
                    email=email, name=name, status=PENDING, attributes={"source": "web"}
                )
                session.add(member)
                session.flush()
            wants_mail = member.status in (PENDING, UNSUBSCRIBED)
            too_soon = mailed[1] is not None and now - mailed[1] < dt.timedelta(hours=1)
            send = wants_mail and not too_soon and mailed[0] < MAILS_PER_ADDRESS_DAY
            session.add(SignupRequest(email=email, ip=ip, at=now, mailed=int(send)))
            member_id = member.id
        if send:
            await send_confirmation(links, member_id, email, name)
        # The same answer whatever the address's state: the page reveals no membership.
        return links.page("subscribed.html")

    @app.api_route("/c/{token}", methods=["GET", "HEAD"], response_model=None)
    def confirm_page(token: str, request: Request) -> Response:
        try:
            (member_id,) = links.signer.check(token, Kind.CONFIRM, max_age_days=CONFIRM_DAYS)
        except (TokenError, ValueError) as exc:
            return links.bad_link(TokenError(str(exc)))
        if request.method == "HEAD":
            return Response(headers=security_headers())
        with links.sessions() as session:
            member = session.get(Member, member_id)
            if member is None:
                return links.bad_link(TokenError("the link names a member that does not exist"))
            return links.page("confirm.html", member=member, token=token, done=False)

    @app.post("/c/{token}", response_model=None)
    def confirm_post(token: str) -> Response:
        try:
            (member_id,) = links.signer.check(token, Kind.CONFIRM, max_age_days=CONFIRM_DAYS)
        except (TokenError, ValueError) as exc:
            return links.bad_link(TokenError(str(exc)))
        with links.sessions.begin() as session:
            member = session.get(Member, member_id)
            if member is None or member.status == BOUNCED:
                return links.bad_link(TokenError("this address cannot be subscribed"))
            members.confirm(session, member, links.clock())
            return links.page("confirm.html", member=member, token=token, done=True)

    # --- archive and search --------------------------------------------------------------

    @app.api_route("/archive", methods=["GET", "HEAD"])
    def archive() -> HTMLResponse:
        with links.sessions() as session:
            issues = session.scalars(
                select(Issue).where(Issue.status.in_((SENT, SENDING))).order_by(Issue.id.desc())
            ).all()
        return links.page("archive.html", issues=issues)

    @app.api_route("/archive/{issue_id}", methods=["GET", "HEAD"])
    def archived_issue(issue_id: int, request: Request, t: str = "") -> HTMLResponse:
        with links.sessions.begin() as session:
            issue = session.get(Issue, issue_id)
            if issue is None or issue.status not in (SENT, SENDING):
                return links.message(
                    "No such issue", f"There is no issue #{issue_id} in the archive.", 404
                )
            member = None
            if t:
                try:
                    token_issue, member_id = links.signer.check(t, Kind.VIEW)
                    member = session.get(Member, member_id) if token_issue == issue_id else None
                except TokenError:
                    member = None
            if member is not None:
                hit(session, request, "view", member.id, issue_id=issue_id)
            html = archive_html(issue, member)
        return HTMLResponse(html, headers=security_headers(CSP_ISSUE))

    def archive_html(issue: Issue, member: Member | None) -> str:
        compiled = from_row(issue)
        if member is not None and member.status == ACTIVE:
            personalizer = Personalizer(compiled, settings, links.signer, issue.id)
            values = personalizer.values(Recipient(member.id, member.email, member.name))
            values["name"] = values["name_html"]
        else:
            values = {
                "name": "reader",
                "unsubscribe": f"{links.base}/subscribe",
                "to": "",
                "date": "",
                "msgid": "",
            }
            for pos in compiled.vote_positions:
                values[f"vote{pos}"] = f"{links.base}/survey/{compiled.survey_id}"
        values["view"] = f"{links.base}/archive/{issue.id}"
        values["trap"] = "#"
        return compiled.slot_pattern.sub(lambda m: values.get(m.group(1), ""), compiled.html)

    @app.api_route("/search", methods=["GET", "HEAD"])
    def search_page(q: str = "") -> HTMLResponse:
        hits: list[search.Hit] = []
        if q.strip():
            with links.sessions() as session:
                hits = search.search(session, q[:200])
        return links.page("search.html", q=q, hits=hits)

    return app


async def send_confirmation(links: Links, member_id: int, email: str, name: str) -> None:
    """The double opt-in message, through the same relays as the newsletter."""
    settings = links.settings
    token = links.signer.make(Kind.CONFIRM, member_id)
    context = {"list_name": settings.list.name, "name": name, "link": f"{links.base}/c/{token}"}
    msg = EmailMessage()
    msg["From"] = f"{settings.list.name} <{settings.list.from_address}>"
    msg["To"] = email
    msg["Subject"] = f"Confirm your subscription to {settings.list.name}"
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(links.env.get_template("email/confirm.txt").render(context))
    msg.add_alternative(
        links.env.get_template("email/confirm.html").render(context), subtype="html"
    )
    client, _, _ = await Relays(settings.smtp).connect()
    try:
        await client.sendmail(
            settings.list.return_path or settings.list.from_address,
            [email],
            bytes(msg),
            mail_options=[],
        )
    finally:
        client.close()


__all__ = ["create_app"]
