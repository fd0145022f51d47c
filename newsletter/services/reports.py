"""An issue's report: what went out, what came back, which links people clicked, how they voted."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from newsletter.content.results import Results
from newsletter.services import clicks, issues, votes
from newsletter.services.clicks import LinkCount
from newsletter.services.unit import Unit
from newsletter.storage import audit as audit_rows
from newsletter.storage import bounces as bounce_rows
from newsletter.storage.models import BounceKind, DeliveryStatus


@dataclass(frozen=True, slots=True)
class IssueReport:
    issue: issues.IssueInfo
    delivered: int  # messages a relay took
    refused: int  # refused at once by the relay (5xx)
    bounced: int  # members whose message came back as a hard or soft bounce
    warnings: int  # members with only a delay warning
    complaints: int  # members who marked it as spam (unsubscribed at once)
    unsubscribes: int  # members who left through this issue's links (complaints included)
    links: tuple[LinkCount, ...]  # people's and scanners' clicks per link
    pending_clicks: int  # clicks not decided yet (within their window)
    results: Results | None  # the survey the issue carried, its counted votes

    @property
    def people(self) -> int:
        return sum(link.people for link in self.links)

    @property
    def scanners(self) -> int:
        return sum(link.scanners for link in self.links)

    @property
    def most_clicked(self) -> int:
        return max((link.people for link in self.links), default=0)


def report(unit: Unit, issue_id: int) -> IssueReport:
    """The report as it stands (clicks still within their window are not counted yet)."""
    info = issues.info(unit, issue_id)
    kinds = bounce_rows.by_issue(unit.session, issue_id)
    links, pending = clicks.link_counts(unit, issue_id)
    survey_id = issues.survey_of(unit, issue_id)
    return IssueReport(
        issue=info,
        delivered=info.counts.get(DeliveryStatus.SENT, 0),
        refused=info.counts.get(DeliveryStatus.BOUNCED, 0),
        bounced=kinds.get(BounceKind.HARD, 0) + kinds.get(BounceKind.SOFT, 0),
        warnings=kinds.get(BounceKind.WARNING, 0),
        complaints=kinds.get(BounceKind.COMPLAINT, 0),
        unsubscribes=audit_rows.count(unit.session, issue_id=issue_id, action="unsubscribe"),
        links=tuple(links),
        pending_clicks=pending,
        results=None if survey_id is None else votes.results(unit, survey_id),
    )


def settled_report(unit: Unit, issue_id: int) -> IssueReport:
    """Decide the clicks and votes that are due, then the report (run with Services.run)."""
    clicks.settle_all(unit)
    votes.settle_all(unit)
    unit.session.flush()
    return report(unit, issue_id)


def as_csv(found: IssueReport) -> str:
    """The report as CSV: one row a figure, then one row a link, then one row a survey option."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["section", "name", "value", "scanners"])
    i = found.issue
    for name, value in (
        ("issue", i.id),
        ("subject", i.subject),
        ("status", str(i.status)),
        ("delivered", found.delivered),
        ("refused", found.refused),
        ("bounced", found.bounced),
        ("warnings", found.warnings),
        ("complaints", found.complaints),
        ("unsubscribes", found.unsubscribes),
        ("clicks by people", found.people),
        ("clicks by scanners", found.scanners),
        ("clicks not decided yet", found.pending_clicks),
    ):
        w.writerow(["issue", name, _cell(str(value)), ""])
    for link in found.links:
        w.writerow(["link", _cell(link.url), link.people, link.scanners])
    if found.results is not None:
        for option in found.results.options:
            w.writerow(["vote", _cell(option.label), option.votes, ""])
    return out.getvalue()


def _cell(text: str) -> str:
    # A spreadsheet runs a cell that starts with = + - @ as a formula: keep it text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
