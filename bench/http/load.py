"""The fallback load generator when ``wrk`` is missing: the mix of mix.lua, on asyncio.

Each connection is a keep-alive HTTP/1.1 socket sending one request at a time and logging
every exchange like mix.lua does. It spends more CPU per request than wrk, on the same cores
as the server: compare its figures only with each other.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import time
from pathlib import Path


def zipf_cdf(rows: int, s: float) -> list[float]:
    weights = list(itertools.accumulate(1 / rank**s for rank in range(1, rows + 1)))
    return [w / weights[-1] for w in weights]


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
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = []
    seq = 0
    try:
        while time.monotonic() < until:
            row = bisect.bisect_left(cdf, rng.random()) + 1
            path = f"/users/u{row}@bench.io"
            if writes and rng.random() < writes:
                seq += 1
                kind, body = "P", f'{{"name":"w{run}-{number}-{seq}"}}'.encode()
                head = (
                    f"PATCH {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                request = head + body
            else:
                kind, request = "G", f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
            started = time.monotonic()
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
            finished = time.monotonic()
            status = int(status_line.split()[1])
            shown = "-"
            marker = payload.find(b'"name":"')
            if marker >= 0:
                start = marker + 8
                shown = payload[start : payload.index(b'"', start)].decode()
            lines.append(f"{kind} {row} {status} {started * 1e6:.0f} {finished * 1e6:.0f} {shown}")
    finally:
        writer.close()
        log.write_text("".join(line + "\n" for line in lines))  # noqa: ASYNC240 (after the run)


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
        *(_connection(n, port, cdf, writes, seed, until, log) for n, log in enumerate(logs, 1))
    )
    return logs
