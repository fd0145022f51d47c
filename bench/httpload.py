"""A bounded keep-alive HTTP/1.1 load client: N connections, a warm-up, a timed window, every latency.

Run in a process of its own (so that it does not share a GIL with the server it measures):
each connection sends its next request as soon as the previous answer is complete (a closed
loop, as many requests in flight as connections), requests are taken in turn from one list
shared by all connections, and a response counts when it completes inside the window. The
result is one JSON object on stdout. bench/web.py drives it; it also works by hand:

    .venv/bin/python bench/httpload.py --port 8000 --path / --path /archive --seconds 3

It is written on asyncio's Protocol API (no coroutine per request) with a minimal response
parser, so that one core drives well over 10,000 requests a second; `--watch-pid` reports
the CPU a server process spent during the same window, and the client reports its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def process_cpu(pid: int) -> float:
    """CPU-seconds (user + system, all threads) of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy() -> float:
    """Busy CPU-seconds of the whole machine since boot (/proc/stat: all but idle and iowait)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


# One request: (path, body), or (path, body, headers of its own) such as a member's cookie.
Item = tuple[str, str] | tuple[str, str, dict[str, str]]


@dataclass
class Spec:
    """What to send: one method and header set, a list of requests taken in turn."""

    method: str
    items: list[Item]
    expect: frozenset[int] = frozenset({200})
    headers: dict[str, str] = field(default_factory=dict)

    def raw(self, host: str) -> list[bytes]:
        out = []
        for item in self.items:
            path, body = item[0], item[1]
            own: dict[str, str] = item[2] if len(item) > 2 else {}
            data = body.encode()
            lines = [f"{self.method} {path} HTTP/1.1", f"Host: {host}", f"User-Agent: {USER_AGENT}"]
            lines += [f"{k}: {v}" for k, v in {**self.headers, **own}.items()]
            if data or self.method not in ("GET", "HEAD"):
                lines.append(f"Content-Length: {len(data)}")
            out.append(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        return out

    @classmethod
    def load(cls, path: Path) -> Spec:
        d = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            d["method"],
            [(i[0], i[1], dict(i[2])) if len(i) > 2 else (i[0], i[1]) for i in d["items"]],
            frozenset(d.get("expect", [200])),
            dict(d.get("headers", {})),
        )

    def dump(self, path: Path) -> None:
        d = {
            "method": self.method,
            "items": self.items,
            "expect": sorted(self.expect),
            "headers": self.headers,
        }
        path.write_text(json.dumps(d), encoding="utf-8")


class Run:
    """The shared state of one measurement: the request ring, the clock marks and the tallies."""

    def __init__(self, requests: list[bytes], expect: frozenset[int], args: argparse.Namespace):
        self.requests, self.expect = requests, expect
        self.next = 0
        self.timeout = args.timeout
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.first_error = ""
        self.in_flight = 0
        self.stopping = False
        self.drained = asyncio.get_running_loop().create_future()
        self.window_start = self.window_end = 0.0

    def in_window(self, now: float) -> bool:
        return self.window_start <= now < self.window_end

    def error(self, kind: str, now: float, detail: str = "") -> None:
        if self.in_window(now):
            self.errors[kind] += 1
            if not self.first_error:
                self.first_error = f"{kind}: {detail}"[:300]

    def take(self) -> bytes | None:
        if self.stopping:
            return None
        request = self.requests[self.next % len(self.requests)]
        self.next += 1
        return request

    def finished(self) -> None:
        self.in_flight -= 1
        if self.stopping and self.in_flight == 0 and not self.drained.done():
            self.drained.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection: send, parse the answer, send the next."""

    def __init__(self, run: Run, reconnect: asyncio.Queue[None]) -> None:
        self.run, self.reconnect = run, reconnect
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.started = 0.0
        self.busy = False
        self.status = 0
        self.need = -1  # body bytes still expected; -1 while reading headers, -2 in chunks
        self.keep_alive = True

    # --- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self.parse()
        except ValueError as exc:
            self.fail("bad response", str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.busy = False
            self.run.error("connection lost", time.perf_counter(), str(exc or "closed by server"))
            self.run.finished()
        self.transport = None
        if not self.run.stopping:
            self.reconnect.put_nowait(None)

    # --- requests and responses -------------------------------------------------------------

    def send(self) -> None:
        request = self.run.take()
        if request is None or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return
        self.busy, self.started = True, time.perf_counter()
        self.run.in_flight += 1
        self.transport.write(request)

    def fail(self, kind: str, detail: str) -> None:
        """Count an error and drop the connection (its state is unknown); a new one replaces it."""
        if self.busy:
            self.busy = False
            self.run.error(kind, time.perf_counter(), detail)
            self.run.finished()
        self.buf.clear()
        if self.transport is not None:
            self.transport.abort()

    def parse(self) -> None:
        buf = self.buf
        while self.busy:
            if self.need == -1:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                self.status = int(head[9:12])
                self.keep_alive = b"\r\nconnection: close" not in head
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    self.need = int(head[at + 17 : stop if stop >= 0 else len(head)])
                elif b"\r\ntransfer-encoding: chunked" in head:
                    self.need = -2
                elif self.status in (204, 304) or self.status < 200:
                    self.need = 0
                else:
                    raise ValueError("a response with neither Content-Length nor chunks")
            if self.need == -2:
                if not self.chunks():
                    return
            elif len(buf) < self.need:
                return
            else:
                del buf[: self.need]
            self.complete()

    def chunks(self) -> bool:
        """Consume whole chunks from the buffer; True once the last (empty) chunk is in."""
        buf = self.buf
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if buf[line_end : line_end + 4] == b"\r\n\r\n" or trailer_end >= 0:
                    stop = trailer_end if trailer_end >= 0 else line_end
                    del buf[: stop + 4]
                    return True
                return False
            if len(buf) < line_end + 2 + size + 2:
                return False
            del buf[: line_end + 2 + size + 2]

    def complete(self) -> None:
        now = time.perf_counter()
        run = self.run
        self.busy, self.need = False, -1
        if run.in_window(now):
            if self.status in run.expect:
                run.latencies.append(now - self.started)
            else:
                run.error(f"status {self.status}", now, f"HTTP {self.status}")
        run.finished()
        if self.keep_alive:
            self.send()
        elif self.transport is not None:
            self.transport.close()  # connection_lost asks for a new one

    def overdue(self, now: float) -> bool:
        return self.busy and now - self.started > self.run.timeout


class Pool:
    """The connections: opened, opened again when one closes, and watched for overdue answers."""

    def __init__(self, run: Run, args: argparse.Namespace) -> None:
        self.run, self.args = run, args
        self.reconnect: asyncio.Queue[None] = asyncio.Queue()
        self.conns: list[Connection] = []
        self.connect_failures = 0

    async def connect(self) -> None:
        args, run = self.args, self.run
        conn = Connection(run, self.reconnect)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: conn, args.host, args.port), args.timeout
            )
        except (OSError, TimeoutError) as exc:
            self.connect_failures += 1
            run.error("connect failed", time.perf_counter(), str(exc))
            if self.connect_failures > 10 * args.connections:
                raise SystemExit(f"cannot connect to {args.host}:{args.port}: {exc}") from None
            await asyncio.sleep(0.05)
            self.reconnect.put_nowait(None)
            return
        self.conns.append(conn)

    async def keep_connected(self) -> None:
        while True:
            await self.reconnect.get()
            if not self.run.stopping:
                await self.connect()

    async def watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.perf_counter()
            for conn in self.conns:
                if conn.overdue(now):
                    conn.fail("timeout", f"no complete answer in {self.args.timeout:g} s")
            self.conns[:] = [c for c in self.conns if c.transport is not None]

    def close(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()


async def drive(spec: Spec, args: argparse.Namespace) -> dict[str, Any]:
    run = Run(spec.raw(f"{args.host}:{args.port}"), spec.expect, args)
    pool = Pool(run, args)

    start = time.perf_counter()
    run.window_start = start + args.warmup
    run.window_end = run.window_start + args.seconds
    helpers = [asyncio.create_task(pool.keep_connected()), asyncio.create_task(pool.watchdog())]
    await asyncio.gather(*(pool.connect() for _ in range(args.connections)))

    await asyncio.sleep(max(0.0, run.window_start - time.perf_counter()))
    marks_before = marks(args.watch_pid)
    sent_before = run.next
    await asyncio.sleep(max(0.0, run.window_end - time.perf_counter()))
    marks_after = marks(args.watch_pid)
    sent_in_window = run.next - sent_before

    # Stop sending and let the requests in flight finish, so that the server is idle when
    # the next measurement starts; they are not counted (they complete after the window).
    run.stopping = True
    if run.in_flight == 0 and not run.drained.done():
        run.drained.set_result(None)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(run.drained), args.timeout)
    left_in_flight = run.in_flight
    for task in helpers:
        task.cancel()
    pool.close()

    lat = sorted(run.latencies)
    cpu = {k: marks_after[k] - marks_before[k] for k in marks_before}
    return {
        "ok": len(lat),
        "sent": sent_in_window,
        "seconds": args.seconds,
        "rps": len(lat) / args.seconds,
        "p50_ms": percentile(lat, 0.50) * 1000,
        "p90_ms": percentile(lat, 0.90) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "max_ms": (lat[-1] if lat else math.nan) * 1000,
        "errors": dict(run.errors),
        "first_error": run.first_error,
        "left_in_flight": left_in_flight,
        "client_cpu_s": cpu["client"],
        "watched_cpu_s": cpu.get("watched", math.nan),
        "machine_busy_s": cpu["machine"],
        "cores": os.cpu_count() or 1,
    }


