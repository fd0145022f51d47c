"""Mail from the board: sign-in links and reply notices, queued as system mail by the asking use-case.

Each goes through services/mail.queue_system_mail, as every system message does: its own
templates (email/signin.*, email/board_reply.*) extend the shared system layout, in the
member's language, queued in the transaction that asks for it; the mailer delivers it
(DKIM-signed when configured) and retries it. A reply notice goes to the thread's author at
most once a thread a day, never to a member who left or bounced, and carries
List-Unsubscribe (RFC 2369) with RFC 8058's one-click POST: it switches reply notices off,
not the newsletter.
"""

from __future__ import annotations

import datetime as dt

from markupsafe import Markup

from newsletter import i18n
from newsletter.content.board import display_name, tidy
from newsletter.i18n import N_
from newsletter.services import mail
from newsletter.services.preferences import language_of
from newsletter.services.unit import Unit
from newsletter.storage import board as board_rows
from newsletter.storage import members as member_rows
from newsletter.storage.models import BoardMessage, Member, MemberStatus

SIGNIN, REPLY = "signin", "board-reply"
NOTICE_SPACING = dt.timedelta(days=1)  # reply notices for one thread


def _queue(
    unit: Unit,
    member: Member,
    kind: str,
    subject: str,
    template: str,
    context: dict[str, object],
    *,
    retry_hours: float = mail.RETRY_HOURS,
    headers: dict[str, str] | None = None,
) -> int:
    """Queue one message to `member` in their language (mail.queue_system_mail): `subject`
    is a message id with a %(list)s value, the list's name in that language."""
    language = language_of(unit, member)
    list_name = unit.settings.list.name_in(language)
    return mail.queue_system_mail(
        unit,
        kind=kind,
        template=template,
        subject=i18n.gettext(language, subject, list=list_name),
        to_address=member.email,
        # Names are cleaned when they come in; one stored otherwise must still not break the
        # header (a line break in To would be refused, and the reply with it).
        to_name=" ".join(tidy(member.name).split()),
        context={"name": member.name, **context},
        language=language,
        member_id=member.id,
        retry_hours=retry_hours,
        headers=headers,
    )


def queue_signin(unit: Unit, member: Member, signin_id: int) -> int:
    """The sign-in link for `member`; retried only while the link is still valid."""
    minutes = unit.settings.board.signin_minutes
    return _queue(
        unit,
        member,
        SIGNIN,
        N_("Sign in to %(list)s"),
        "signin",
        {"link": unit.services.links.signin(member.id, signin_id), "minutes": minutes},
        retry_hours=minutes / 60,
    )


def reply(
    unit: Unit, thread: BoardMessage, replier_id: int, replier: str, html: str, text: str
) -> int | None:
    """Tell a thread's author that a reply (`html` and `text`, now on the board) came from
    `replier`, unless notices are off (by config or by the author), the author replied to
    themselves, has left or bounced, or had a notice for this thread within a day. The
    queued mail's id, or None."""
    if not unit.settings.board.reply_notices or thread.member_id == replier_id:
        return None
    author = member_rows.get(unit.session, thread.member_id)
    if author is None or author.status != MemberStatus.ACTIVE:
        return None
    standing = board_rows.standing(unit.session, author.id)
    if standing is not None and not standing.notices:
        return None
    if thread.notified_at is not None and unit.now - thread.notified_at < NOTICE_SPACING:
        return None
    links = unit.services.links
    stop = links.notices(author.id)
    mail_id = _queue(
        unit,
        author,
        REPLY,
        N_("A reply to your message on the %(list)s board"),
        "board_reply",
        {
            "replier": display_name(replier),
            "reply_html": Markup(html),  # sanitised when it was posted
            "reply_text": text,
            "thread_link": links.thread(thread.id),
            "stop_link": stop,
        },
        # RFC 2369 and RFC 8058: the mail client's unsubscribe stops these notices only.
        headers={
            "List-Unsubscribe": f"<{stop}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    thread.notified_at = unit.now
    unit.audit(
        "board-notice",
        member_id=author.id,
        detail=f"reply notice for thread #{thread.id} queued",
    )
    return mail_id
