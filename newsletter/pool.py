"""SMTP connections for the delivery engine: relays with failover, reuse, reconnects, rate limits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import SMTPStatus

from newsletter.config import RelaySettings, SmtpSettings

RELAY_COOLDOWN = 30.0  # seconds a relay that refused a connection is passed over

# Failures of the connection rather than of one message: the message is retried elsewhere
# or later, and a run of them pauses the issue.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPHeloError,
    aiosmtplib.SMTPNotSupported,
    aiosmtplib.SMTPAuthenticationError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)

# Connecting also fails on a refusing greeting or EHLO reply (421, 554).
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    aiosmtplib.SMTPResponseException,
)


class SmtpClient(Protocol):
    """What the engine needs of an SMTP client. aiosmtplib.SMTP is one."""

    async def connect(self) -> object: ...
    async def ehlo(self) -> object: ...
    async def sendmail(
        self, sender: str, recipients: list[str], message: bytes, /, *, mail_options: list[str]
    ) -> object: ...
    async def quit(self) -> object: ...
    def supports_extension(self, extension: str) -> bool: ...
    def close(self) -> None: ...


ClientFactory = Callable[[RelaySettings, float], SmtpClient]


def aiosmtplib_client(relay: RelaySettings, timeout: float) -> SmtpClient:
    return aiosmtplib.SMTP(
        hostname=relay.host,
        port=relay.port,
        username=relay.user or None,
        password=relay.password or None,
        use_tls=relay.security == "tls",
        start_tls=relay.security == "starttls",
        timeout=timeout,
    )


class NoRelayAvailable(ConnectionError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("no relay accepted a connection: " + "; ".join(errors))


class Relays:
    """The configured relays in failover order; one that fails to connect sits out a while."""

    def __init__(self, conf: SmtpSettings, factory: ClientFactory = aiosmtplib_client) -> None:
        self.relays = conf.relays
        self.timeout = conf.timeout
        self.factory = factory
        self.down_until = [0.0] * len(self.relays)

    async def connect(self) -> tuple[SmtpClient, RelaySettings, bool]:
        """A connected client, its relay, and whether the relay offers 8BITMIME."""
        errors: list[str] = []
        now = time.monotonic()
        order = sorted(range(len(self.relays)), key=lambda i: (self.down_until[i] > now, i))
        for i in order:
            relay = self.relays[i]
            client = self.factory(relay, self.timeout)
            try:
                await client.connect()
                await client.ehlo()
            except CONNECT_ERRORS as exc:
                client.close()
                self.down_until[i] = time.monotonic() + RELAY_COOLDOWN
                errors.append(f"{relay.name}: {exc.__class__.__name__}: {exc}")
                continue
            self.down_until[i] = 0.0
            return client, relay, client.supports_extension("8bitmime")
        raise NoRelayAvailable(errors)


@dataclass
class Connection:
    """One pooled connection: reused for many messages, reopened when stale or told to close."""

    relays: Relays
    idle_timeout: float
    max_messages: int
    client: SmtpClient | None = None
    relay: RelaySettings | None = None
    used: int = 0
    last_used: float = 0.0

    async def get(self) -> SmtpClient:
        stale = self.client is not None and (
            time.monotonic() - self.last_used > self.idle_timeout
            or (self.max_messages and self.used >= self.max_messages)
        )
        if stale:
            await self.release(polite=True)
        if self.client is None:
            self.client, self.relay, eight_bit = await self.relays.connect()
            self.used = 0
            if not eight_bit:
                relay = self.relay
                await self.release(polite=True)
                raise aiosmtplib.SMTPNotSupported(
                    f"{relay.name} does not offer 8BITMIME (RFC 6152), which UTF-8 bodies need"
                )
        return self.client

    def mark_used(self) -> None:
        self.used += 1
        self.last_used = time.monotonic()

    async def release(self, *, polite: bool = False) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if polite:
            try:
                await asyncio.wait_for(client.quit(), timeout=2)
            except Exception:  # leaving anyway: a failed QUIT changes nothing
                client.close()
        else:
            client.close()


class Wire(bytes):
    """A message already in DATA form: CRLF line ends, dot-stuffed, ending with CRLF "." CRLF.

    personalize.py lays out each issue's message once in this form, so the per-message
    line-ending and dot-stuffing passes aiosmtplib would make (two regex scans of the whole
    message, a third of its CPU per message) are not needed.
    """


class _WireDataProtocol(SMTPProtocol):
    """aiosmtplib's protocol, sending a Wire as it is; any other message goes the usual way."""

    async def execute_data_command(
        self, message: bytes, timeout: float | None = None
    ) -> SMTPResponse:
        if type(message) is not Wire:
            return await super().execute_data_command(message, timeout)
        if self._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        async with self._command_lock:
            self._response_pending = True
            self.write(b"DATA\r\n")
            start = await self.read_response(timeout=timeout)
            if start.code != SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            self._response_pending = True
            self.write(message)
            response = await self.read_response(timeout=timeout)
            if response.code != SMTPStatus.completed:
                raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response


