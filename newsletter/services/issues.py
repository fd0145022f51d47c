"""Issue use-cases: compile and release the next issue, pause, resume, cancel, retry, preview, test.

Releasing stores the compiled issue, claims its items and snapshots its audience in one
transaction with its audit entry; the delivery engine then works through the rows
(newsletter/services/sending.py runs it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from newsletter.content import compiler
from newsletter.content.addresses import normalize_address
from newsletter.content.compiler import Compiled
from newsletter.content.personalize import Personalizer
from newsletter.content.results import Results
from newsletter.delivery.reasons import Reason, reason
from newsletter.errors import NewsletterError, NothingToSend
from newsletter.services import board, drafts, mail, surveys, variants, votes
from newsletter.services.unit import (
    Actor,
    Permission,
    Services,
    Unit,
    as_actor,
    check,
    requires,
    use_case,
)
from newsletter.storage import drafts as draft_rows
from newsletter.storage import issues as rows
from newsletter.storage import items as item_rows
from newsletter.storage import ledger, search
from newsletter.storage import members as member_rows
from newsletter.storage import variants as variant_rows
from newsletter.storage.ledger import Recipient, new_owner
from newsletter.storage.models import (
    UNFINISHED,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Item,
    MemberStatus,
)


class NotFound(NewsletterError, LookupError):
    """The issue, survey or member asked for does not exist."""


class Conflict(NewsletterError):
    """The action does not fit the issue's state (e.g. cancelling a sent issue)."""


@dataclass(frozen=True, slots=True)
class IssueInfo:
    """An issue and where its send stands."""

    id: int
    subject: str
    status: IssueStatus
    created_at: dt.datetime
    sent_at: dt.datetime | None
    pause_reason: str
    counts: dict[str, int]  # delivery rows by status
    total: int
    done: int  # rows with a final outcome (sent, bounced, failed, skipped, cancelled)
    percent: float  # done / total, 0–100

    @property
    def sent(self) -> int:
        return self.counts.get(DeliveryStatus.SENT, 0)

    @property
    def summary(self) -> str:
        """One line for people: status and how many messages went out."""
        text = f"issue #{self.id} is {self.status}: {self.sent} of {self.total} sent"
        if self.status == IssueStatus.CANCELLED:
            text += f", {self.counts.get(DeliveryStatus.CANCELLED, 0)} not sent (cancelled)"
        return text


def _info(unit: Unit, row: Issue) -> IssueInfo:
    counts = {str(k): v for k, v in rows.delivery_counts(unit.session, row.id).items()}
    total = sum(counts.values())
    done = total - sum(counts.get(s, 0) for s in UNFINISHED)
    if total:
        percent = round(100.0 * done / total, 1)
    else:
        percent = 100.0 if row.status in (IssueStatus.SENT, IssueStatus.CANCELLED) else 0.0
    return IssueInfo(
        id=row.id,
        subject=row.subject,
        status=row.status,
        created_at=row.created_at,
        sent_at=row.sent_at,
        pause_reason=row.pause_reason,
        counts=counts,
        total=total,
        done=done,
        percent=percent,
    )


def _row(unit: Unit, issue_id: int) -> Issue:
    row = rows.get(unit.session, issue_id)
    if row is None:
        raise NotFound(f"there is no issue #{issue_id}")
    return row


def info(unit: Unit, issue_id: int) -> IssueInfo:
    """One issue's progress; NotFound when there is no such issue."""
    return _info(unit, _row(unit, issue_id))


def newest(unit: Unit, limit: int = 100) -> list[IssueInfo]:
    """The newest issues first, each with its delivery counts and progress."""
    return [_info(unit, row) for row in rows.newest(unit.session, max(1, min(limit, 1000)))]


def sending(unit: Unit) -> list[int]:
    """The issues whose send is not over, oldest first."""
    return [row.id for row in rows.sending(unit.session)]


def has_work(unit: Unit) -> bool:
    """Whether a send would do anything: an unfinished issue or new items."""
    return bool(rows.sending(unit.session)) or item_rows.count_new_items(unit.session) > 0


@dataclass(frozen=True, slots=True)
class Failure:
    status: str  # failed, bounced or deferred
    code: int | None
    text: str
    count: int


def survey_of(unit: Unit, issue_id: int) -> int | None:
    """The survey the issue carried, if any."""
    return _row(unit, issue_id).survey_id


def failures(unit: Unit, issue_id: int) -> list[Failure]:
    """The issue's deliveries that did not go out as they should, grouped by SMTP reply."""
    _row(unit, issue_id)
    return [Failure(*f) for f in rows.failures(unit.session, issue_id)]


