"""Sends started from the desk or the API: tasks in the server's event loop, one of each name."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from newsletter.errors import NothingToSend
from newsletter.services import issues, mail, sending
from newsletter.services.boundary import Gateway
from newsletter.services.unit import Actor, as_actor, check
from newsletter.storage.models import MailStatus

log = logging.getLogger(__name__)


class Jobs:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.last: dict[str, str] = {}  # job name → how it ended

    def running(self) -> list[str]:
        return sorted(name for name, task in self.tasks.items() if not task.done())

    def start(self, name: str, work: Callable[[], Awaitable[str]]) -> None:
        """Start `work` unless a job of that name is running; Conflict if it is."""
        task = self.tasks.get(name)
        if task is not None and not task.done():
            raise issues.Conflict(f"{name} is already running")
        self.tasks[name] = asyncio.get_running_loop().create_task(self._run(name, work))

    async def _run(self, name: str, work: Callable[[], Awaitable[str]]) -> None:
        try:
            self.last[name] = await work()
        except NothingToSend as exc:
            self.last[name] = str(exc)
        except Exception as exc:  # a background job has nobody to raise to: log it
            log.exception("%s failed", name)
            self.last[name] = f"failed: {exc}"

    async def start_send(self, actor: str | Actor) -> str:
        """Start a send in the background: unfinished issues, then the next one. Forbidden
        at once (not in the background) for a role that may not send."""
        check(as_actor(actor), issues.release_next)
        if not await self.gateway.read(issues.has_work):
            raise issues.Conflict("nothing to send: no new items and no unfinished issue")
        services = self.gateway.services

        async def work() -> str:
            summaries = await sending.send(services, actor=actor)
            return f"send finished: {len(summaries)} issue(s) delivered"

        self.start("send", work)
        return "sending started; the list shows its progress"

    async def send_if_scheduled(self) -> int | None:
        """Release the next issue if its scheduled send is due, and deliver it in the
        background; the issue's number, or None when nothing was due."""
        released = await self.gateway.call("scheduler:send-at", issues.release_scheduled)
        if released is None:
            return None
        services = self.gateway.services

        async def work() -> str:
            await sending.deliver(services, released.issue_id)
            return f"scheduled issue #{released.issue_id} delivered"

        self.start(f"scheduled #{released.issue_id}", work)
        return released.issue_id

    async def start_retry(self, actor: str | Actor, issue_id: int) -> issues.IssueInfo:
        """Queue an issue's failed deliveries again and deliver them in the background."""
        await self.gateway.call(actor, issues.requeue_failed, issue_id)
        services = self.gateway.services

        async def work() -> str:
            await sending.deliver(services, issue_id)
            return f"issue #{issue_id}: failed deliveries retried"

        self.start(f"retry #{issue_id}", work)
        return await self.gateway.read(issues.info, issue_id)

    async def start_resume(self, actor: str | Actor, issue_id: int) -> issues.IssueInfo:
        """Mark a paused issue sending again and deliver it in the background."""
        info = await self.gateway.call(actor, issues.resume, issue_id)
        services = self.gateway.services

        async def work() -> str:
            await sending.deliver(services, issue_id)
            return f"issue #{issue_id} resumed"

        self.start(f"resume #{issue_id}", work)
        return info


async def mail_outcome(
    gateway: Gateway, mail_id: int, seconds: float = 5.0
) -> mail.MailInfo | None:
    """A queued system message as it stands once the mailer has tried it (or `seconds` on):
    an editor's test send reports what the relay said, not just "queued"."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        info = await gateway.read(mail.info, mail_id)
        if (
            info is None
            or info.attempts
            or info.status not in (MailStatus.QUEUED, MailStatus.SENDING)
        ):
            return info
        if asyncio.get_running_loop().time() >= deadline:
            return info
        await asyncio.sleep(0.05)


def describe(to: str, info: mail.MailInfo | None) -> tuple[str, bool]:
    """(what to tell the editor about a test copy, whether it is an error)."""
    if info is None:
        return f"test message to {to} is no longer queued", True
    if info.status == MailStatus.SENT:
        return f"test message sent to {to}", False
    if info.status == MailStatus.FAILED:
        return f"test message to {to} refused: {info.last_message}", True
    why = f": {info.last_message}" if info.last_message else ""
    return f"test message to {to} queued, not sent yet{why}; it is retried", True
