"""A recording SMTP server for tests: real aiosmtpd over TCP, with failures injected by the server.

`faults` scripts what happens to each recipient's successive attempts, so tests are exact:
  "421"        reply 421 at RCPT (the client must drop the connection)
  "451"        reply 451 at RCPT (try again later)
  "drop-rcpt"  close the connection at RCPT, before DATA
  "drop-data"  close the connection after the end of data, before the reply (not recorded)
  "stall"      at DATA, wait `stall_seconds` before answering (past the client's timeout)
`refuse` maps an address to a permanent reply given at RCPT every time.
`pipelining` adds PIPELINING (RFC 2920) to the EHLO reply; aiosmtpd reads commands a line at
a time, so it already answers pipelined commands in order. `eight_bit=False` drops 8BITMIME
(RFC 6152) from it, as an old relay would: such a relay must be given 7bit messages only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
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
    at: float = 0.0

    def parse(self) -> EmailMessage:
        msg = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class RecordingHandler:
    port: int = 0
    messages: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    faults: dict[str, list[str]] = field(default_factory=dict)
    stall_seconds: float = 3.0
    delay_seconds: float = 0.0  # every message: a slow server
    pipelining: bool = False
    eight_bit: bool = True
    attempts: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _fault(self, address: str) -> str | None:
        script = self.faults.get(address.lower())
        n = self.attempts[address.lower()]
        return script[n] if script and n < len(script) else None

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd hands over its reply lines, ending with "250 HELP"; ours go before that.
        session.host_name = hostname
        if not self.eight_bit:
            responses = [r for r in responses if "8BITMIME" not in r.upper()]
        return [*responses[:-1], *(["250-PIPELINING"] if self.pipelining else []), responses[-1]]

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        address = address.lower()
        reply = self.refuse.get(address)
        if reply:
            return reply
        fault = self._fault(address)
        if fault in ("421", "451", "drop-rcpt"):
            self.attempts[address] += 1
            self.injected[fault] += 1
            if fault == "drop-rcpt":
                server.transport.close()
                return "250 OK"  # never reaches the client
            if fault == "421":
                return "421 4.3.2 Service shutting down, closing channel"
            return "451 4.3.0 Temporary local problem, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not self.eight_bit and any(o.upper().startswith("BODY=8BITMIME") for o in options):
            return "555 5.5.4 BODY=8BITMIME not offered here"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        (address,) = envelope.rcpt_tos
        if not self.eight_bit and any(b > 0x7F for b in envelope.original_content):
            return "554 5.6.0 8bit data to a relay that did not offer 8BITMIME"
        fault = self._fault(address)
        if fault in ("drop-data", "stall"):
            self.attempts[address] += 1
            self.injected[fault] += 1
            if fault == "drop-data":
                server.transport.close()
                return "250 OK"  # never reaches the client, and nothing is recorded
            await asyncio.sleep(self.stall_seconds)
            if server.transport is None or server.transport.is_closing():
                return "451 4.4.2 too late"  # the client gave up: not delivered
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        self.attempts[address] += 1
        with self.lock:
            self.messages.append(
                Received(
                    envelope.mail_from,
                    address,
                    envelope.original_content,
                    list(envelope.mail_options),
                    time.monotonic(),
                )
            )
        return "250 2.0.0 accepted"

    def by_recipient(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        with self.lock:
            for m in self.messages:
                out.setdefault(m.rcpt_to, []).append(m)
        return out

    def count(self) -> int:
        with self.lock:
            return len(self.messages)