@dataclass(frozen=True, slots=True)
class Waiting:
    """Deliveries of an issue still to go out, for one reason."""

    reason: Reason
    count: int
    next_from: dt.datetime | None  # the earliest of their next attempts (deferred rows)
    next_until: dt.datetime | None  # the latest


def waiting(unit: Unit, issue_id: int) -> list[Waiting]:
    """The issue's deliveries still to go out, grouped by why (what their last attempt left
    in the ledger: the relay unreachable, refusing or rate-limiting, or not tried yet), the
    largest group first."""
    _row(unit, issue_id)
    groups: dict[Reason, list[Any]] = {}
    for status, code, text, count, lo, hi in rows.waiting(unit.session, issue_id):
        why = reason(code, text, status)
        group = groups.setdefault(why, [0, None, None])
        group[0] += count
        group[1] = min((t for t in (group[1], lo) if t is not None), default=None)
        group[2] = max((t for t in (group[2], hi) if t is not None), default=None)
    found = [Waiting(r, n, lo, hi) for r, (n, lo, hi) in groups.items()]
    return sorted(found, key=lambda w: -w.count)


def item_titles(unit: Unit, issue_id: int) -> list[tuple[str, str]]:
    """(section, title) of each item an issue carried, in its order."""
    return [(i.section, i.title) for i in item_rows.issue_items(unit.session, issue_id)]


# --- compiling --------------------------------------------------------------------------------


def previous_results(unit: Unit) -> Results | None:
    """The results of the survey the last issue carried, for the next issue's chart."""
    survey_id = rows.last_survey_id(unit.session)
    if survey_id is None:
        return None
    votes.settle_all(unit)
    return votes.results(unit, survey_id)


def _order(item: Item) -> tuple[bool, int, float, int]:
    # Items an editor ordered first, in that order; the rest newest first.
    when = (item.published_at or item.created_at).timestamp()
    return (item.position is None, item.position or 0, -when, -item.id)


def gather(unit: Unit, *, with_survey: bool = True) -> tuple[list[compiler.ItemView], Any]:
    """The next issue's content: new items (not held) and its survey (the draft's choice)."""
    settings = unit.settings
    # The oldest waiting items go first into an issue; the issue shows them as ordered.
    picked = sorted(item_rows.new_items(unit.session, settings.issue.max_items), key=_order)
    # The draft says "default" (config.toml's survey while it is open, else the open survey
    # opened last), "none", or a survey's number.
    choice = draft_rows.get(unit.session).survey
    survey = surveys.for_issue(unit, choice) if with_survey else None
    return compiler.item_views(picked), survey


def compile_next(unit: Unit, *, with_survey: bool = True) -> Compiled:
    """Compile the next issue from the new items; NothingToSend when there are none."""
    items, survey = gather(unit, with_survey=with_survey)
    if not items:
        raise NothingToSend("no new items since the last issue: nothing to send")
    return compiler.compile_issue(
        unit.settings,
        unit.services.env,
        items,
        survey,
        previous=previous_results(unit),
        now=unit.now,
        shape=drafts.shape(unit),
        board=board.for_issue(unit),
    )


@dataclass(frozen=True, slots=True)
class Released:
    issue_id: int
    subject: str
    queued: int


@use_case
@requires(Permission.SEND)
def release_next(
    unit: Unit,
    *,
    schedule: str | None = None,
    slot_at: dt.datetime | None = None,
    with_survey: bool = True,
) -> Released:
    """Compile the next issue and release it: store it, claim its items, snapshot its audience.

    A scheduled issue records its schedule and slot; the database keeps that pair unique, so
    a second process releasing the same slot fails (IntegrityError) and stores nothing.
    NothingToSend when there are no new items.
    """
    settings = unit.settings
    settings.require_secret()  # fail before anything is stored, not halfway through
    scheduled = draft_rows.get(unit.session).send_at
    if scheduled is not None and scheduled > unit.now:
        raise NothingToSend(
            f"the next issue is scheduled for {scheduled:%Y-%m-%d %H:%M} UTC; "
            "cancel the schedule to send it now"
        )
    if not member_rows.counts(unit.session).get(MemberStatus.ACTIVE):
        # An issue nobody receives would take the items and never reach the archive.
        raise NothingToSend("no active members: nothing to send (the items stay new)")
    items, survey = gather(unit, with_survey=with_survey)
    if not items:
        raise NothingToSend("no new items since the last issue: nothing to send")
    plan = variants.compile_all(
        unit,
        items,
        survey,
        previous=previous_results(unit),
        shape=drafts.shape(unit),
        board=board.for_issue(unit),
    )
    compiled = plan.own
    issue = rows.add(
        unit.session,
        Issue(
            subject=compiled.subject,
            html=compiled.html,
            text=compiled.text,
            nonce=compiled.nonce,
            links=list(compiled.links),
            survey_id=compiled.survey_id,
            created_at=compiled.created,
            schedule=schedule,
            slot_at=slot_at,
            retry_until=compiled.created
            + dt.timedelta(hours=settings.delivery.retry_deadline_hours),
        ),
    )
    item_rows.claim_for_issue(unit.session, issue.id, compiled.item_ids)
    queued = rows.snapshot_audience(
        unit.session, issue.id, compiled.created, variants.store(unit, issue.id, plan), plan.idle
    )
    draft_rows.clear(unit.session, unit.now, unit.actor)  # what it said went out with it
    where = f"schedule {schedule}, slot {slot_at:%Y-%m-%d %H:%M} UTC" if slot_at else "send"
    unit.audit(
        "release",
        issue_id=issue.id,
        detail=f"{where}: {len(compiled.item_ids)} items, {plan.compiles} variants, "
        f"{queued} members: {compiled.subject}",
    )
    unit.after_commit(lambda: unit.services.changed("issues"))
    return Released(issue.id, compiled.subject, queued)