def _wire_capable(protocol: object) -> bool:
    # The override relies on these protocol internals (aiosmtplib 5); without them, or with a
    # protocol we do not know, every message takes aiosmtplib's own path.
    return type(protocol) is SMTPProtocol and all(
        hasattr(protocol, name)
        for name in ("_command_lock", "_response_pending", "write", "read_response")
    )


def unwire(wire: Wire) -> bytes:
    """The plain message a Wire carries (for aiosmtplib's own DATA path)."""
    return bytes(wire[:-3]).replace(b"\r\n..", b"\r\n.")


async def transmit(client: SmtpClient, sender: str, recipient: str, data: bytes) -> None:
    """One SMTP transaction: MAIL (8BITMIME, SIZE), RCPT, DATA. Raises aiosmtplib's errors.

    `data` is a plain message or a Wire. Addresses are already normalised (members.py and
    the config's checks), so the address parsing aiosmtplib's sendmail repeats for every
    message is skipped.
    """
    smtp = cast(aiosmtplib.SMTP, client)
    options = [b"BODY=8BITMIME"]
    if smtp.supports_extension("size"):
        options.append(b"SIZE=%d" % len(data))
    try:
        reply = await smtp.execute_command(b"MAIL", b"FROM:<" + sender.encode() + b">", *options)
        if reply.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        reply = await smtp.execute_command(b"RCPT", b"TO:<" + recipient.encode() + b">")
        if reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
        if type(data) is Wire:
            if _wire_capable(smtp.protocol):  # the first message on this connection
                smtp.protocol.__class__ = _WireDataProtocol
            if type(smtp.protocol) is not _WireDataProtocol:
                data = unwire(data)
        await smtp.data(data)
    except aiosmtplib.SMTPResponseException:
        # Reset the envelope for the next message, as sendmail does; if that fails the
        # connection is gone, which the next message finds out.
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPException):
            await smtp.rset()
        raise


class RateLimiter:
    """Token buckets for messages per second and per hour (0 means no limit)."""

    def __init__(
        self,
        per_second: float,
        per_hour: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.clock, self.sleep = clock, sleep
        self.buckets: list[list[float]] = []  # [capacity, tokens, refill per second, last]
        now = clock()
        if per_second > 0:
            self.buckets.append([max(per_second, 1.0), max(per_second, 1.0), per_second, now])
        if per_hour > 0:
            # The hourly bucket starts empty but for a burst of one minute's share, so a
            # restart cannot spend a whole hour's quota at once.
            share = max(per_hour / 60.0, 1.0)
            self.buckets.append([float(per_hour), share, per_hour / 3600.0, now])
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if not self.buckets:
            return
        async with self._lock:
            while True:
                now = self.clock()
                wait = 0.0
                for b in self.buckets:
                    b[1] = min(b[0], b[1] + (now - b[3]) * b[2])
                    b[3] = now
                    if b[1] < 1.0 - 1e-9:  # tolerance: float refills land a hair short of 1
                        wait = max(wait, (1.0 - b[1]) / b[2])
                if wait <= 0:
                    for b in self.buckets:
                        b[1] = max(b[1] - 1.0, 0.0)
                    return
                await self.sleep(wait)
