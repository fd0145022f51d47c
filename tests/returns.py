"""Messages that come back to the bounce address, written for tests: DSNs, ARF reports, auto-replies.

Each is laid out as the RFC (3464, 5965, 3834) or the mail server it imitates lays it out;
the values (addresses, statuses, Message-IDs) are the test's.
"""

from __future__ import annotations

import secrets


def _original(message_id: str, return_path: str, to: str) -> str:
    return (
        f"Return-Path: <{return_path}>\n"
        "From: China IP <news@example.org>\n"
        f"To: {to}\n"
        "Subject: China IP: this week\n"
        f"Message-ID: {message_id}\n"
        "\n"
        "The issue's text.\n"
    )


def dsn(
    *,
    to: str,
    recipient: str,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 no such user",
    message_id: str = "<1.1.abc@example.org>",
    return_path: str | None = None,
    report_id: str | None = None,
    headers_only: bool = False,
) -> bytes:
    """A DSN as Postfix writes one (multipart/report, message/delivery-status)."""
    boundary = "B" + secrets.token_hex(6)
    report_id = report_id or f"<{secrets.token_hex(8)}@relay.example.net>"
    original = _original(message_id, return_path or to, recipient)
    kind = "text/rfc822-headers" if headers_only else "message/rfc822"
    if headers_only:
        original = original.split("\n\n", 1)[0] + "\n"
    text = (
        "From: Mail Delivery System <MAILER-DAEMON@relay.example.net>\n"
        f"To: {to}\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "Auto-Submitted: auto-replied\n"
        f"Message-Id: {report_id}\n"
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\n'
        "\n"
        f"--{boundary}\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "Your message could not be delivered to one or more recipients.\n"
        "\n"
        f"--{boundary}\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; relay.example.net\n"
        f"X-Postfix-Sender: rfc822; {return_path or to}\n"
        "Arrival-Date: Mon,  7 Dec 2026 10:00:00 +0000 (UTC)\n"
        "\n"
        f"Final-Recipient: rfc822; {recipient}\n"
        f"Original-Recipient: rfc822;{recipient}\n"
        f"Action: {action}\n"
        f"Status: {status}\n"
        "Remote-MTA: dns; mx.example.com\n"
        f"Diagnostic-Code: {diagnostic}\n"
        "\n"
        f"--{boundary}\n"
        f"Content-Type: {kind}\n"
        "\n"
        f"{original}"
        "\n"
        f"--{boundary}--\n"
    )
    return text.encode()


def arf(
    *,
    to: str,
    recipient: str,
    original_from: str,
    message_id: str = "<1.1.abc@example.org>",
    report_id: str | None = None,
) -> bytes:
    """A complaint report as RFC 5965 lays one out (its section 3 example, our values)."""
    boundary = "A" + secrets.token_hex(6)
    report_id = report_id or f"<{secrets.token_hex(8)}@fbl.example.com>"
    return (
        "From: <abuse@fbl.example.com>\n"
        f"To: <{to}>\n"
        "Subject: FW: China IP: this week\n"
        f"Message-ID: {report_id}\n"
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"\n'
        "\n"
        f"--{boundary}\n"
        'Content-Type: text/plain; charset="US-ASCII"\n'
        "Content-Transfer-Encoding: 7bit\n"
        "\n"
        "This is an email abuse report for an email message\n"
        "received from IP 192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.\n"
        "\n"
        f"--{boundary}\n"
        "Content-Type: message/feedback-report\n"
        "\n"
        "Feedback-Type: abuse\n"
        "User-Agent: SomeGenerator/1.0\n"
        "Version: 1\n"
        f"Original-Mail-From: <{original_from}>\n"
        f"Original-Rcpt-To: <{recipient}>\n"
        "Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\n"
        "Reporting-MTA: dns; mail.example.com\n"
        "Source-IP: 192.0.2.1\n"
        "\n"
        f"--{boundary}\n"
        "Content-Type: message/rfc822\n"
        "Content-Disposition: inline\n"
        "\n"
        f"{_original(message_id, original_from, recipient)}"
        f"--{boundary}--\n"
    ).encode()


def vacation(*, to: str, sender: str, style: str = "rfc3834") -> bytes:
    """An out-of-office reply: RFC 3834's Auto-Submitted, or the older vacation headers."""
    marks = {
        "rfc3834": "Auto-Submitted: auto-replied\n",
        "x-autoreply": "X-Autoreply: yes\n",
        "precedence": "Precedence: auto_reply\n",
    }[style]
    return (
        f"From: <{sender}>\n"
        f"To: <{to}>\n"
        "Subject: Out of office: China IP: this week\n"
        f"Message-ID: <{secrets.token_hex(8)}@mail.example.com>\n"
        f"{marks}"
        "\n"
        "I am out of the office until Monday and will read your message then.\n"
    ).encode()


def qmail(*, to: str, recipient: str) -> bytes:
    """A qmail bounce: no DSN, the failure told in prose (flufl.bounce reads it)."""
    return (
        "From: MAILER-DAEMON@mx.example.com\n"
        f"To: {to}\n"
        "Subject: failure notice\n"
        f"Message-ID: <{secrets.token_hex(8)}@mx.example.com>\n"
        "\n"
        "Hi. This is the qmail-send program at mx.example.com.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n"
        "\n"
        f"<{recipient}>:\n"
        "Sorry, no mailbox here by that name. (#5.1.1)\n"
        "\n"
        "--- Below this line is a copy of the message.\n"
        "\n"
        f"Return-Path: <{to}>\n"
        "Subject: China IP: this week\n"
        "\n"
        "The issue's text.\n"
    ).encode()
