"""Reading the audit log (every use-case writes its own entry: see unit.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from newsletter.services.unit import Unit
from newsletter.storage import audit as rows


@dataclass(frozen=True, slots=True)
class AuditInfo:
    at: dt.datetime
    actor: str
    action: str
    issue_id: int | None
    member_id: int | None
    detail: str


def recent(unit: Unit, limit: int = 100, *, member_id: int | None = None) -> list[AuditInfo]:
    """The newest entries first (of one member's, when member_id is given)."""
    return [
        AuditInfo(r.at, r.actor, r.action, r.issue_id, r.member_id, r.detail)
        for r in rows.newest(unit.session, max(1, min(limit, 1000)), member_id=member_id)
    ]
