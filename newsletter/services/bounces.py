"""What comes back, acted on: bounces scored as Mailman scores them, complaints unsubscribe at once.

A report (delivery/dsn.py read it, or a provider's webhook) is applied to the member its
signed VERP address names, or the signed Message-ID of the returned message when the VERP
address did not survive; a provider's authenticated webhook may also name the member by
address. Anything else is logged and ignored: a forged bounce suppresses no one.

Scoring: a hard bounce adds 1, a soft one 0.5, at most once a day; a score older than
`bounces.quiet_days` lapses to 0 before a new bounce is added; at `bounces.threshold` the
member is suppressed (status bounced) with the reason kept. A warning (a delayed DSN)
and an auto-reply add nothing. A complaint unsubscribes the member at once, reason
"complaint". The same report delivered twice (same digest) counts once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import TypeVar

from newsletter.content.addresses import normalize_address
from newsletter.content.verp import Verp, VerpMatch
from newsletter.delivery import dsn
from newsletter.delivery.dsn import Finding, Returned, Verdict
from newsletter.errors import NewsletterError
from newsletter.services.unit import Services, Unit, use_case
from newsletter.storage import bounces as rows
from newsletter.storage import members as member_rows
from newsletter.storage.models import BounceEvent, BounceKind, Member, MemberStatus

log = logging.getLogger(__name__)

T = TypeVar("T")

SCORES = {BounceKind.HARD: 1.0, BounceKind.SOFT: 0.5}
# The worst first: the one finding of a report that is scored when it names one member twice.
SEVERITY = [BounceKind.COMPLAINT, BounceKind.HARD, BounceKind.SOFT, BounceKind.WARNING]


@dataclass(frozen=True, slots=True)
class Applied:
    """What one report came to."""

    outcome: str  # applied, duplicate, ignored, autoreply, unknown
    note: str
    member_id: int | None = None
    issue_id: int | None = None
    kinds: tuple[BounceKind, ...] = ()
    suppressed: bool = False  # the member was suppressed or unsubscribed by it
    score: float = 0.0

    @property
    def understood(self) -> bool:
        """Whether the message was read (an IMAP fetch moves these and leaves the rest)."""
        return self.outcome != "unknown"


@dataclass(slots=True)
class _Target:
    member: Member
    issue_id: int | None
    findings: list[Finding] = field(default_factory=list)


def verp(unit: Unit) -> Verp:
    lst = unit.settings.list
    return Verp(lst.return_path or lst.from_address, unit.services.signer)


@use_case
def apply(unit: Unit, returned: Returned, *, source: str, trusted: bool = False) -> Applied:
    """Apply one report. `trusted` (an authenticated provider webhook) lets a finding's
    recipient name the member when no signed address or Message-ID does."""
    if returned.verdict is Verdict.UNKNOWN:
        log.info("bounce intake (%s): not understood: %s", source, returned.subject)
        return Applied("unknown", returned.note or "not understood")
    if returned.verdict is Verdict.AUTOREPLY:
        log.info("bounce intake (%s): auto-reply, ignored (%s)", source, returned.note)
        return Applied("autoreply", f"an automatic reply ({returned.note}): counts nothing")
    if not returned.findings:
        return Applied("ignored", f"{returned.note}: nothing to apply")
    targets, why = _targets(unit, returned, trusted=trusted)
    if not targets:
        log.warning("bounce intake (%s): ignored: %s (%s)", source, why, returned.note)
        return Applied("ignored", why)
    results = [_apply_target(unit, returned, target, source) for target in targets]
    return results[0] if len(results) == 1 else _merge(results)


def _targets(unit: Unit, returned: Returned, *, trusted: bool) -> tuple[list[_Target], str]:
    """The members a report is about, each with its findings; or why it names no one."""
    signed = verp(unit)
    match, why = _signed_match(signed, returned)
    if match is not None:
        member = member_rows.get(unit.session, match.member_id)
        if member is None:
            return [], f"member #{match.member_id} no longer exists"
        return [_Target(member, match.issue_id, list(returned.findings))], ""
    if not trusted:
        return [], why
    # An authenticated provider names the recipients by address.
    targets: dict[int, _Target] = {}
    for finding in returned.findings:
        try:
            address = normalize_address(finding.recipient)
        except NewsletterError:
            continue
        member = member_rows.by_email(unit.session, address)
        if member is None:
            continue
        target = targets.setdefault(member.id, _Target(member, _issue_of(returned, member.id)))
        target.findings.append(finding)
    if not targets:
        return [], "the provider's report names no member"
    return list(targets.values()), ""


def _signed_match(signed: Verp, returned: Returned) -> tuple[VerpMatch | None, str]:
    refusals = []
    for address in returned.addresses:
        found = signed.read(address)
        if isinstance(found, VerpMatch):
            return found, ""
        if not found.startswith("not "):  # a VERP address of ours, forged or unsigned
            refusals.append(f"{address[:100]}: {found}")
    for message_id in returned.message_ids:
        by_id = signed.message_id(message_id)
        if by_id is not None:
            return by_id, ""
    if refusals:
        return None, "; ".join(refusals[:3])
    return None, "no signed VERP address or Message-ID of this site names a member"


_ISSUE_ID = re.compile(r"<([1-9][0-9]{0,17})\.([1-9][0-9]{0,17})\.")


def _issue_of(returned: Returned, member_id: int) -> int | None:
    """The issue a provider's report is about, from the message's own Message-ID."""
    for message_id in returned.message_ids:
        found = _ISSUE_ID.match(message_id)
        if found and int(found.group(2)) == member_id:
            return int(found.group(1))
    return None


def _apply_target(unit: Unit, returned: Returned, target: _Target, source: str) -> Applied:
    member = target.member
    findings = sorted(target.findings, key=lambda f: SEVERITY.index(f.kind))
    digests = [_digest(returned, member.id, f, i) for i, f in enumerate(findings)]
    already = rows.seen(unit.session, digests)
    fresh = [(f, d) for f, d in zip(findings, digests, strict=True) if d not in already]
    if not fresh:
        return Applied(
            "duplicate",
            "this report was applied already: it counts once",
            member.id,
            target.issue_id,
        )
    scored = False
    suppressed = False
    for finding, digest in fresh:
        score = 0.0
        if finding.kind in SCORES and not scored:
            score = _score(unit, member, finding)
            scored = True
        rows.add(
            unit.session,
            BounceEvent(
                member_id=member.id,
                issue_id=target.issue_id,
                at=unit.now,
                kind=finding.kind,
                status=finding.status[:16],
                diagnostic=finding.diagnostic[:1000],
                source=source[:32],
                score=score,
                digest=digest,
            ),
        )
        if finding.kind is BounceKind.COMPLAINT:
            suppressed = _complaint(unit, member, target.issue_id, finding, source) or suppressed
    kinds = tuple(f.kind for f, _ in fresh)
    detail = (
        ", ".join(f"{f.kind}{' ' + f.status if f.status else ''}" for f, _ in fresh)
        + f" via {source}; score {member.bounce_score:g}"
    )
    unit.audit("bounce", member_id=member.id, issue_id=target.issue_id, detail=detail)
    if scored:
        suppressed = _suppress_at_threshold(unit, member, fresh[0][0]) or suppressed
    return Applied(
        "applied",
        detail,
        member.id,
        target.issue_id,
        kinds,
        suppressed,
        member.bounce_score,
    )


def _score(unit: Unit, member: Member, finding: Finding) -> float:
    """Add a hard or soft bounce to the score, at most once a day; what it added."""
    now = unit.now
    quiet = dt.timedelta(days=unit.settings.bounces.quiet_days)
    if member.bounced_at is not None and now - member.bounced_at > quiet:
        member.bounce_score = 0.0  # the old score lapsed
        member.bounce_day = None
    member.bounced_at = now
    if member.bounce_day == now.date():
        return 0.0
    added = SCORES[finding.kind]
    member.bounce_score = (member.bounce_score or 0.0) + added
    member.bounce_day = now.date()
    return added


def _suppress_at_threshold(unit: Unit, member: Member, finding: Finding) -> bool:
    threshold = unit.settings.bounces.threshold
    if member.bounce_score < threshold or member.status != MemberStatus.ACTIVE:
        return False
    reason = (
        f"bounce score {member.bounce_score:g} reached {threshold:g}; last: "
        f"{finding.kind} {finding.status} {finding.diagnostic}"
    ).strip()
    member.status, member.updated_at = MemberStatus.BOUNCED, unit.now
    member.left_reason = reason[:300]
    skipped = member_rows.skip_unsent(unit.session, member.id, unit.now, "member bounced")
    unit.audit("suppress", member_id=member.id, detail=f"{reason[:1800]}; {skipped} unsent stopped")
    unit.after_commit(lambda: unit.services.changed("members"))
    return True


def _complaint(
    unit: Unit, member: Member, issue_id: int | None, finding: Finding, source: str
) -> bool:
    """The member marked a message as spam: unsubscribed at once, reason "complaint"."""
    if member.status not in (MemberStatus.ACTIVE, MemberStatus.PENDING):
        return False
    now = unit.now
    member.status, member.unsubscribed_at, member.updated_at = MemberStatus.UNSUBSCRIBED, now, now
    member.left_reason = "complaint"
    skipped = member_rows.skip_unsent(unit.session, member.id, now, "member complained")
    unit.audit(
        "unsubscribe",
        member_id=member.id,
        issue_id=issue_id,
        detail=f"complaint ({finding.diagnostic or 'abuse'}) via {source}; "
        f"{skipped} unsent messages stopped",
    )
    unit.after_commit(lambda: unit.services.changed("members"))
    return True


def _digest(returned: Returned, member_id: int, finding: Finding, index: int) -> str:
    key = f"{dsn.finding_digest(returned, finding, index)}\x00{member_id}"
    return hashlib.sha256(key.encode()).hexdigest()


def _merge(results: list[Applied]) -> Applied:
    applied = [r for r in results if r.outcome == "applied"]
    first = applied[0] if applied else results[0]
    return Applied(
        first.outcome,
        "; ".join(r.note for r in results)[:2000],
        first.member_id,
        first.issue_id,
        tuple(k for r in results for k in r.kinds),
        any(r.suppressed for r in results),
        first.score,
    )


def take(
    services: Services, raw: bytes, *, source: str, envelope_to: tuple[str, ...] = ()
) -> Applied:
    """Read one returned message and apply it (the doors' way in: serve, read, fetch)."""
    if len(raw) > services.settings.bounces.max_bytes:
        return Applied("ignored", f"larger than bounces.max_bytes ({len(raw)} bytes)")
    returned = dsn.read(raw, envelope_to)
    return services.run(f"bounces:{source}", apply, returned, source=source)


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    at: dt.datetime
    kind: BounceKind
    status: str
    diagnostic: str
    source: str
    score: float
    issue_id: int | None


@dataclass(frozen=True, slots=True)
class History:
    member_id: int
    email: str
    status: MemberStatus
    score: float  # 0 once lapsed
    left_reason: str
    events: tuple[Event, ...]


def current_score(unit: Unit, member: Member) -> float:
    quiet = dt.timedelta(days=unit.settings.bounces.quiet_days)
    if member.bounced_at is None or unit.now - member.bounced_at > quiet:
        return 0.0
    return float(member.bounce_score or 0.0)


def history(unit: Unit, member_id: int) -> History | None:
    member = member_rows.get(unit.session, member_id)
    if member is None:
        return None
    events = tuple(
        Event(e.at, e.kind, e.status, e.diagnostic, e.source, e.score, e.issue_id)
        for e in rows.history(unit.session, member_id)
    )
    return History(
        member.id,
        member.email,
        member.status,
        current_score(unit, member),
        member.left_reason,
        events,
    )


def history_of(unit: Unit, address: str) -> History | None:
    """The history of the member with this (normalised) address."""
    found = member_rows.by_email(unit.session, address)
    return None if found is None else history(unit, found.id)
