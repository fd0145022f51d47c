"""Headless Chromium for the web pages' tests: Debian's /usr/bin/chromium driven by Playwright.

Test modules import the fixtures they use, together with `browser`, which `page` needs:

    from tests.browser import browser, live_server, page  # noqa: F401

`playwright install` cannot download browsers here, so Playwright drives the system Chromium
(`apt-get install chromium`; `.ci/run` installs it). Without it the browser tests are skipped
locally and fail under CI. The sync API is used: browser tests are plain (not async) tests, and
they ask for `page`, whose teardown gives the thread back to asyncio (see `_EventLoopHandoff`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    # The tests run as root, where Chromium's sandbox cannot start.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Containers often have a small /dev/shm; Debian's launcher fails to detect it here.
    "--disable-dev-shm-usage",
    # Tests reach only this machine: no host name but localhost resolves, so a
    # redirect to an item's link elsewhere fails at once, unless the test routes it to a
    # page of its own (Playwright answers those before any lookup).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]
VIEWPORT: ViewportSize = {"width": 1000, "height": 800}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class _EventLoopHandoff:
    """Lets the session's Playwright and asyncio.run() (and pytest-asyncio) share the main thread.

    The sync API runs Playwright's event loop in a greenlet of this thread and, after every
    call, marks that loop as the thread's running loop again, for as long as Playwright is
    started (playwright/_impl/_greenlets.py, wait_for_future). With a session-wide Playwright,
    every later `asyncio.run()` would fail with "cannot be called from a running event loop".
    So between tests the mark is cleared (`release`), and it is set again (`resume`) before the
    next Playwright call, which switches back into that loop.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def capture(self) -> None:
        self.loop = asyncio._get_running_loop()
        if self.loop is None:
            raise RuntimeError("Playwright started without marking its event loop as running")

    def resume(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            asyncio._set_running_loop(self.loop)

    def release(self) -> None:
        asyncio._set_running_loop(None)


_handoff = _EventLoopHandoff()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the whole session."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        message = f"{CHROMIUM} is missing: apt-get install chromium"
        if IN_CI:
            pytest.fail(f"{message} (required in CI)")
        pytest.skip(message)
    playwright = sync_playwright().start()
    _handoff.capture()
    try:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        _handoff.release()
        try:
            yield chromium
        finally:
            _handoff.resume()
            chromium.close()
    finally:
        _handoff.resume()
        # Stopping ends Playwright's loop: afterwards the thread has no running loop.
        playwright.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page in its own context (no cookies or storage shared between tests)."""
    _handoff.resume()
    try:
        context = browser.new_context(viewport=VIEWPORT, java_script_enabled=True)
        try:
            yield context.new_page()
        finally:
            context.close()
    finally:
        _handoff.release()


@contextmanager
def live_server(app: Any, timeout: float = 10.0, port: int = 0) -> Iterator[str]:
    """Serve the ASGI `app` with uvicorn on 127.0.0.1 (a free port) in a thread.

    Yields the base URL, `http://127.0.0.1:PORT`; on exit the server stops and the thread ends.
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",  # the app's mailer sends queued system mail while it runs
        # Plain HTTP/1.1 only: nothing optional (websockets, httptools) is imported.
        http="h11",
        ws="none",
        # Chromium may hold keep-alive connections open; do not wait on them for ever.
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    # Outside the main thread uvicorn installs no signal handlers.
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the live server stopped while starting (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the live server did not start within {timeout} s")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        # It listens once `started` is set; make sure a connection is accepted.
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            pass
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout + 5)
        if thread.is_alive():
            raise RuntimeError("the live server did not stop")
