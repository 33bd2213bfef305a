"""The fallback load generator when ``wrk`` is missing: the mix of mix.lua, on asyncio.

Each connection is a keep-alive HTTP/1.1 socket sending one request at a time and logging
every exchange like mix.lua does (a PATCH also as it is sent, kind ``S``). A request that gets
no answer (the server closed the connection, refused it, or took longer than ``timeout``) is
logged with status 599 and the connection is opened again. It spends more CPU per request
than wrk, on the same cores as the server: compare its figures only with each other.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import time
from pathlib import Path

NO_ANSWER = 599


def zipf_cdf(rows: int, s: float) -> list[float]:
    weights = list(itertools.accumulate(1 / rank**s for rank in range(1, rows + 1)))
    return [w / weights[-1] for w in weights]


def shown_name(payload: bytes) -> str:
    """The ``name`` a response body shows, or ``-``."""
    marker = payload.find(b'"name":"')
    if marker < 0:
        return "-"
    start = marker + 8
    return payload[start : payload.index(b'"', start)].decode()


class Client:
    """One keep-alive connection to ``127.0.0.1:port`` that logs each exchange as a line."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.lines: list[str] = []
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._streams
        writer.write(request)
        status_line = await reader.readline()
        length = 0
        while True:
            header = await reader.readline()
            if header in (b"\r\n", b""):
                break
            name, _, value = header.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = await reader.readexactly(length)
        return int(status_line.split()[1]), payload

    async def send(self, row: int, name: str | None = None) -> tuple[int, str]:
        """GET the row, or PATCH its name to ``name``; log and return (status, name shown)."""
        path = f"/users/u{row}@bench.io"
        if name is not None:
            kind, body = "P", f'{{"name":"{name}"}}'.encode()
            request = (
                f"PATCH {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
        else:
            kind, request = "G", f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        started = time.monotonic()
        if name is not None:  # it may commit even if its answer never comes
            self.lines.append(f"S {row} 0 {started * 1e6:.0f} 0 {name}")
        try:
            async with asyncio.timeout(self.timeout):
                status, payload = await self._exchange(request)
            shown = shown_name(payload)
        except (OSError, EOFError, ValueError, IndexError, TimeoutError):
            self.close()
            status, shown = NO_ANSWER, "-"
        finished = time.monotonic()
        self.lines.append(f"{kind} {row} {status} {started * 1e6:.0f} {finished * 1e6:.0f} {shown}")
        return status, shown

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _connection(
    number: int,
    port: int,
    cdf: list[float],
    writes: float,
    seed: int,
    run: int,
    until: float,
    log: Path,
) -> None:
    rng = random.Random(seed * 1000 + number)
    client = Client(port)
    seq = 0
    try:
        while time.monotonic() < until:
            row = bisect.bisect_left(cdf, rng.random()) + 1
            name = None
            if writes and rng.random() < writes:
                seq += 1
                name = f"w{run}-{number}-{seq}"
            status, _ = await client.send(row, name)
            if status == NO_ANSWER:
                await asyncio.sleep(0.05)  # the server may be restarting
    finally:
        client.close()
        log.write_text("".join(line + "\n" for line in client.lines))  # noqa: ASYNC240


async def run(
    port: int,
    *,
    connections: int,
    seconds: float,
    rows: int,
    zipf: float,
    writes: float,
    seed: int,
    run: int,
    log_prefix: Path,
) -> list[Path]:
    cdf = zipf_cdf(rows, zipf)
    until = time.monotonic() + seconds
    logs = [Path(f"{log_prefix}.{n}") for n in range(1, connections + 1)]
    await asyncio.gather(
        *(_connection(n, port, cdf, writes, seed, run, until, log) for n, log in enumerate(logs, 1))
    )
    return logs
