"""What a message sent to the bounce address says: a DSN, a complaint, an auto-reply, or nothing.

- A delivery status notification (RFC 3464: a `message/delivery-status` part, its blocks
  read with the email package): per recipient, `Action: failed` with a 5.x.x `Status` is a
  hard bounce, with 4.x.x (a temporary failure that ran out of time) a soft one, and
  `Action: delayed` a warning, which counts nothing.
- A complaint (ARF, RFC 5965: a `message/feedback-report` part): the member marked the
  message as spam.
- An auto-reply or out-of-office message (RFC 3834 `Auto-Submitted`, and the vacation
  headers mail programs add: `X-Autoreply`, `X-Autorespond`, `Precedence: auto_reply`):
  recognised, and counted for nothing.
- Anything else goes to flufl.bounce, which knows the many non-standard bounces older mail
  servers write (its permanent failures are hard bounces, its temporary ones warnings).

Nothing here decides who a report is about: `Returned` lists the addresses that may carry a
signed VERP return path and the returned message's Message-IDs, and services/bounces.py
checks their tags. The digest lets the same report, delivered twice, count once.
"""

from __future__ import annotations

import email
import email.message
import email.utils
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import flufl.bounce

from newsletter.storage.models import BounceKind

log = logging.getLogger(__name__)

# A report larger than this is not a bounce anyone needs to read whole (a DSN with its
# returned message is a few tens of KB); the intake doors refuse larger ones.
MAX_BYTES = 10 * 1024 * 1024


class Verdict(StrEnum):
    DSN = "dsn"  # RFC 3464
    COMPLAINT = "complaint"  # ARF, RFC 5965
    AUTOREPLY = "autoreply"  # RFC 3834 and vacation headers: counts nothing
    BOUNCE = "bounce"  # a non-standard bounce, read by flufl.bounce
    UNKNOWN = "unknown"  # not understood: left where it was


@dataclass(frozen=True, slots=True)
class Finding:
    """One recipient's fate, as the report tells it."""

    kind: BounceKind
    recipient: str = ""  # the address the report names ("" when it names none)
    status: str = ""  # RFC 3463 enhanced status, e.g. 5.1.1
    diagnostic: str = ""  # Diagnostic-Code, or the complaint's Feedback-Type


@dataclass(frozen=True, slots=True)
class Returned:
    verdict: Verdict
    findings: tuple[Finding, ...] = ()
    # Addresses that may be a VERP return path, the most trusted first: the envelope
    # recipients, then the report's own fields and headers that carry the original sender.
    addresses: tuple[str, ...] = ()
    # The Message-IDs of the returned original (an issue's carry its tag).
    message_ids: tuple[str, ...] = ()
    digest: str = ""  # the report's Message-ID, or a hash of its bytes
    note: str = ""  # what it is, for the log
    subject: str = field(default="", compare=False)


def read(raw: bytes, envelope_to: Sequence[str] = ()) -> Returned:
    """What the message `raw` says; `envelope_to` are its SMTP recipients when known."""
    msg = email.message_from_bytes(raw)
    digest = _digest(msg, raw)
    addresses = [*envelope_to, *_header_addresses(msg, "Delivered-To", "X-Original-To", "To")]
    subject = _text(msg.get("Subject", ""))[:200]
    report_type = str(msg.get_param("report-type", "") or "").lower()
    feedback = _part(msg, "message/feedback-report")
    if feedback is not None or report_type == "feedback-report":
        return _complaint(msg, feedback, addresses, digest, subject)
    status = _part(msg, "message/delivery-status")
    if status is not None:
        return _dsn(msg, status, addresses, digest, subject)
    why = autoreply(msg)
    if why:
        return Returned(Verdict.AUTOREPLY, (), tuple(addresses), (), digest, why, subject)
    return _heuristic(msg, addresses, digest, subject)


def autoreply(msg: email.message.Message) -> str:
    """Why `msg` is an automatic reply (RFC 3834 and the usual vacation headers), or ""."""
    submitted = _text(msg.get("Auto-Submitted", "")).strip().lower()
    if submitted and not submitted.startswith("no"):
        return f"Auto-Submitted: {submitted[:40]}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if msg.get(name) is not None:
            return f"{name} header"
    precedence = _text(msg.get("Precedence", "")).strip().lower()
    if precedence in ("auto_reply", "auto-reply"):
        return f"Precedence: {precedence}"
    if _text(msg.get("X-Auto-Response-Suppress", "")).strip() and msg.get("In-Reply-To"):
        return "an Exchange automatic reply"
    return ""


def _complaint(
    msg: email.message.Message,
    feedback: email.message.Message | None,
    addresses: list[str],
    digest: str,
    subject: str,
) -> Returned:
    fields = _fields(feedback)[0] if feedback is not None else email.message.Message()
    kind = _text(fields.get("Feedback-Type", "abuse")).strip().lower() or "abuse"
    original = _original(msg)
    addresses += _field_addresses(fields, "Original-Mail-From")
    addresses += _original_senders(original)
    recipients = _field_addresses(fields, "Original-Rcpt-To", "Removal-Recipient")
    findings = tuple(
        Finding(BounceKind.COMPLAINT, r, "", f"feedback type {kind}") for r in recipients or [""]
    )
    return Returned(
        Verdict.COMPLAINT,
        findings,
        tuple(addresses),
        _message_ids(original),
        digest,
        f"complaint ({kind})",
        subject,
    )


