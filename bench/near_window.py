"""Case 10d: the near cache's window, measured across two processes.

A writer process commits through a ``listen()``ed sync ``Session`` (no FastRDB instance) and
reports when each ``commit()`` returned; this process reads the row with the near cache on, in
a tight loop, and records when each read began, what it returned, and when its tracker applied
the invalidation of the row's key. The commits are paced by a pipe handshake: the next one is
asked for only once the previous value is served from the near cache, so every commit has a
near entry to drop.

Both processes read ``CLOCK_MONOTONIC`` (``time.clock_gettime_ns``): on Linux it is one
system-wide clock, not a per-process one, and unlike ``CLOCK_REALTIME`` it is never stepped.
The handshake checks it: every commit must return after this process asked for it.

Run as a module, it is the writer: ``python -m bench.near_window DB_URL REDIS_URL EMAIL``
reads ``go <value>`` lines on stdin and answers ``<value> <ns when commit() returned>``.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYNC_DRIVERS = {"+aiosqlite": "", "+asyncpg": "+psycopg", "+asyncmy": "+pymysql"}


def now() -> int:
    """Nanoseconds on the clock both processes share."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def sync_url(url: str) -> str:
    """The bench's async database URL with the matching sync driver (for the writer)."""
    for async_driver, sync_driver in SYNC_DRIVERS.items():
        url = url.replace(async_driver, sync_driver, 1)
    return url


@dataclass
class Window:
    commits: int
    applied_us: list[float]
    """Per commit: when this process applied its invalidation minus when ``commit()``
    returned in the writer, µs (negative: before it returned)."""
    stale_after_us: list[float]
    """Reads served a value older than a commit that had returned before they began: how long
    after the return each began, µs."""
    read_gap_us: float
    """Median time between the starts of two reads: the loop's resolution."""
    clock_disagreements: int
    """Commits that returned before this process asked for them (the clocks disagree)."""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(
    url: str, redis_url: str, crud: Any, maker: Any, client: Any, commits: int
) -> Window:
    """Run the writer process against row 7 and read it with ``crud`` (near cache on)."""
    email, key = "u7@bench.io", "bench:account:u7@bench.io"
    async with maker() as db:
        got = await crud.get(db=db, redis=client, email=email)  # publishes the pattern
        cache = crud._near.of(client)
        tracker = cache.tracker
        applied: list[int] = []
        original = tracker.invalidate

        def recording(names: Any) -> None:
            names = None if names is None else list(names)
            if names is None or key in names:
                applied.append(now())
            original(names)

        tracker.invalidate = recording
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.near_window",
            sync_url(url),
            redis_url,
            email,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        returned: dict[int, int] = {}
        asked: dict[int, int] = {}

        async def answers() -> None:
            assert process.stdout is not None
            while line := await process.stdout.readline():
                value, at = line.split()
                returned[int(value)] = int(at)

        reader = asyncio.create_task(answers())
        reads: list[tuple[int, int]] = []
        current, waiting = got.counter, False
        try:
            async with asyncio.timeout(max(120, commits)):
                while len(asked) < commits or waiting:
                    if process.returncode is not None:
                        break  # the writer died: reported below
                    hits = crud.stats()["near_hits"]
                    started = now()
                    got = await crud.get(db=db, redis=client, email=email)
                    reads.append((started, got.counter))
                    if waiting and got.counter > current:
                        current, waiting = got.counter, False
                    if not waiting and len(asked) < commits and crud.stats()["near_hits"] > hits:
                        asked[current + 1] = now()
                        process.stdin.write(f"go {current + 1}\n".encode())
                        waiting = True
                    await asyncio.sleep(0)  # let the pipes and the event loop run
                process.stdin.close()
                await process.wait()
                await reader
        finally:
            tracker.invalidate = original
            if process.returncode is None:
                process.kill()
                await process.wait()
    if process.returncode != 0 or set(returned) != set(asked):
        raise RuntimeError(f"case 10d: the writer process failed ({process.returncode})")
    applied_us = []
    for value, asked_at in asked.items():
        first = next((at for at in applied if at > asked_at), None)
        if first is None:
            raise RuntimeError(f"case 10d: commit {value}'s invalidation was never applied")
        applied_us.append((first - returned[value]) / 1000)
    stale = []  # commits return in value order: the first one newer than a read is value + 1
    for started, value in reads:
        newer = returned.get(value + 1)
        if newer is not None and newer < started:
            stale.append((started - newer) / 1000)
    starts = [started for started, _ in reads]
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(starts)]
    return Window(
        commits=len(asked),
        applied_us=applied_us,
        stale_after_us=stale,
        read_gap_us=statistics.median(gaps),
        clock_disagreements=sum(1 for v, at in asked.items() if returned[v] < at),
    )


def writer(db_url: str, redis_url: str, email: str) -> None:
    """Commit each asked value through a listened sync session; say when commit() returned."""
    import redis
    from sqlalchemy import create_engine, update
    from sqlalchemy.orm import sessionmaker

    from bench.run import Account
    from fastrdb.events import listen

    maker = sessionmaker(create_engine(db_url))
    listen(maker, redis.Redis.from_url(redis_url, socket_timeout=5))
    for line in sys.stdin:
        value = int(line.split()[1])
        with maker() as session:
            session.execute(update(Account).where(Account.email == email).values(counter=value))
            session.commit()
        print(value, now(), flush=True)


if __name__ == "__main__":
    writer(*sys.argv[1:4])
