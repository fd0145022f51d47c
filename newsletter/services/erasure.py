"""Erasing a member at their request, and the suppression list that keeps their address out.

What an erasure removes, and why the rest stays:
  - the member row keeps its id and dates, with no address, name or attributes left (status
    `erased`): the issues' delivery rows point at it, so every issue's counts by delivery
    state stay whole; the address becomes `erased:ID`, which no address can equal;
  - delivery rows stay, their relay replies with the address (or the name) redacted;
  - counted votes stay counted in their surveys with no member; a pending click goes;
  - link hits are folded into the daily counts (no member in them) and deleted;
  - system mail to the member or the address (the stored message holds both) is deleted;
  - the subscribe form's requests for the address are deleted;
  - board messages keep their place with no text or network address (as a deletion leaves
    them), and what the member wrote leaves the audit log's board entries; their reports,
    sign-in links and board standing are deleted;
  - the audit log keeps who did what to member #ID and when, with the address, the name
    and the network addresses found above replaced by "[erased]" in its details.

The suppression entry is HMAC-SHA256 of the canonical address under a key derived from
the site's secret (NEWSLETTER_SECRET_KEY), not a plain SHA-256: a plain hash of an address
is the very identifier ad networks match lists with, and anyone holding a copy of the
database could test it against any list of addresses. Keyed, the entry says nothing
without the secret. Lookups hash with every configured key (NEWSLETTER_OLD_SECRET_KEYS
too), so keep an old key listed while entries made under it must hold: `erasure.report`
says how many entries no configured key can read any more.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass

from newsletter.config import Settings
from newsletter.content.addresses import CONTROL
from newsletter.errors import NewsletterError
from newsletter.services.unit import Permission, Unit, requires, use_case
from newsletter.storage import erasure as rows
from newsletter.storage import hits
from newsletter.storage import members as member_rows
from newsletter.storage.models import MemberStatus

_CONTEXT = b"newsletter suppression list v1"
REASON_MAX = 500


class NoSuchMember(NewsletterError, LookupError):
    """No member has that number or address."""


class Conflict(NewsletterError):
    """The action does not fit the member as they are (already erased, already a member)."""


def check_reason(reason: str) -> str:
    """A reason for the audit log: one line, 1 to REASON_MAX characters."""
    text = " ".join(reason.split())
    if not text:
        raise NewsletterError("reason: say why (the member's request, a ticket number)")
    if CONTROL.search(reason.replace("\n", " ").replace("\r", " ").replace("\t", " ")):
        raise NewsletterError("reason: contains a control character")
    if len(text) > REASON_MAX:
        raise NewsletterError(f"reason: longer than {REASON_MAX} characters")
    return text


def _keys(settings: Settings) -> list[tuple[str, bytes]]:
    """(fingerprint, key) for each configured secret, the signing one first."""
    found = []
    for secret in settings.require_secret():
        key = hmac.new(secret, _CONTEXT, hashlib.sha256).digest()
        found.append((hmac.new(key, b"key id", hashlib.sha256).hexdigest()[:16], key))
    return found


def _digest(key: bytes, address: str) -> str:
    return hmac.new(key, address.encode("utf-8"), hashlib.sha256).hexdigest()


def suppressed(unit: Unit, addresses: Collection[str]) -> set[str]:
    """Which of these canonical addresses were erased (none needs the secret while the list is
    empty, so a site that never erased anyone imports without one)."""
    if not addresses or not rows.suppression_count(unit.session):
        return set()
    keys = [key for _, key in _keys(unit.settings)]
    by_digest = {_digest(key, a): a for a in set(addresses) for key in keys}
    found: set[str] = set()
    digests = list(by_digest)
    for start in range(0, len(digests), 500):
        hit = rows.suppressed(unit.session, digests[start : start + 500])
        found.update(by_digest[d] for d in hit)
    return found


@dataclass(frozen=True, slots=True)
class Erased:
    member_id: int
    votes_kept: int
    pending_dropped: int
    hits_folded: int
    mail_deleted: int
    signups_deleted: int
    audit_redacted: int
    deliveries_redacted: int
    unsent_stopped: int
    board_erased: int = 0

    @property
    def summary(self) -> str:
        return (
            f"{self.votes_kept} counted votes kept without the member, "
            f"{self.pending_dropped} pending clicks dropped, {self.hits_folded} link hits "
            f"folded into counts, {self.mail_deleted} system messages and "
            f"{self.signups_deleted} sign-up requests deleted, {self.audit_redacted} audit "
            f"entries and {self.deliveries_redacted} relay replies redacted, "
            f"{self.unsent_stopped} unsent messages stopped, "
            f"{self.board_erased} board messages erased"
        )


@use_case
@requires(Permission.MEMBERS)
def erase_member(unit: Unit, member_id: int, *, reason: str) -> Erased:
    """Delete the member's personal data everywhere, keep the counts, and put the address on
    the suppression list (see the module's docstring for what goes and what stays)."""
    why = check_reason(reason)
    session, now = unit.session, unit.now
    member = member_rows.get_any(session, member_id)
    if member is None:
        raise NoSuchMember(f"there is no member #{member_id}")
    if member.status == MemberStatus.ERASED:
        raise Conflict(f"member #{member_id} is already erased")
    fingerprint, key = _keys(unit.settings)[0]
    address, name = member.email, member.name
    stopped = member_rows.skip_unsent(session, member.id, now, "member erased")
    secrets = {address, name} | hits.member_ips(session, member.id)
    folded = hits.fold_member(session, member.id)
    signups, ips = rows.forget_signups(session, address)
    secrets |= ips
    board, board_ips = rows.forget_board(session, member.id)
    secrets |= board_ips
    rows.erase_board_words(session, member.id)
    kept, dropped = rows.unlink_votes(session, member.id)
    mail = rows.delete_mail(session, member.id, address)
    audited = rows.redact_audit(session, member.id, address, secrets)
    replies = rows.redact_deliveries(session, member.id, secrets)
    rows.suppress(session, _digest(key, address), fingerprint, now)
    member.email, member.name, member.attributes = f"erased:{member.id}", "", {}
    member.status, member.bounce_count, member.updated_at = MemberStatus.ERASED, 0, now
    member.unsubscribed_at = member.unsubscribed_at or now
    done = Erased(member.id, kept, dropped, folded, mail, signups, audited, replies, stopped, board)
    # The reason is the editor's text: it may quote the address, which must not come back.
    unit.audit(
        "erase-member",
        member_id=member.id,
        detail=f"member #{member.id} erased at their request ({rows.redact(why, secrets)}); "
        + done.summary,
    )
    unit.after_commit(lambda: unit.services.changed("members"))
    if board:
        unit.after_commit(lambda: unit.services.changed("board"))
    return done


@dataclass(frozen=True, slots=True)
class SuppressionReport:
    entries: int
    unreadable: int  # made under a key no longer configured: such an address would pass


def report(unit: Unit) -> SuppressionReport:
    """How many addresses are suppressed, and how many no configured key can recognise."""
    by_key = rows.suppression_keys(unit.session)
    if not by_key:
        return SuppressionReport(0, 0)
    if not unit.settings.secret_keys:  # no key at all: none can be recognised
        return SuppressionReport(sum(by_key.values()), sum(by_key.values()))
    known = {fingerprint for fingerprint, _ in _keys(unit.settings)}
    lost = sum(n for fingerprint, n in by_key.items() if fingerprint not in known)
    return SuppressionReport(sum(by_key.values()), lost)
