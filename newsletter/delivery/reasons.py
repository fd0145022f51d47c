"""Why a delivery waits, read from what the ledger keeps of its last attempt (code and text).

The engine stores an attempt's SMTP reply code (None when there was no reply) and text in
`deliveries.last_code` and `last_message`. A connection that no relay accepted is stored as
`NoRelayAvailable`'s text, "no relay accepted a connection: HOST:PORT: ErrorClass: what", one
part per relay. From those two values this module says, for people, which of a few reasons
holds, so that `send`, `worker` and `issue status` can group the waiting rows by it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# What the engine stores for a connection no relay accepted (classify() names the class).
NO_RELAY = (
    "NoRelayAvailable: no relay accepted a connection: ",
    "no relay accepted a connection: ",
)


class Why(StrEnum):
    UNREACHABLE = "relay unreachable"  # no connection, or it dropped or stopped answering
    REFUSING = "relay refusing"  # it answered, and said no (a greeting, AUTH, a 4xx reply)
    RATE_LIMITED = "rate-limited by the relay"  # its 4xx reply says: too many, too fast
    NOT_TRIED = "not tried yet"  # queued: the send stopped, was paused, or has not reached it
    SENDING = "being sent now"  # claimed by a sender (or by one that died, until its lease ends)


# aiosmtplib's errors for a relay that answered: it is there, and refused.
_ANSWERED = re.compile(
    r"\b(SMTPConnectResponseError|SMTPHeloError|SMTPAuthenticationError|SMTPNotSupported|"
    r"SMTPResponseException|SMTPSenderRefused|SMTPRecipientRefused|SMTPDataError)\b"
)
# A relay's words for its own limits (Gmail 4.7.28/4.7.0, Microsoft 4.7.500, Postfix,
# Amazon SES, Mailgun, SendGrid): "rate limit", "too many", "throttled", "try again later"…
_RATE = re.compile(
    r"rate.?limit|too many|throttl|quota|slow down|exceeded|try again later|4\.7\.(0|28|500)",
    re.I,
)


@dataclass(frozen=True, slots=True)
class Reason:
    why: Why
    detail: str  # the relay's reply or the connection error, as stored

    def __str__(self) -> str:
        return f"{self.why}: {self.detail}" if self.detail else str(self.why)


def reason(code: int | None, text: str, status: str = "deferred") -> Reason:
    """The reason a row with this status, last code and text is waiting."""
    if status == "sending":
        return Reason(Why.SENDING, "")
    text = " ".join(text.split())
    if code is not None:
        why = Why.RATE_LIMITED if _RATE.search(text) else Why.REFUSING
        return Reason(why, f"{code} {text}".strip())
    if not text:
        return Reason(Why.NOT_TRIED, "")
    detail = text
    for prefix in NO_RELAY:
        detail = detail.removeprefix(prefix)
    if _ANSWERED.search(text):
        return Reason(Why.RATE_LIMITED if _RATE.search(text) else Why.REFUSING, detail)
    return Reason(Why.UNREACHABLE, detail)