@use_case
@requires(Permission.SEND)
def release_scheduled(unit: Unit) -> Released | None:
    """Release the next issue if its scheduled send is due (`serve` asks every few seconds).
    Of several processes asking at once, one releases it; None for the others, and when
    nothing is due. A due send with nothing to send is dropped, and says so in the audit log."""
    if not draft_rows.claim_due(unit.session, unit.now):
        return None
    try:
        return release_next(unit)
    except NothingToSend as exc:
        unit.audit("scheduled-send", detail=f"nothing sent: {exc}")
        return None


# --- editors' actions on a running or finished issue -------------------------------------------


@use_case
@requires(Permission.SEND)
def pause(unit: Unit, issue_id: int, *, reason: str = "") -> IssueInfo:
    """Pause a sending issue: every worker stops within moments and keeps its place."""
    row = _row(unit, issue_id)
    if row.status != IssueStatus.SENDING:
        raise Conflict(f"issue #{issue_id} is {row.status}, not sending: nothing to pause")
    row.status, row.pause_reason = IssueStatus.PAUSED, reason or f"paused by {unit.actor}"
    unit.session.flush()
    result = _info(unit, row)
    unit.audit("pause", issue_id=issue_id, detail=result.summary)
    return result


@use_case
@requires(Permission.SEND)
def resume(unit: Unit, issue_id: int) -> IssueInfo:
    """Mark a paused issue sending again. The caller starts delivering it (sending.deliver)."""
    row = _row(unit, issue_id)
    if row.status != IssueStatus.PAUSED:
        raise Conflict(f"issue #{issue_id} is {row.status}, not paused: nothing to resume")
    row.status, row.pause_reason = IssueStatus.SENDING, ""
    unit.session.flush()
    result = _info(unit, row)
    unit.audit("resume", issue_id=issue_id, detail=result.summary)
    return result


@use_case
@requires(Permission.SEND)
def cancel(unit: Unit, issue_id: int) -> IssueInfo:
    """Stop an issue for good: no more messages go out; the result says how many were sent."""
    row = _row(unit, issue_id)
    if row.status in (IssueStatus.SENT, IssueStatus.CANCELLED):
        raise Conflict(f"issue #{issue_id} is already {row.status}: nothing to cancel")
    ledger.cancel(unit.session, issue_id, new_owner(), unit.now)
    unit.session.expire(row)
    result = _info(unit, _row(unit, issue_id))
    unit.audit("cancel", issue_id=issue_id, detail=result.summary)
    return result


@use_case
@requires(Permission.SEND)
def requeue_failed(unit: Unit, issue_id: int) -> int:
    """Queue an issue's failed deliveries again, with a new retry deadline; how many."""
    row = _row(unit, issue_id)
    if row.status not in (IssueStatus.SENT, IssueStatus.SENDING):
        raise Conflict(
            f"issue #{issue_id} is {row.status}: only a sent or sending issue is retried"
        )
    count = ledger.requeue_failed(unit.session, issue_id)
    if not count:
        raise NewsletterError(f"issue #{issue_id} has no failed deliveries to retry")
    unit.session.expire(row)
    row = _row(unit, issue_id)
    row.retry_until = unit.now + dt.timedelta(hours=unit.settings.delivery.retry_deadline_hours)
    unit.audit("retry", issue_id=issue_id, detail=f"{count} failed deliveries queued again")
    return count


