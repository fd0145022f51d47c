"""Sending providers' bounce and complaint notifications: authenticated as each documents, then read.

- Amazon SES through SNS: an SNS message (JSON) signed with Amazon's certificate. The
  signature is checked as AWS documents it: the certificate is fetched by HTTPS from the
  message's SigningCertURL, which must be an SNS host of amazonaws.com and a .pem file;
  the string to sign is built from the message's own fields; SignatureVersion 1 is
  RSA-SHA1, 2 is RSA-SHA256; the TopicArn must be one the site configured. The SES
  notification (Bounce, Complaint) is the SNS message's Message field, itself JSON.
- Postmark: HTTP basic auth with the user and password put in the webhook's URL, as
  Postmark documents for securing webhooks; a bounce or spam-complaint record in JSON.

Both become a `dsn.Returned` the bounce service applies, marked trusted: the provider names
the recipient, and the authentication stands for VERP's tag.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from newsletter.delivery.dsn import Finding, Returned, Verdict
from newsletter.errors import NewsletterError
from newsletter.storage.models import BounceKind


class Refused(NewsletterError, PermissionError):
    """A notification that is not authentic (bad signature, credentials, certificate, topic)."""


class Malformed(NewsletterError, ValueError):
    """A notification that is authentic but not one this site can read."""


# --- Amazon SES through SNS ----------------------------------------------------------------------

# The signing certificate's URL: HTTPS, an SNS endpoint of an AWS partition, a .pem file.
_CERT_URL = re.compile(
    r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[A-Za-z0-9._/-]+\.pem", re.ASCII
)
# The fields signed, in order, per message type (AWS: "verifying the signatures of SNS messages").
_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED["UnsubscribeConfirmation"] = _SIGNED["SubscriptionConfirmation"]
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
MAX_CERT_BYTES = 64 * 1024

Fetch = Callable[[str], bytes]


def fetch_https(url: str) -> bytes:
    """GET a URL over HTTPS with certificate verification (the default context)."""
    if not url.startswith("https://"):
        raise Refused(f"only HTTPS is fetched: {url[:200]!r}")
    with urllib.request.urlopen(url, timeout=10) as response:
        data: bytes = response.read(MAX_CERT_BYTES + 1)
    if len(data) > MAX_CERT_BYTES:
        raise Refused("the signing certificate is larger than any certificate is")
    return data


@dataclass
class Certificates:
    """Amazon's signing certificates by URL, fetched once (they change rarely)."""

    fetch: Fetch = fetch_https
    cache: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)

    def key(self, url: str) -> rsa.RSAPublicKey:
        if not _CERT_URL.fullmatch(url):
            raise Refused(f"SigningCertURL is not an Amazon SNS certificate URL: {url[:200]!r}")
        found = self.cache.get(url)
        if found is None:
            try:
                cert = x509.load_pem_x509_certificate(self.fetch(url))
            except (OSError, ValueError) as exc:
                raise Refused(f"cannot read the signing certificate: {exc}") from None
            names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            if not any(str(n.value).endswith(".amazonaws.com") for n in names):
                raise Refused("the signing certificate is not one of Amazon SNS's")
            key = cert.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise Refused("the signing certificate's key is not RSA")
            found = self.cache[url] = key
        return found


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The bytes SNS signed: each signed field present, "Name\\nvalue\\n", in order."""
    names = _SIGNED.get(str(message.get("Type", "")))
    if names is None:
        raise Refused(f"unknown SNS message type {str(message.get('Type'))[:40]!r}")
    out = []
    for name in names:
        value = message.get(name)
        if value is None:
            if name == "Subject":  # the one optional field
                continue
            raise Refused(f"the SNS message has no {name}")
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode()


def verify_sns(
    message: Mapping[str, Any], certificates: Certificates, topics: tuple[str, ...]
) -> None:
    """Refused unless the SNS message is signed by Amazon and comes from a configured topic."""
    topic = str(message.get("TopicArn", ""))
    if topic not in topics:
        raise Refused(f"TopicArn {topic[:200]!r} is not in bounces.ses_topics")
    algorithm = _HASHES.get(str(message.get("SignatureVersion", "")))
    if algorithm is None:
        raise Refused("SignatureVersion must be 1 or 2")
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise Refused("the Signature is not base64") from None
    key = certificates.key(str(message.get("SigningCertURL", "")))
    try:
        key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise Refused("the SNS signature does not match (forged or altered)") from None


@dataclass(frozen=True, slots=True)
class SesNotice:
    kind: str  # "notification", "subscribe", "unsubscribe"
    returned: Returned | None = None
    subscribe_url: str = ""


def read_ses(message: Mapping[str, Any]) -> SesNotice:
    """An authenticated SNS message: a subscription to confirm, or an SES notification."""
    kind = message.get("Type")
    if kind == "SubscriptionConfirmation":
        url = str(message.get("SubscribeURL", ""))
        host = urllib.parse.urlsplit(url).hostname or ""
        if not url.startswith("https://") or not re.fullmatch(
            r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?", host
        ):
            raise Malformed("SubscribeURL is not an Amazon SNS address")
        return SesNotice("subscribe", subscribe_url=url)
    if kind == "UnsubscribeConfirmation":
        return SesNotice("unsubscribe")
    try:
        notice = json.loads(str(message.get("Message", "")))
    except ValueError:
        raise Malformed("the SNS Message is not an SES notification (not JSON)") from None
    if not isinstance(notice, dict):
        raise Malformed("the SNS Message is not an SES notification")
    return SesNotice("notification", ses_returned(notice, str(message.get("MessageId", ""))))


def ses_returned(notice: Mapping[str, Any], sns_id: str) -> Returned:
    """An SES notification ("notificationType", or "eventType" with event publishing)."""
    kind = str(notice.get("notificationType") or notice.get("eventType") or "")
    mail = notice.get("mail") if isinstance(notice.get("mail"), dict) else {}
    assert isinstance(mail, dict)
    addresses = tuple(a for a in [str(mail.get("source", ""))] if a)
    message_ids = _ses_message_ids(mail)
    digest = "ses\x00" + sns_id
    findings: list[Finding] = []
    if kind == "Bounce":
        bounce = _table(notice, "bounce")
        permanent = str(bounce.get("bounceType", "")) == "Permanent"
        if str(bounce.get("bounceType", "")) == "Undetermined":
            permanent = False
        for r in _rows(bounce, "bouncedRecipients"):
            status = str(r.get("status", ""))
            hard = permanent and not status.startswith("4")
            findings.append(
                Finding(
                    BounceKind.HARD if hard else BounceKind.SOFT,
                    str(r.get("emailAddress", "")),
                    status[:16],
                    str(r.get("diagnosticCode", "") or bounce.get("bounceSubType", ""))[:1000],
                )
            )
    elif kind == "Complaint":
        complaint = _table(notice, "complaint")
        feedback = str(complaint.get("complaintFeedbackType", "abuse"))
        if complaint.get("complaintSubType") == "OnAccountSuppressionList":
            return Returned(Verdict.UNKNOWN, digest=digest, note="SES suppression-list notice")
        for r in _rows(complaint, "complainedRecipients"):
            findings.append(
                Finding(
                    BounceKind.COMPLAINT,
                    str(r.get("emailAddress", "")),
                    "",
                    f"feedback type {feedback}",
                )
            )
    else:
        return Returned(Verdict.UNKNOWN, digest=digest, note=f"SES {kind or 'notice'}: ignored")
    verdict = Verdict.COMPLAINT if kind == "Complaint" else Verdict.DSN
    return Returned(verdict, tuple(findings), addresses, message_ids, digest, f"SES {kind.lower()}")


def _ses_message_ids(mail: Mapping[str, Any]) -> tuple[str, ...]:
    common = mail.get("commonHeaders")
    found = []
    if isinstance(common, dict) and common.get("messageId"):
        found.append(str(common["messageId"]))
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
            found.append(str(header.get("value", "")))
    return tuple(m if m.startswith("<") else f"<{m}>" for m in found)


def _table(notice: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = notice.get(key)
    if not isinstance(value, dict):
        raise Malformed(f"the SES notification has no {key} object")
    return value


def _rows(table: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = table.get(key)
    if not isinstance(value, list):
        raise Malformed(f"the SES notification has no {key} list")
    rows: list[Mapping[str, Any]] = [r for r in value if isinstance(r, dict)]
    return rows[:1000]


# --- Postmark ----------------------------------------------------------------------------------


def check_basic_auth(header: str, user: str, password: str) -> None:
    """Refused unless the Authorization header carries exactly this user and password."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Refused("the webhook needs HTTP basic auth")
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Refused("the Authorization header is not base64") from None
    expected = f"{user}:{password}".encode()
    if not hmac.compare_digest(given, expected):
        raise Refused("wrong user or password")


_POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked"}
_POSTMARK_SOFT = {"SoftBounce", "Transient", "DnsError"}


def postmark_returned(record: Mapping[str, Any]) -> Returned:
    """A Postmark bounce or spam-complaint webhook record."""
    kind = str(record.get("Type", ""))
    address = str(record.get("Email", ""))
    digest = f"postmark\x00{record.get('RecordType', '')}\x00{record.get('ID', '')}"
    if not record.get("ID") or not address:
        raise Malformed("a Postmark record has an ID and an Email")
    message_ids = _message_ids_in(str(record.get("Content", "") or ""))
    detail = str(record.get("Details", "") or record.get("Description", ""))[:1000]
    if record.get("RecordType") == "SpamComplaint" or kind == "SpamComplaint":
        finding = Finding(BounceKind.COMPLAINT, address, "", "feedback type abuse (Postmark)")
        verdict = Verdict.COMPLAINT
    elif kind == "AutoResponder":
        return Returned(Verdict.AUTOREPLY, digest=digest, note="Postmark AutoResponder")
    elif kind in _POSTMARK_HARD:
        finding = Finding(BounceKind.HARD, address, "", f"{kind}: {detail}")
        verdict = Verdict.DSN
    elif kind in _POSTMARK_SOFT:
        finding = Finding(BounceKind.SOFT, address, "", f"{kind}: {detail}")
        verdict = Verdict.DSN
    else:
        return Returned(Verdict.UNKNOWN, digest=digest, note=f"Postmark {kind}: ignored")
    return Returned(verdict, (finding,), (), message_ids, digest, f"Postmark {kind}")


def _message_ids_in(content: str) -> tuple[str, ...]:
    found = re.search(r"^Message-ID:\s*(<[^<>\s]{1,300}>)", content, re.M | re.I)
    return (found.group(1),) if found else ()
