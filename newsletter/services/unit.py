"""Units of work: one transaction a use-case, its audit entries inside it, its effects after commit.

A use-case is a plain function whose first argument is a `Unit`:

    def unsubscribe(unit: Unit, member_id: int, ...) -> Result:
        ...
        unit.audit("unsubscribe", member_id=member_id, detail="one-click")

`Services.run(actor, fn, ...)` opens a transaction, calls it, writes the audit entries it
asked for in that same transaction, commits, and only then runs what it registered with
`unit.after_commit` (waking the mailer, dropping a cache). Either the action and its audit entry
are both stored or neither is. The doors (CLI, desk, API, scheduler, member pages) call the same
function; async doors go through newsletter/services/boundary.py, so none of this runs on an
event loop.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Concatenate, ParamSpec, TypeVar

from jinja2 import Environment
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings, WordingSettings
from newsletter.content.links import LinkBuilder
from newsletter.errors import NewsletterError
from newsletter.site import environment
from newsletter.storage import audit as audit_rows
from newsletter.storage import hits as hit_rows
from newsletter.storage.models import utcnow
from newsletter.tokens import Signer

P = ParamSpec("P")
T = TypeVar("T")


class Permission(StrEnum):
    """What an editor's role lets them do; a use-case that needs one says so (`requires`)."""

    WRITE = "write"  # items, the next issue's note and settings, previews, test copies
    SEND = "send"  # release, schedule, pause, resume, cancel, retry
    MEMBERS = "members"  # add, edit, unsubscribe, erase, import, export members
    SURVEYS = "surveys"  # make, open and close surveys
    MODERATE = "moderate"  # approve, hide and delete board messages; block members from posting


class Role(StrEnum):
    WRITER = "writer"
    PUBLISHER = "publisher"


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.WRITER: frozenset({Permission.WRITE}),
    Role.PUBLISHER: frozenset(Permission),
}


class Forbidden(NewsletterError, PermissionError):
    """The actor's role does not allow the action; nothing was done."""

    def __init__(self, actor: str, role: Role, permission: Permission) -> None:
        self.actor, self.role, self.permission = actor, role, permission
        super().__init__(f"{actor} is a {role}: a {role} may not {permission} (nothing was done)")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a name for the audit log and, for editors (desk and API), a role. The
    trusted doors (the CLI run by the operator, the scheduler, a member on their own links)
    act without one and may do what their door offers."""

    name: str
    role: Role | None = None

    def may(self, permission: Permission) -> bool:
        return self.role is None or permission in PERMISSIONS[self.role]


def as_actor(actor: str | Actor) -> Actor:
    return actor if isinstance(actor, Actor) else Actor(actor)


# Every use-case, by name: the doors' tests walk this to check each one is audited.
USE_CASES: dict[str, Callable[..., Any]] = {}


def use_case(fn: Callable[Concatenate[Unit, P], T]) -> Callable[Concatenate[Unit, P], T]:
    """Mark a function as a use-case (a state change that writes its own audit entry)."""
    USE_CASES[f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"] = fn
    return fn


# The permission each use-case needs (when its actor has a role), set by `requires`.
REQUIRES: dict[Callable[..., Any], Permission] = {}


def requires(
    permission: Permission,
) -> Callable[[Callable[Concatenate[Unit, P], T]], Callable[Concatenate[Unit, P], T]]:
    """A use-case only an editor whose role has `permission` may run (trusted doors may)."""

    def mark(fn: Callable[Concatenate[Unit, P], T]) -> Callable[Concatenate[Unit, P], T]:
        REQUIRES[fn] = permission
        return fn

    return mark


def check(actor: Actor, fn: Callable[..., Any]) -> None:
    """Forbidden when `actor` may not run the use-case `fn`."""
    needed = REQUIRES.get(fn)
    if needed is not None and not actor.may(needed):
        assert actor.role is not None
        raise Forbidden(actor.name, actor.role, needed)


# A batch's loader: given the session and every (args, kwargs) of one use-case in the batch,
# it brings what they will read into the session in a few queries instead of one each.
Prefetch = Callable[[Session, list[tuple[tuple[Any, ...], dict[str, Any]]]], None]
PREFETCH: dict[Callable[..., Any], Prefetch] = {}


def prefetch(
    loader: Prefetch,
) -> Callable[[Callable[Concatenate[Unit, P], T]], Callable[Concatenate[Unit, P], T]]:
    """Give a use-case a loader the batcher runs once for all its calls in one batch."""

    def mark(fn: Callable[Concatenate[Unit, P], T]) -> Callable[Concatenate[Unit, P], T]:
        PREFETCH[fn] = loader
        return fn

    return mark


@dataclass
class Unit:
    """One transaction of one use-case (or of a batch of them: see boundary.Batcher)."""

    session: Session
    now: dt.datetime
    actor: str
    services: Services
    role: Role | None = None
    audits: list[dict[str, Any]] = field(default_factory=list)
    hits: list[dict[str, Any]] = field(default_factory=list)
    effects: list[Callable[[], None]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def audit(
        self,
        action: str,
        *,
        issue_id: int | None = None,
        member_id: int | None = None,
        detail: str = "",
        actor: str | None = None,
    ) -> None:
        """Record the action in the audit log, in this unit's transaction."""
        self.audits.append(
            {
                "at": self.now,
                "actor": (actor or self.actor)[:200],
                "action": action[:64],
                "issue_id": issue_id,
                "member_id": member_id,
                "detail": detail[:2000],
            }
        )

    def hit(self, **row: Any) -> None:
        """A link hit (evidence for the vote rule), inserted with the unit's other rows."""
        row.setdefault("at", self.now)
        row["ip"] = str(row.get("ip", ""))[:64]
        row["user_agent"] = str(row.get("user_agent", ""))[:300]
        for key in ("issue_id", "survey_id", "option"):
            row.setdefault(key, None)
        self.hits.append(row)

    def after_commit(self, effect: Callable[[], None]) -> None:
        self.effects.append(effect)

    def write(self) -> None:
        """Write the rows collected so far (rows storage staged in the session, hits, audit
        entries) into the transaction."""
        self.session.flush()
        # Storage functions may stage rows to insert with one statement for a whole batch:
        # each registers its writer under a name in session.info["staged"].
        for write_staged in self.session.info.pop("staged", {}).values():
            write_staged(self.session)
        hit_rows.add(self.session, self.hits)
        audit_rows.add(self.session, self.audits)
        self.hits, self.audits = [], []