def marks(watch_pid: int | None) -> dict[str, float]:
    out = {"client": time.process_time(), "machine": machine_busy()}
    if watch_pid:
        with contextlib.suppress(OSError):
            out["watched"] = process_cpu(watch_pid)
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (NaN when it is empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        epilog="Prints one JSON object: ok, rps, p50_ms, p90_ms, p99_ms, max_ms, errors, "
        "client_cpu_s, watched_cpu_s, machine_busy_s.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="the server's address (default 127.0.0.1)")
    add("--port", type=int, required=True, help="the server's port")
    add(
        "--spec",
        type=Path,
        help="a JSON file: method, items [[path, body] or [path, body, {headers}], ...], "
        "expect, headers",
    )
    add("--path", action="append", default=[], help="a GET path (repeatable; instead of --spec)")
    add("--connections", type=int, default=50, help="concurrent keep-alive connections (50)")
    add("--warmup", type=float, default=1.0, help="seconds of load before the window (1)")
    add("--seconds", type=float, default=5.0, help="the measured window in seconds (5)")
    add(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds a request, connect or the final drain may take before it counts as "
        "an error and the connection is dropped (10)",
    )
    add("--watch-pid", type=int, help="also report this process's CPU-seconds in the window")
    args = parser.parse_args(argv)
    if not args.spec and not args.path:
        parser.error("give --spec or at least one --path")
    if args.connections < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--connections must be >= 1, --seconds > 0, --warmup >= 0")
    return args


def main() -> None:
    args = parse_args()
    spec = Spec.load(args.spec) if args.spec else Spec("GET", [(p, "") for p in args.path])
    try:
        result = asyncio.run(drive(spec, args))
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C reaches the whole process group; the benchmark reports it
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
