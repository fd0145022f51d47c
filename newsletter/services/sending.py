"""Sending: release the next issue (a use-case), then run the delivery engine over its rows.

Everything that touches the database or compiles runs in a thread (asyncio.to_thread), so the
event loop only drives SMTP. The same functions serve `newsletter send`, `worker`, `retry`,
the desk's and the API's "send now", and the scheduler.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from newsletter.config import Settings
from newsletter.content import compiler
from newsletter.content.personalize import Personalizer
from newsletter.content.variants import Variants
from newsletter.delivery.engine import Engine, IssuePaused, Summary
from newsletter.delivery.smtp import ClientFactory, aiosmtplib_client
from newsletter.errors import NothingToSend
from newsletter.services import issues, variants
from newsletter.services.unit import Actor, Services, Unit
from newsletter.storage import issues as issue_rows
from newsletter.storage import variants as variant_rows
from newsletter.storage.ledger import Outcome, new_owner
from newsletter.storage.models import Issue, IssueVariant
from newsletter.tokens import Signer

if TYPE_CHECKING:
    from newsletter.delivery.signing import DkimSigner

__all__ = ["IssuePaused", "NothingToSend", "Run", "deliver", "dkim_signer", "retry", "send"]


def dkim_signer(settings: Settings) -> DkimSigner | None:
    """The configured DKIM signer; dkimpy and cryptography are imported only when there is one."""
    if settings.dkim is None:
        return None
    from newsletter.delivery.signing import signer_for

    return signer_for(settings)


@dataclass
class Run:
    """What one send needs besides settings: the SMTP client, progress and engine hooks."""

    client_factory: ClientFactory = aiosmtplib_client
    progress: Callable[[Outcome], None] | None = None
    on_start: Callable[[Engine, int], None] | None = None
    owner: str = ""


def _issue(unit: Unit, issue_id: int) -> Issue:
    row = issue_rows.get(unit.session, issue_id)
    if row is None:
        raise issues.NotFound(f"there is no issue #{issue_id}")
    unit.session.expunge(row)  # the engine keeps it after this session ends
    return row


def _with_variants(unit: Unit, issue_id: int) -> tuple[Issue, list[IssueVariant]]:
    others = list(variant_rows.of_issue(unit.session, issue_id))
    for kept in others:
        unit.session.expunge(kept)
    return _issue(unit, issue_id), others


def messages(
    settings: Settings, signer: Signer, issue: Issue, others: list[IssueVariant]
) -> Variants:
    """The issue's own copy and each variant laid out once, cut at their slots."""
    own = compiler.from_row(issue)
    personalizers = {0: Personalizer(own, settings, signer, issue.id)}
    for v in others:
        compiled = dataclasses.replace(own, subject=v.subject, html=v.html, text=v.text)
        personalizers[v.id] = Personalizer(
            compiled, variants.settings_in(settings, v.language), signer, issue.id
        )
    return Variants(personalizers)


async def deliver(services: Services, issue_id: int, run: Run | None = None) -> Summary:
    """Run the delivery engine on one issue until nothing is left to try now."""
    run = run or Run()
    settings = services.settings
    issue, others = await asyncio.to_thread(services.read, _with_variants, issue_id)
    engine = Engine(
        settings,
        services.sessions,
        issue,
        messages(settings, services.signer, issue, others),
        client_factory=run.client_factory,
        progress=run.progress,
        dkim=dkim_signer(settings),
        owner=run.owner or new_owner(),
    )
    if run.on_start:
        info = await asyncio.to_thread(services.read, issues.info, issue.id)
        run.on_start(engine, info.total - info.done)
    return await engine.run()


async def release(
    services: Services,
    actor: str | Actor,
    *,
    schedule: str | None = None,
    slot_at: dt.datetime | None = None,
    with_survey: bool = True,
) -> issues.Released:
    """Compile and release the next issue in a thread (premailer and the snapshot take time)."""
    return await asyncio.to_thread(
        functools.partial(
            services.run,
            actor,
            issues.release_next,
            schedule=schedule,
            slot_at=slot_at,
            with_survey=with_survey,
        )
    )


async def send(services: Services, run: Run | None = None, *, actor: str | Actor) -> list[Summary]:
    """Finish unfinished issues, then send the next one. NothingToSend when there was nothing."""
    services.settings.require_secret()
    summaries: list[Summary] = []
    for issue_id in await asyncio.to_thread(services.read, issues.sending):
        summaries.append(await deliver(services, issue_id, run))
    try:
        released = await release(services, actor)
    except NothingToSend:
        if summaries:
            return summaries
        raise
    summaries.append(await deliver(services, released.issue_id, run))
    return summaries


async def retry(
    services: Services, issue_id: int, run: Run | None = None, *, actor: str | Actor
) -> Summary:
    """Re-queue an issue's failed rows with a fresh retry deadline, and deliver them."""
    await asyncio.to_thread(services.run, actor, issues.requeue_failed, issue_id)
    return await deliver(services, issue_id, run)
