"""System mail use-cases: a message is queued in the transaction that asks for it, never sent there.

The mailer (newsletter/delivery/mailer.py) delivers the queue with retries, so a relay that is
down when a member signs up delays the confirmation instead of losing it, and a page never
waits on SMTP.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

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


def queue_system_mail(
    unit: Unit,
    *,
    kind: str,
    template: str,
    subject: str,
    to_address: str,
    to_name: str = "",
    context: Mapping[str, Any] | None = None,
    preheader: str = "",
    language: str | None = None,
    member_id: int | None = None,
    signup_id: int | None = None,
    retry_hours: float = RETRY_HOURS,
    headers: Mapping[str, str] | None = None,
) -> int:
    """Queue one system message (a confirmation, a sign-in link, a notice): every kind goes
    through here, so each has the same headers, layout and delivery.

    Renders `email/<template>.html` and `.txt` (which extend `email/system.html` and
    `system.txt`: the issue's masthead and footer) with `context` and the site's values,
    lays the message out with `layout.system_message` (Date, a Message-ID on the From
    domain, Auto-Submitted: auto-generated, quoted-printable text and HTML parts) and queues
    it; the mailer sends it through the relays with retries, DKIM-signed when [dkim] is set.
    `language` (a member's) picks the templates' catalog and the list's name; `subject` is
    given already in it. `headers`: fields of the kind's own (a notice's List-Unsubscribe),
    after Reply-To. Returns the queued message's id.
    """
    settings = unit.settings
    lst = settings.list
    language = language or lst.language
    env = unit.services.env_for(language)
    list_name = lst.name_in(language)
    values = {
        "list_name": list_name,
        "base_url": lst.base_url.rstrip("/"),
        "archive_url": unit.services.links.archive(),
        "postal_address": lst.postal_address,
        "subject": subject,
        "preheader": preheader,
        **(context or {}),
    }
    msgid, data = system_message(
        from_name=list_name,
        from_address=lst.from_address,
        to_name=to_name,
        to_address=to_address,
        subject=subject,
        text=env.get_template(f"email/{template}.txt").render(values),
        html=env.get_template(f"email/{template}.html").render(values),
        now=unit.now,
        headers={**({"Reply-To": lst.reply_to} if lst.reply_to else {}), **(headers or {})},
    )
    row = queue(
        unit,
        kind=kind,
        to_address=to_address,
        message_id=msgid,
        message=data,
        member_id=member_id,
        signup_id=signup_id,
        retry_hours=retry_hours,
    )
    return row.id


def queue_confirmation(unit: Unit, member: Member, *, signup_id: int | None = None) -> int:
    """The double opt-in message for `member` (part of the subscribe use-case)."""
    lst = unit.settings.list
    return queue_system_mail(
        unit,
        kind=CONFIRM,
        template="confirm",
        subject=i18n.gettext(
            lst.language, N_("Confirm your subscription to %(list)s"), list=lst.name
        ),
        to_address=member.email,
        to_name=member.name,
        context={"name": member.name, "link": unit.services.links.confirm(member.id)},
        member_id=member.id,
        signup_id=signup_id,
    )


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