# --- previews and tests -----------------------------------------------------------------------


def _compiled(unit: Unit, issue_id: int | None) -> tuple[Compiled, int]:
    """The next issue compiled (the caller stores nothing of it), or stored issue N as stored."""
    if issue_id is None:
        return compile_next(unit), 0
    return compiler.from_row(_row(unit, issue_id)), issue_id


def preview_html(unit: Unit, issue_id: int | None = None) -> str:
    """The next issue's (or issue N's) HTML as a sample reader sees it; links are inert.
    Run it with Services.read: compiling may create the survey row, which is not kept."""
    compiled, number = _compiled(unit, issue_id)
    sample = Recipient(member_id=0, email="reader@example.org", name="")
    return Personalizer(compiled, unit.settings, None, number).fill_text(
        compiled.html, sample, html_part=True
    )


def next_compiled(unit: Unit) -> Compiled:
    """The next issue compiled, for files and previews (run with Services.read)."""
    return compile_next(unit)


def send_test(services: Services, actor: str | Actor, to: str, issue_id: int | None = None) -> int:
    """Queue ONE copy of the next issue (or of stored issue N) to `to`, subject "[TEST] …".

    The issue is compiled in a session that is rolled back (a compile may settle votes and
    create the configured survey), then the copy is queued by its own use-case, audited.
    Nothing counts as the issue's send: no issue, no delivery row, no item claimed. The mailer
    sends it through the configured relays, DKIM-signed when [dkim] is set. ValueError for a
    bad address, NothingToSend when there is no next issue. Returns the queued message's id.
    """
    check(as_actor(actor), mail.queue_test_copy)  # before the compile it would waste
    address = normalize_address(to)
    compiled, number = services.read(_compiled, issue_id)
    return services.run(actor, mail.queue_test_copy, compiled, number, address)


# --- the public archive -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArchiveEntry:
    id: int
    subject: str
    created_at: dt.datetime


def archive_list(unit: Unit) -> list[ArchiveEntry]:
    """Issues that have gone out (at least one message delivered), newest first."""
    return [ArchiveEntry(r.id, r.subject, r.created_at) for r in rows.archived(unit.session)]


@dataclass(frozen=True, slots=True)
class FeedEntry:
    id: int
    subject: str
    published: dt.datetime
    items: tuple[tuple[str, str], ...]  # (title, link) of each item, in the issue's order


def feed_entries(unit: Unit, limit: int = 20) -> list[FeedEntry]:
    """The newest issues that have gone out, with their items: the archive's Atom feed."""
    return [
        FeedEntry(
            r.id,
            r.subject,
            r.created_at,
            tuple((i.title, i.url) for i in item_rows.issue_items(unit.session, r.id)),
        )
        for r in rows.archived(unit.session, limit)
    ]


def archived(unit: Unit, issue_id: int, variant_id: int | None = None) -> Compiled | None:
    """A gone-out issue's stored form (its own full copy, or one variant of it), or None: an
    issue nobody has received is not public."""
    if not rows.is_archived(unit.session, issue_id):
        return None
    row = rows.get(unit.session, issue_id)
    if row is None:
        return None
    own = compiler.from_row(row)
    variant = variant_rows.get(unit.session, variant_id) if variant_id else None
    if variant is None or variant.issue_id != issue_id:
        return own
    return dataclasses.replace(own, subject=variant.subject, html=variant.html, text=variant.text)


def variant_of(unit: Unit, issue_id: int, member_id: int) -> int | None:
    """The variant of an issue a member was sent (None: the issue's own copy)."""
    return variant_rows.of_delivery(unit.session, issue_id, member_id)


def search_archive(unit: Unit, q: str, limit: int = 20) -> list[search.Hit]:
    """Items of gone-out issues matching every word of `q`, best first."""
    return search.search(unit.session, q[:200], limit=limit)


@dataclass(frozen=True, slots=True)
class Slot:
    """A schedule's slot as the database has it: its issue (if made) and the new items."""

    issue_id: int | None
    status: IssueStatus | None
    new_items: int


def slot(unit: Unit, schedule: str, slot_at: dt.datetime) -> Slot:
    row = rows.slot_issue(unit.session, schedule, slot_at)
    return Slot(
        row.id if row else None,
        row.status if row else None,
        item_rows.count_new_items(unit.session),
    )


def stored(unit: Unit, issue_id: int) -> Compiled:
    """Issue N as it was stored when released (previews of past issues are never recompiled)."""
    return compiler.from_row(_row(unit, issue_id))


def new_item_count(unit: Unit) -> int:
    """Items the next issue could carry (new, not held)."""
    return item_rows.count_new_items(unit.session)
