"""The bundled SMTP sink: an aiosmtpd server on loopback that writes each message to an outbox folder."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from newsletter.errors import NewsletterError


class _Pipelined:
    """Offers PIPELINING (RFC 2920): aiosmtpd reads one command line at a time and answers in
    order, so a client's batched MAIL, RCPT and DATA are already handled correctly."""

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]  # the last is "250 HELP"


class OutboxHandler(_Pipelined):
    """Accepts every message and writes it, once per recipient, as one .eml file.

    Like a local delivery agent, it prepends Return-Path and Delivered-To, so the envelope
    can be read from the file.
    """

    def __init__(self, outbox: Path, on_message: Callable[[Path], None] | None = None) -> None:
        self.outbox = outbox
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.on_message = on_message
        self._seq = itertools.count(1)
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        for rcpt in envelope.rcpt_tos:
            trace = f"Return-Path: <{envelope.mail_from}>\r\nDelivered-To: {rcpt}\r\n".encode()
            name = f"{time.time_ns()}-{os.getpid()}-{next(self._seq):06d}.eml"
            tmp = self.outbox / f".{name}.tmp"
            tmp.write_bytes(trace + content)
            tmp.rename(self.outbox / name)  # readers never see a half-written file
            self.count += 1
            if self.on_message:
                self.on_message(self.outbox / name)
        return "250 2.0.0 Message accepted for delivery"


class DiscardHandler(_Pipelined):
    """Accepts and forgets every message, counting them: a fast sink for benchmarks."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += len(envelope.rcpt_tos)
        return "250 2.0.0 Message accepted and discarded"


async def start_server(handler: Any, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """An SMTP server (8BITMIME, SMTPUTF8) on host:port; port 0 picks a free one."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(
            lambda: SMTP(
                handler, enable_SMTPUTF8=True, hostname="newsletter-sink", ident="newsletter sink"
            ),
            host,
            port,
        )
    except OSError as exc:
        # asyncio's own message repeats the address; the errno's words are enough.
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise NewsletterError(f"cannot listen on {host}:{port}: {why}") from None


def bound_port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


class ServerThread:
    """Runs an SMTP server on its own event loop in a thread: for the demo and the tests."""

    def __init__(self, handler: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler, self.host, self.port = handler, host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="smtp-sink", daemon=True
        )
        self._server: asyncio.Server | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_server(self.handler, self.host, self.port), self._loop
        )
        try:
            self._server = future.result(timeout=10)
        except BaseException:
            self.close()
            raise
        self.port = bound_port(self._server)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            # A client may still be connected (a mailer between messages): end its session,
            # which closes the socket, rather than leave the task and socket to the collector.
            sessions = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in sessions:
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)
            await asyncio.sleep(0)  # the transports close on the next turn of the loop

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()


async def serve_forever(handler: Any, host: str, port: int) -> None:
    server = await start_server(handler, host, port)
    async with server:
        await server.serve_forever()
