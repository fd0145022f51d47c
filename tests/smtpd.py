"""A recording SMTP handler for tests: real aiosmtpd over TCP, with failures injected by the server."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any


@dataclass
class Received:
    mail_from: str
    rcpt_to: str
    data: bytes
    mail_options: list[str]

    def parse(self) -> EmailMessage:
        msg = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class RecordingHandler:
    """Records accepted messages; `refuse` maps an address to an SMTP reply given at RCPT."""

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.refuse.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.messages.append(
                    Received(
                        envelope.mail_from,
                        rcpt,
                        envelope.original_content,
                        list(envelope.mail_options),
                    )
                )
        return "250 2.0.0 accepted"

    def by_recipient(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for m in self.messages:
            out.setdefault(m.rcpt_to, []).append(m)
        return out
