"""SMTP connections for the delivery engine: relays with failover, reuse, reconnects, pipelining."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import SMTPStatus
from typing_extensions import override

from newsletter.config import RelaySettings, SmtpSettings
from newsletter.content.layout import Wire, unwire

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

    async def connect(self) -> tuple[SmtpClient, RelaySettings]:
        """A connected client and its relay."""
        errors: list[str] = []
        now = time.monotonic()
        order = sorted(range(len(self.relays)), key=lambda i: (self.down_until[i] > now, i))
        for i in order:
            relay = self.relays[i]
            client = self.factory(relay, self.timeout)
            try:
                await client.connect()
                if getattr(client, "is_ehlo_or_helo_needed", True):  # connect may have done it
                    await client.ehlo()
            except CONNECT_ERRORS as exc:
                client.close()
                self.down_until[i] = time.monotonic() + RELAY_COOLDOWN
                errors.append(f"{relay.name}: {exc.__class__.__name__}: {exc}")
                continue
            self.down_until[i] = 0.0
            return client, relay
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
            # Every message is 7bit (quoted-printable bodies, RFC 2047 headers): any relay
            # takes it as it is, 8BITMIME or not, and none needs to re-encode (and so break
            # the DKIM signature of) a body.
            self.client, self.relay = await self.relays.connect()
            self.used, self.last_used = 0, time.monotonic()
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
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                # arrives as QUIT is answered, and a stopping mailer would then carry on.
                async with asyncio.timeout(2):
                    await client.quit()
            except Exception:  # noqa: BLE001 - leaving anyway: however QUIT fails, we close
                client.close()
        else:
            client.close()


class _FastProtocol(SMTPProtocol):
    """aiosmtplib's protocol with two additions for the engine's one-recipient transactions.

    - A Wire goes out as it is at DATA (no per-message line-ending and dot-stuffing passes);
      any other message goes aiosmtplib's usual way.
    - `pipelined` sends MAIL, RCPT and DATA in one write and reads their three replies
      together (RFC 2920), used when the server offers PIPELINING: two round trips and two
      writes a message instead of four. aiosmtplib's own reader keeps one reply and drops
      the rest, so while a batch is outstanding, replies are parsed here.
    """

    _batch: asyncio.Future[list[SMTPResponse]] | None = None
    _batch_want = 0
    _batch_replies: list[SMTPResponse]

    @override  # aiosmtplib's signature, `timeout` and all
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
            return await self._send_wire(message, timeout)

    async def _send_wire(self, message: bytes, reply_timeout: float | None) -> SMTPResponse:
        self._response_pending = True
        self.write(message)
        response = await self.read_response(timeout=reply_timeout)
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    async def pipelined(
        self, envelope: tuple[str, str], message: Wire, size: bool, reply_timeout: float | None
    ) -> SMTPResponse:
        """MAIL, RCPT and DATA in one write, then the message: one transaction, one recipient.

        Each reply is waited for up to `reply_timeout` seconds, as aiosmtplib waits for one.
        Raises what aiosmtplib's own calls would: SMTPSenderRefused, SMTPRecipientRefused,
        SMTPDataError, SMTPServerDisconnected or SMTPReadTimeoutError.
        """
        if self._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        sender, recipient = envelope
        async with self._command_lock:
            mail_reply, rcpt_reply, data_reply = await self._exchange(
                b"MAIL " + _mail_arguments(sender, message, size) + b"\r\n"
                b"RCPT TO:<" + recipient.encode() + b">\r\nDATA\r\n",
                3,
                reply_timeout,
            )
            if data_reply.code == SMTPStatus.start_input and (
                mail_reply.code != SMTPStatus.completed
                or rcpt_reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward)
            ):
                # A server that accepts DATA with no valid recipient gets an empty message,
                # which it must then refuse (RFC 2920 §3.1); the caller's RSET follows.
                await self._exchange(b".\r\n", 1, reply_timeout)
            if mail_reply.code != SMTPStatus.completed:
                raise aiosmtplib.SMTPSenderRefused(mail_reply.code, mail_reply.message, sender)
            if rcpt_reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
                raise aiosmtplib.SMTPRecipientRefused(
                    rcpt_reply.code, rcpt_reply.message, recipient
                )
            if data_reply.code != SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(data_reply.code, data_reply.message)
            return await self._send_wire(message, reply_timeout)

    async def _exchange(
        self, data: bytes, replies: int, reply_timeout: float | None
    ) -> list[SMTPResponse]:
        if self._response_waiter is None or self.transport is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        batch = self._batch = self._loop.create_future()
        self._batch_want, self._batch_replies = replies, []
        self.write(data)
        try:
            return await asyncio.wait_for(batch, reply_timeout)
        except TimeoutError as exc:
            raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc
        finally:
            self._batch = None

    def data_received(self, data: bytes) -> None:
        batch = self._batch
        if batch is None or batch.done():
            super().data_received(data)
            return
        self._buffer.extend(data)
        try:
            while (reply := self._read_response_from_buffer()) is not None:
                self._batch_replies.append(reply)
                if len(self._batch_replies) == self._batch_want:
                    batch.set_result(self._batch_replies)
                    return
        # A malformed or oversized reply, as aiosmtplib raises it. Like aiosmtplib's own
        # data_received, any error goes to the waiting command: raised here, it would only
        # reach the event loop's log, and the command would wait for its timeout.
        except Exception as exc:  # noqa: BLE001 - a protocol callback hands every error on
            batch.set_exception(exc)

    def _fail_batch(self, exc: Exception) -> None:
        if self._batch is not None and not self._batch.done():
            self._batch.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail_batch(lost)
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        self._fail_batch(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return super().eof_received()


def _fast_capable(protocol: object) -> bool:
    # The subclass relies on these protocol internals (aiosmtplib 5); without them, or with a
    # protocol we do not know, every message takes aiosmtplib's own path.
    return type(protocol) is SMTPProtocol and all(
        hasattr(protocol, name)
        for name in (
            "_command_lock",
            "_response_pending",
            "_response_waiter",
            "_buffer",
            "_loop",
            "_read_response_from_buffer",
            "write",
            "read_response",
        )
    )


def _mail_arguments(sender: str, data: bytes, size: bool) -> bytes:
    mail = b"FROM:<" + sender.encode() + b">"
    return mail + b" SIZE=%d" % len(data) if size else mail


async def transmit(client: SmtpClient, sender: str, recipient: str, data: bytes) -> None:
    """One SMTP transaction: MAIL (with SIZE), RCPT, DATA. Raises aiosmtplib's errors.

    `data` is a plain message or a Wire; a Wire to a server that offers PIPELINING goes in
    two round trips. Addresses are already normalised (members.py and the config's checks),
    so the address parsing aiosmtplib's sendmail repeats for every message is skipped.
    """
    smtp = cast(aiosmtplib.SMTP, client)
    size = smtp.supports_extension("size")
    try:
        if type(data) is Wire:
            if _fast_capable(smtp.protocol):  # the first message on this connection
                smtp.protocol.__class__ = _FastProtocol
            protocol = smtp.protocol
            if type(protocol) is _FastProtocol:
                if smtp.supports_extension("pipelining"):
                    await protocol.pipelined((sender, recipient), data, size, smtp.timeout)
                    return
            else:
                data = unwire(data)
        reply = await smtp.execute_command(b"MAIL", _mail_arguments(sender, data, size))
        if reply.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        reply = await smtp.execute_command(b"RCPT", b"TO:<" + recipient.encode() + b">")
        if reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
        await smtp.data(data)
    except aiosmtplib.SMTPResponseException:
        # Reset the envelope for the next message, as sendmail does; if that fails the
        # connection is gone, which the next message finds out.
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPException):
            await smtp.rset()
        raise