def _dsn(
    msg: email.message.Message,
    status: email.message.Message,
    addresses: list[str],
    digest: str,
    subject: str,
) -> Returned:
    blocks = _fields(status)
    per_message, per_recipient = (blocks[0], blocks[1:]) if blocks else (None, [])
    original = _original(msg)
    if per_message is not None:
        # Postfix names the original envelope sender (the VERP address) in its own field.
        addresses += _field_addresses(per_message, "X-Postfix-Sender", "Original-Envelope-Id")
    addresses += _original_senders(original)
    findings = []
    for block in per_recipient:
        found = _recipient_finding(block)
        if found is not None:
            findings.append(found)
    note = ", ".join(f"{f.kind} {f.status or '-'}" for f in findings) or "no failed recipient"
    return Returned(
        Verdict.DSN,
        tuple(findings),
        tuple(addresses),
        _message_ids(original),
        digest,
        f"DSN: {note}",
        subject,
    )


def _recipient_finding(block: email.message.Message) -> Finding | None:
    action = _text(block.get("Action", "")).strip().lower()
    status = _status(_text(block.get("Status", "")))
    recipient = (_field_addresses(block, "Final-Recipient", "Original-Recipient") or [""])[0]
    diagnostic = " ".join(_text(block.get("Diagnostic-Code", "")).split())[:1000]
    if action == "failed":
        kind = BounceKind.SOFT if status.startswith("4") else BounceKind.HARD
    elif action == "delayed":
        kind = BounceKind.WARNING
    else:
        return None  # delivered, relayed, expanded: nothing went wrong
    return Finding(kind, recipient, status, diagnostic)


def _heuristic(
    msg: email.message.Message, addresses: list[str], digest: str, subject: str
) -> Returned:
    """A bounce in none of the standard forms: flufl.bounce's detectors, as Mailman uses them."""
    try:
        temporary, permanent = flufl.bounce.all_failures(msg)
    # A detector that trips on a strange message must not stop the intake: not understood.
    except Exception:
        log.exception("flufl.bounce failed on message %s", digest[:16])
        return Returned(Verdict.UNKNOWN, (), tuple(addresses), (), digest, "not understood")
    findings = [Finding(BounceKind.HARD, _decode(a)) for a in sorted(permanent)]
    findings += [Finding(BounceKind.WARNING, _decode(a)) for a in sorted(temporary - permanent)]
    if not findings:
        return Returned(
            Verdict.UNKNOWN, (), tuple(addresses), (), digest, "not understood", subject
        )
    original = _original(msg)
    addresses += _original_senders(original)
    return Returned(
        Verdict.BOUNCE,
        tuple(findings),
        tuple(addresses),
        _message_ids(original),
        digest,
        f"non-standard bounce: {len(findings)} recipients",
        subject,
    )


# --- reading the parts ------------------------------------------------------------------------


def _part(msg: email.message.Message, content_type: str) -> email.message.Message | None:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _fields(part: email.message.Message) -> list[email.message.Message]:
    """The blocks of fields in a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, email.message.Message)]
    # A part the parser left as text (a decoded transfer encoding, or a subtype it does not
    # split): blocks of header lines separated by blank lines.
    text = part.get_payload(decode=True)
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(payload)
    blocks = re.split(r"\r?\n\s*\r?\n", raw.strip())
    return [email.message_from_string(b.strip() + "\n\n") for b in blocks if b.strip()]


def _original(msg: email.message.Message) -> email.message.Message | None:
    """The returned message (or its headers), as a DSN or ARF report attaches it."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                inner = payload[0]
                if isinstance(inner, email.message.Message):
                    return inner
        if kind in ("text/rfc822-headers", "text/global-headers"):
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                return email.message_from_bytes(body.strip() + b"\n\n")
    return None


def _original_senders(original: email.message.Message | None) -> list[str]:
    if original is None:
        return []
    return _header_addresses(original, "Return-Path")


def _message_ids(original: email.message.Message | None) -> tuple[str, ...]:
    if original is None:
        return ()
    return tuple(
        found.group(0)
        for value in original.get_all("Message-ID", [])
        if (found := re.search(r"<[^<>\s]{1,300}>", _text(value))) is not None
    )


def _header_addresses(msg: email.message.Message, *names: str) -> list[str]:
    values = [_text(v) for name in names for v in msg.get_all(name, [])]
    return [a for _, a in email.utils.getaddresses(values) if a]


def _field_addresses(block: email.message.Message, *names: str) -> list[str]:
    """Addresses of DSN/ARF fields written "type; address" (RFC 3464 §2.3.2)."""
    found = []
    for name in names:
        for value in block.get_all(name, []):
            text = _text(value)
            address = text.split(";", 1)[1] if ";" in text else text
            address = address.strip().strip("<>").strip()
            if "@" in address and len(address) <= 320:
                found.append(address)
    return found


def _status(text: str) -> str:
    found = re.search(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b", text)
    return found.group(0) if found else ""


def _text(value: object) -> str:
    """A header value as text, whatever the parser made of it (a Header for raw 8-bit)."""
    if isinstance(value, str):
        return value
    return str(value)


def _decode(address: bytes | str) -> str:
    return address.decode("utf-8", "replace") if isinstance(address, bytes) else address


def _digest(msg: email.message.Message, raw: bytes) -> str:
    """The same report, delivered twice, has the same digest: its Message-ID when it has one
    (a mail server writes a new one per report), else the hash of its body."""
    message_id = _text(msg.get("Message-ID", "")).strip()
    if message_id:
        return hashlib.sha256(b"id\x00" + message_id.encode("utf-8", "replace")).hexdigest()
    _, _, body = raw.partition(b"\n\n")
    if not body:
        _, _, body = raw.partition(b"\r\n\r\n")
    return hashlib.sha256(b"body\x00" + (body or raw)).hexdigest()


def finding_digest(returned: Returned, finding: Finding, index: int) -> str:
    """One finding's key: the report's digest, its place and its recipient."""
    key = f"{returned.digest}\x00{index}\x00{finding.recipient.lower()}\x00{finding.kind}"
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
