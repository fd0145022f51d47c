"""pool.transmit's pipelined transaction (RFC 2920), against a scripted server over TCP.

The server below answers MAIL, RCPT and DATA only once all three have arrived, so a client
that waits for each reply before the next command never gets one and times out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiosmtplib
import pytest

from newsletter.content.layout import Wire
from newsletter.delivery.smtp import transmit

MESSAGE = Wire(b"Subject: hi\r\n\r\nline\r\n..dotted\r\n.\r\n")


class Scripted:
    """Replies for each transaction's MAIL, RCPT and DATA, given all at once after DATA."""

    def __init__(self, replies: list[tuple[bytes, bytes, bytes]], pipelining: bool = True):
        self.replies = replies
        self.pipelining = pipelining
        self.chunks: list[bytes] = []  # what arrived, read by read
        self.messages: list[bytes] = []
        self.commands: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(b"220 scripted ESMTP\r\n")
        await reader.readline()  # EHLO
        extensions = [b"8BITMIME", b"SIZE 100000"] + ([b"PIPELINING"] if self.pipelining else [])
        writer.write(b"250-scripted\r\n" + b"".join(b"250-%s\r\n" % e for e in extensions))
        writer.write(b"250 HELP\r\n")
        for mail, rcpt, data in self.replies:
            lines: list[bytes] = []
            while len(lines) < 3:  # MAIL, RCPT, DATA: no reply until all three are here
                line = await reader.readline()
                if not line:
                    return
                lines.append(line)
                self.commands.append(line.split()[0])
            writer.write(mail + b"\r\n" + rcpt + b"\r\n" + data + b"\r\n")
            if data.startswith(b"354"):
                body = b""
                while (line := await reader.readline()) not in (b".\r\n", b""):
                    body += line
                ok = mail.startswith(b"250") and rcpt.startswith(b"250")
                self.messages.append(body if ok else b"")
                writer.write(b"250 queued\r\n" if ok else b"554 no valid recipients\r\n")
            if not (
                mail.startswith(b"250") and rcpt.startswith(b"250") and data.startswith(b"354")
            ):
                line = await reader.readline()  # the client's RSET after a refusal
                self.commands.append(line.split()[0])
                writer.write(b"250 reset\r\n")
        with contextlib.suppress(ConnectionError):
            await reader.readline()  # QUIT
            writer.write(b"221 bye\r\n")
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def connected(server: Scripted) -> AsyncIterator[aiosmtplib.SMTP]:
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=2)
    await client.connect()  # EHLO included
    try:
        yield client
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()
        client.close()
        for writer in server.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        listener.close()
        await listener.wait_closed()


async def test_pipelined_transactions_share_one_connection() -> None:
    ok = (b"250 sender ok", b"250 recipient ok", b"354 go ahead")
    server = Scripted([ok, ok, ok])
    async with connected(server) as client:
        for n in range(3):
            await transmit(client, "bounces@example.org", f"m{n}@example.org", MESSAGE)
    assert server.messages == [b"Subject: hi\r\n\r\nline\r\n..dotted\r\n"] * 3
    assert server.commands == [b"MAIL", b"RCPT", b"DATA"] * 3


async def test_refused_recipient_in_a_pipelined_batch() -> None:
    ok = (b"250 sender ok", b"250 recipient ok", b"354 go ahead")
    refused = (b"250 sender ok", b"550 5.1.1 no such user", b"554 5.5.1 no valid recipients")
    server = Scripted([refused, ok])
    async with connected(server) as client:
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
            await transmit(client, "bounces@example.org", "gone@example.org", MESSAGE)
        assert (info.value.code, info.value.recipient) == (550, "gone@example.org")
        await transmit(client, "bounces@example.org", "next@example.org", MESSAGE)
    assert server.commands == [b"MAIL", b"RCPT", b"DATA", b"RSET", b"MAIL", b"RCPT", b"DATA"]
    assert len(server.messages) == 1


async def test_data_accepted_after_a_refused_recipient_gets_an_empty_message() -> None:
    # A server that says 354 although RCPT failed must get no message: the client ends the
    # data at once, and the refusal is what the caller sees.
    lax = (b"250 sender ok", b"550 5.1.1 no such user", b"354 go ahead")
    server = Scripted([lax])
    async with connected(server) as client:
        with pytest.raises(aiosmtplib.SMTPRecipientRefused):
            await transmit(client, "bounces@example.org", "gone@example.org", MESSAGE)
    assert server.messages == [b""]  # recorded as refused: nothing but the end of data came


async def test_refused_sender_and_refused_data() -> None:
    server = Scripted(
        [
            (b"451 4.3.0 sender check failed", b"503 need MAIL", b"503 need RCPT"),
            (b"250 ok", b"250 ok", b"452 4.3.1 out of storage"),
        ]
    )
    async with connected(server) as client:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as sender:
            await transmit(client, "bounces@example.org", "a@example.org", MESSAGE)
        with pytest.raises(aiosmtplib.SMTPDataError) as data:
            await transmit(client, "bounces@example.org", "b@example.org", MESSAGE)
    assert (sender.value.code, data.value.code) == (451, 452)


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    # This server needs all three commands before it answers, so a lockstep client stalls
    # here: that it times out shows transmit pipelines only when PIPELINING is offered.
    ok = (b"250 sender ok", b"250 recipient ok", b"354 go ahead")
    server = Scripted([ok], pipelining=False)
    async with connected(server) as client:
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await transmit(client, "bounces@example.org", "a@example.org", MESSAGE)
    assert server.messages == []


async def test_dropped_connection_mid_batch_is_a_disconnect() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.writers.append(writer)
        writer.write(b"220 x\r\n")
        await reader.readline()
        writer.write(b"250-x\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
        await reader.readline()  # MAIL
        writer.write(b"250 sender ok\r\n")
        writer.close()  # gone before RCPT's and DATA's replies

    server = Scripted([])
    server.serve = hang_up  # type: ignore[method-assign]
    async with connected(server) as client:
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await transmit(client, "bounces@example.org", "a@example.org", MESSAGE)
