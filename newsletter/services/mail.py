"""System mail use-cases: a message is queued in the transaction that asks for it, never sent there.

The mailer (newsletter/delivery/mailer.py) delivers the queue with retries, so a relay that is
down when a member signs up delays the confirmation instead of losing it, and a page never
waits on SMTP.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from newsletter import i18n
from newsletter.content import layout
from newsletter.content.compiler import Compiled
from newsletter.content.layout import system_message
from newsletter.content.personalize import Personalizer
from newsletter.i18n import N_
from newsletter.services.unit import Permission, Unit, requires, use_case
from newsletter.storage import mail as mail_rows
from newsletter.storage.ledger import Recipient
from newsletter.storage.models import MailStatus, Member, SystemMail

CONFIRM, TEST = "confirm", "test"
# System messages are retried for this long, then given up (a confirmation a week late is
# worth little; the confirm link itself lasts seven days).
RETRY_HOURS = 48.0
TEST_PREFIX = "[TEST] "


def envelope_from(unit: Unit) -> str:
    lst = unit.settings.list
    return lst.return_path or lst.from_address


def queue(
    unit: Unit,
    *,
    kind: str,
    to_address: str,
    message_id: str,
    message: bytes,
    member_id: int | None = None,
    signup_id: int | None = None,
    retry_hours: float = RETRY_HOURS,
) -> SystemMail:
    """Put one message in the queue; the mailer is woken once the transaction commits."""
    row = mail_rows.add(
        unit.session,
        SystemMail(
            kind=kind,
            member_id=member_id,
            signup_id=signup_id,
            to_address=to_address,
            envelope_from=envelope_from(unit),
            message_id=message_id,
            message=message,
            status=MailStatus.QUEUED,
            attempts=0,
            last_message="",
            retry_until=unit.now + dt.timedelta(hours=retry_hours),
            created_at=unit.now,
        ),
    )
    unit.after_commit(lambda: unit.services.changed("mail"))
    return row


def queue_confirmation(unit: Unit, member: Member, *, signup_id: int | None = None) -> int:
    """The double opt-in message for `member` (part of the subscribe use-case)."""
    settings, env = unit.settings, unit.services.env
    context = {
        "list_name": settings.list.name,
        "name": member.name,
        "link": unit.services.links.confirm(member.id),
    }
    msgid, data = system_message(
        from_name=settings.list.name,
        from_address=settings.list.from_address,
        to_name=member.name,
        to_address=member.email,
        subject=i18n.gettext(
            settings.list.language,
            N_("Confirm your subscription to %(list)s"),
            list=settings.list.name,
        ),
        text=env.get_template("email/confirm.txt").render(context),
        html=env.get_template("email/confirm.html").render(context),
        now=unit.now,
    )
    row = queue(
        unit,
        kind=CONFIRM,
        to_address=member.email,
        message_id=msgid,
        message=data,
        member_id=member.id,
        signup_id=signup_id,
    )
    return row.id


@use_case
@requires(Permission.WRITE)
def queue_test_copy(unit: Unit, compiled: Compiled, number: int, to_address: str) -> int:
    """One copy of an issue, marked [TEST], to one address; nothing counts as the issue's send
    (no issue row, no delivery row, no item claimed). Returns the queued message's id."""
    compiled = dataclasses.replace(compiled, subject=TEST_PREFIX + compiled.subject)
    personalizer = Personalizer(compiled, unit.settings, unit.services.signer, number)
    shared, data = personalizer.message(Recipient(0, to_address, ""))
    # Every copy its own Message-ID: two tests of one issue must not look like one message.
    message_id = layout.message_id(unit.settings.list.from_address.rsplit("@", 1)[1])
    data = data.replace(f"Message-ID: {shared}".encode(), f"Message-ID: {message_id}".encode(), 1)
    row = queue(
        unit, kind=TEST, to_address=to_address, message_id=message_id, message=data, retry_hours=1
    )
    unit.audit(
        "test-send",
        issue_id=number or None,
        detail=f"to {to_address}: {compiled.subject}",
    )
    return row.id


@dataclasses.dataclass(frozen=True, slots=True)
class MailInfo:
    id: int
    kind: str
    to_address: str
    status: MailStatus
    attempts: int
    last_code: int | None
    last_message: str
    message_id: str
    created_at: dt.datetime
    sent_at: dt.datetime | None


def info(unit: Unit, mail_id: int) -> MailInfo | None:
    row = mail_rows.get(unit.session, mail_id)
    if row is None:
        return None
    return MailInfo(
        row.id,
        row.kind,
        row.to_address,
        row.status,
        row.attempts,
        row.last_code,
        row.last_message,
        row.message_id,
        row.created_at,
        row.sent_at,
    )


def waiting(unit: Unit) -> int:
    return mail_rows.waiting(unit.session)
