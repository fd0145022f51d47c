"""The one crossing from an event loop into the service layer, so no database or compile work runs on it.

`Gateway.call` runs a use-case in a worker thread, in a transaction of its own (editors'
actions, previews, sends). `Gateway.submit` hands a use-case to the batcher: one thread that
runs every use-case waiting at that moment in ONE transaction and commits once, then wakes the
requests that were waiting on it. That is how the member pages take the burst of clicks after a
send: each hit and vote is durable before its page is answered, at the cost of one commit per
batch rather than one per click (the delivery engine's recorder does the same with outcomes).

A use-case in a batch that raises rolls the whole batch back; the batch is then re-run one
use-case a transaction, so one bad request never costs the others their work, and a failure
reaches only the request that caused it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from newsletter.services.unit import PREFETCH, Actor, Services, Unit, as_actor, check

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

BATCH_MAX = 256  # use-cases in one transaction at most


@dataclass(slots=True)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    actor: Actor
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():  # the request was cancelled meanwhile (client gone)
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a posted use-case failed", exc_info=future.exception())


class Batcher:
    """One thread, one transaction per batch of waiting use-cases, one wake-up per batch."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0
        self.jobs = 0

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="newsletter-batcher", daemon=True
                    )
                    self._thread.start()

    def submit(self, job: _Job) -> None:
        self._ensure_started()
        self._queue.put(job)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH_MAX:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(job)
            self._work(batch)

    def _work(self, batch: list[_Job]) -> None:
        self.batches += 1
        self.jobs += len(batch)

        try:
            results = self._together(batch)
        # Whatever one use-case raised, none of the batch was stored: each runs again alone,
        # and the exception reaches only the request that caused it (re-raised there).
        except Exception:  # noqa: BLE001
            results = [self._alone(job) for job in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, (ok, value) in zip(batch, results, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, items)

    def _together(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        services = self.services
        units: list[Unit] = []
        results: list[tuple[bool, Any]] = []
        with services.sessions.begin() as session, session.no_autoflush:
            now = services.clock()
            session.info["now"] = now  # the batch's moment, for loaders that count back from it
            # What the batch will read, fetched a few queries for all rather than one each;
            # and no flush before each query: the batch's rows go out together at the end.
            calls: dict[Callable[..., Any], list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
            for job in batch:
                calls.setdefault(job.fn, []).append((job.args, job.kwargs))
            for fn, args in calls.items():
                if fn in PREFETCH:
                    PREFETCH[fn](session, args)
            for job in batch:
                unit = Unit(session, now, job.actor.name, services, job.actor.role)
                results.append((True, job.fn(unit, *job.args, **job.kwargs)))
                units.append(unit)
            # Every unit's hits and audit entries in one statement each, for the whole batch.
            merged = Unit(session, now, "batch", services)
            for unit in units:
                merged.hits += unit.hits
                merged.audits += unit.audits
            merged.write()
        for unit in units:
            for effect in unit.effects:
                effect()
        return results

    def _alone(self, job: _Job) -> tuple[bool, Any]:
        try:
            return True, self.services.run(job.actor, job.fn, *job.args, **job.kwargs)
        # Handed to the waiting request, which raises it: nothing is swallowed here.
        except Exception as exc:  # noqa: BLE001
            return False, exc


class Gateway:
    """Async doors reach the service layer only through here."""

    def __init__(self, services: Services, threads: int = 4) -> None:
        self.services = services
        self._pool = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="newsletter-service"
        )
        self.batcher = Batcher(services)

    async def call(
        self,
        actor: str | Actor,
        fn: Callable[Concatenate[Unit, P], T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run a use-case in a worker thread, in its own transaction."""
        loop = asyncio.get_running_loop()
        work = functools.partial(self.services.run, actor, fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, work)

    async def read(
        self, fn: Callable[Concatenate[Unit, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a query in a worker thread (nothing it does is kept)."""
        loop = asyncio.get_running_loop()
        work = functools.partial(self.services.read, fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, work)

    async def offload(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run plain blocking work (a compile, a password hash) in a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def submit(
        self,
        actor: str | Actor,
        fn: Callable[Concatenate[Unit, P], T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run a short use-case in the next batch; returns once that batch has committed."""
        who = as_actor(actor)
        check(who, fn)  # refused here, before it can take a place in a batch
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.batcher.submit(_Job(fn, args, kwargs, who, loop, future))
        return await future

    def post(
        self,
        actor: str | Actor,
        fn: Callable[Concatenate[Unit, P], T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> asyncio.Future[T]:
        """Put a short use-case in the next batch without waiting for it: for evidence a
        request need not wait on (a click on a redirect, answered at once). A failure is
        logged; a crash before the batch commits loses what it held."""
        who = as_actor(actor)
        check(who, fn)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        future.add_done_callback(_log_failure)
        self.batcher.submit(_Job(fn, args, kwargs, who, loop, future))
        return future

    def close(self) -> None:
        self.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