class Services:
    """What every use-case needs, built once per process: settings, sessions, clock, links."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        self._lock = threading.Lock()
        self._envs: dict[str, Environment] = {}
        # Listeners called after a commit that changed what the named thing shows
        # ("issues", "members", "survey:<id>", "mail"): caches drop entries, the mailer wakes.
        self._listeners: list[Callable[[str], None]] = []

    @functools.cached_property
    def signer(self) -> Signer:
        return Signer(self.settings.require_secret())

    @functools.cached_property
    def links(self) -> LinkBuilder:
        return LinkBuilder(self.settings.list.base_url, self.signer)

    @functools.cached_property
    def env(self) -> Environment:
        """The templates in the list's language."""
        return self.env_for(self.settings.list.language)

    def _wording(self, language: str) -> WordingSettings | None:
        """[wording] is written in the list's language; other languages take the catalog's."""
        return self.settings.wording if language == self.settings.list.language else None

    def env_for(self, language: str) -> Environment:
        """The templates with a language's messages and dates, made once per language."""
        with self._lock:
            env = self._envs.get(language)
            if env is None:
                env = self._envs[language] = environment(
                    self.settings.site_dir, language, self._wording(language)
                )
            return env

    def listen(self, listener: Callable[[str], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def changed(self, what: str) -> None:
        for listener in list(self._listeners):
            listener(what)

    def run(
        self,
        actor: str | Actor,
        fn: Callable[Concatenate[Unit, P], T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Call a use-case as `actor` in a transaction of its own, with its audit entries.
        Forbidden, before anything is read or written, when the actor's role does not allow it."""
        who = as_actor(actor)
        check(who, fn)
        with self.sessions.begin() as session:
            unit = Unit(session, self.clock(), who.name, self, who.role)
            result = fn(unit, *args, **kwargs)
            unit.write()
        for effect in unit.effects:
            effect()
        return result

    def read(
        self, fn: Callable[Concatenate[Unit, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call a query in a session that is rolled back afterwards, whatever it did."""
        with self.sessions() as session:
            try:
                return fn(Unit(session, self.clock(), "read", self), *args, **kwargs)
            finally:
                session.rollback()
