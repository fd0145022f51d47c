"""A long-running command (serve, smtp-sink) in a subprocess, its output read as it comes."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class Running:
    """A started process whose merged stdout/stderr is collected line by line in a thread."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str] | None = None,
        stdin: bool = False,
    ) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: a stop reaches any helpers
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        self._drain()
        return "".join(self.lines)

    def _drain(self) -> bool:
        """Move what has arrived into `lines`; False once the output has ended."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return True
            if line is None:
                self._queue.put(None)
                return False
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        """The first match of `pattern` in the output; fails if the process ends or times out."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            alive = self._drain()
            found = regex.search("".join(self.lines))
            if found:
                return found
            assert alive, (
                f"the process ended ({self.proc.wait()}) before {pattern!r}:\n{self.output}"
            )
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s:\n{self.output}"
            time.sleep(0.1)

    def write(self, text: str) -> None:
        """Type into the process's standard input (opened with stdin=True)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        self._drain()
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):  # stdin's last write may meet a closed pipe
                    stream.close()
        return code

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None or (self.proc.stdout and not self.proc.stdout.closed):
            self.stop(signal.SIGKILL)
