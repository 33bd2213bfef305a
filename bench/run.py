"""Benchmarks, each against a baseline measured in the same process and run.

Machines here are noisy, so every case alternates subject and baseline in rounds and reports
the median ratio and its spread (min..max over rounds), never a lone absolute time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as sync_redis
import redis.asyncio
import structlog
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, event, insert, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench import near_window
from fastrdb import FastRDB, Settings
from fastrdb.cache import store
from fastrdb.cache.health import ClientHealth, health_of
from fastrdb.cache.replicas import Wait
from fastrdb.events import listen
from fastrdb.keys import Namespace

REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
DB_EMPTY, DB_FULL, DB_CASHEWS = 13, 12, 11
URLS = {
    "sqlite": "sqlite+aiosqlite:///{tmp}/bench.db",
    "postgresql": os.environ.get(
        "BENCH_POSTGRESQL_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("BENCH_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"),
}


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "bench_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    counter: Mapped[int] = mapped_column(default=0)


class AccountIn(BaseModel):
    email: str
    name: str
    counter: int = 0


class AccountPatch(BaseModel):
    name: str | None = None
    counter: int | None = None


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    name: str
    counter: int


def make_crud(near: int = 0) -> FastRDB[Account, AccountIn, AccountPatch, AccountOut]:
    return FastRDB[Account, AccountIn, AccountPatch, AccountOut](
        Account,
        AccountOut,
        pattern="bench:account:{email}",
        list_pattern="bench:accounts:{page}:{limit}",
        exp=600,
        settings=Settings(redis_timeout=1.0, near_cache_size=near),
    )


def bench_client(db: int) -> redis.asyncio.Redis:
    """A client as users make it, ``Redis.from_url(url)``: with redis-py 8 it has a 5 s
    ``socket_timeout``, longer than ``redis_timeout``, so FastRDB bounds its own calls too."""
    return redis.asyncio.Redis.from_url(f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}")


@dataclass
class Result:
    case: str
    database: str
    subject: str
    baseline: str
    subject_value: float
    baseline_value: float
    unit: str
    ratio: float
    spread: str
    target: str
    met: bool | None
    note: str = ""


def progress(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


Op = Callable[[], Awaitable[Any]]


async def per_op(op: Op, n: int, clock: Callable[[], float] = time.perf_counter) -> float:
    started = clock()
    for _ in range(n):
        await op()
    return (clock() - started) / n


async def compare(
    subject: Op,
    baseline: Op,
    *,
    n: int,
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float, list[float]]:
    """Median seconds per op of each (wall time, or the given clock), and the per-round
    subject/baseline ratios."""
    await per_op(subject, max(1, n // 10), clock)
    await per_op(baseline, max(1, n // 10), clock)
    subject_times, baseline_times, ratios = [], [], []
    for round_ in range(rounds):
        pair = [(subject, subject_times), (baseline, baseline_times)]
        if round_ % 2:
            pair.reverse()
        measured = {}
        for op, sink in pair:
            value = await per_op(op, n, clock)
            sink.append(value)
            measured[id(sink)] = value
        ratios.append(measured[id(subject_times)] / measured[id(baseline_times)])
    return statistics.median(subject_times), statistics.median(baseline_times), ratios


def ratio_result(
    case: str,
    database: str,
    subject: str,
    baseline: str,
    measured: tuple[float, float, list[float]],
    target: float | None,
    *,
    higher_is_better: bool = False,
    note: str = "",
) -> Result:
    sub, base, ratios = measured
    ratio = statistics.median(ratios)
    met = None if target is None else (ratio >= target if higher_is_better else ratio <= target)
    return Result(
        case,
        database,
        subject,
        baseline,
        sub * 1e6,
        base * 1e6,
        "µs/op",
        ratio,
        f"{min(ratios):.2f}..{max(ratios):.2f}",
        "" if target is None else (f"≥ {target}x" if higher_is_better else f"≤ {target}x"),
        met,
        note,
    )


class SelectCounter:
    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        event.listen(engine.sync_engine, "after_cursor_execute", self._count)

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if (
            statement.lstrip().upper().startswith("SELECT")
            and "BENCH_ACCOUNTS" in statement.upper()
        ):
            self.count += 1


async def seed(engine: AsyncEngine, rows: int) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
        batch = [
            {"id": i, "email": f"u{i}@bench.io", "name": f"user {i}", "counter": 0}
            for i in range(1, rows + 1)
        ]
        for start in range(0, rows, 1000):
            await connection.execute(insert(Account), batch[start : start + 1000])


async def bench_database(name: str, url: str, args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    n, rounds = args.n, args.rounds
    engine = create_async_engine(url, pool_size=20, max_overflow=80)
    progress(f"{name}: seeding 10,000 rows")
    await seed(engine, 10_000)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    client = bench_client(DB_EMPTY)
    await client.flushdb()
    crud = make_crud()
    email, key = "u1@bench.io", "bench:account:u1@bench.io"
    if args.near_only or args.replicas_only:
        if args.near_only:
            results.extend(await bench_near(name, url, maker, client, args))
        if args.replicas_only:
            results.extend(await bench_replicas(name, engine, args))
        await client.aclose()
        await engine.dispose()
        return results
    if args.update_only:
        results.extend(await bench_update(name, engine, maker, client, crud, email, args))
        await client.aclose()
        await engine.dispose()
        return results

    # 1. hit
    progress(f"{name}: 1 cached get vs bare GET + validate")
    async with maker() as db:
        await crud.get(db=db, redis=client, email=email)

        async def hit() -> Any:
            return await crud.get(db=db, redis=client, email=email)

        async def bare_hit() -> Any:
            return AccountOut.model_validate_json(await client.get(key))  # type: ignore[arg-type]

        results.append(
            ratio_result(
                "1 hit",
                name,
                "FastRDB get (hit)",
                "GET + model_validate_json",
                await compare(hit, bare_hit, n=n, rounds=rounds),
                1.10,
            )
        )

        # 2. miss
        progress(f"{name}: 2 cold get vs bare select + validate + SET")

        async def miss() -> Any:
            await client.delete(key)
            return await crud.get(db=db, redis=client, email=email)

        async def bare_miss() -> Any:
            await client.delete(key)
            row = (await db.execute(select(Account).where(Account.email == email))).scalar_one()
            value = AccountOut.model_validate(row)
            await client.set(key, value.model_dump_json(), ex=600)
            return value

        results.append(
            ratio_result(
                "2 miss",
                name,
                "FastRDB get (miss→lease→read→fill)",
                "select + validate + SET",
                await compare(miss, bare_miss, n=max(1, n // 5), rounds=rounds),
                1.5,
            )
        )

    if not args.read_only:
        # 1t. what bounding a call in time costs
        results.extend(await bench_timers(name, client, key, args))
        results.append(await bench_documented_client(name, maker, crud, client, email, args))

        # 3. / 4. ORM update + commit
        results.extend(await bench_update(name, engine, maker, client, crud, email, args))

    # 5. 64 concurrent tasks of cached gets
    progress(f"{name}: 5 64 concurrent cached gets vs bare")
    sessions = [maker() for _ in range(64)]

    async def many(op_for: Callable[[AsyncSession], Op]) -> float:
        per_task = max(1, n // 16)

        async def task(session: AsyncSession) -> None:
            op = op_for(session)
            for _ in range(per_task):
                await op()

        started = time.perf_counter()
        await asyncio.gather(*(task(s) for s in sessions))
        return 64 * per_task / (time.perf_counter() - started)

    def fastrdb_get(session: AsyncSession) -> Op:
        return lambda: crud.get(db=session, redis=client, email=email)

    def bare_get(session: AsyncSession) -> Op:
        async def op() -> Any:
            return AccountOut.model_validate_json(await client.get(key))  # type: ignore[arg-type]

        return op

    await client.delete(key)
    async with maker() as db:
        await crud.get(db=db, redis=client, email=email)
    rates_f, rates_b = [], []
    for round_ in range(rounds):
        if round_ % 2:
            rates_b.append(await many(bare_get))
            rates_f.append(await many(fastrdb_get))
        else:
            rates_f.append(await many(fastrdb_get))
            rates_b.append(await many(bare_get))
    ratios = [f / b for f, b in zip(rates_f, rates_b, strict=True)]
    ratio = statistics.median(ratios)
    results.append(
        Result(
            "5 concurrency",
            name,
            "64 tasks FastRDB get",
            "64 tasks GET + validate",
            statistics.median(rates_f),
            statistics.median(rates_b),
            "ops/s",
            ratio,
            f"{min(ratios):.2f}..{max(ratios):.2f}",
            "≥ 0.9x",
            ratio >= 0.9,
        )
    )
    for session in sessions:
        await session.close()
    if args.read_only:
        await client.aclose()
        await engine.dispose()
        return results

    # 6. stampede
    progress(f"{name}: 6 100 concurrent misses of one key")
    counter = SelectCounter(engine)
    reads = []
    for _ in range(rounds):
        await client.delete(key)
        counter.count = 0

        async def one() -> Any:
            async with maker() as session:
                return await crud.get(db=session, redis=client, email=email)

        await asyncio.gather(*(one() for _ in range(100)))
        reads.append(counter.count)
    worst = max(reads)
    results.append(
        Result(
            "6 stampede",
            name,
            "DB reads for 100 concurrent misses",
            "",
            worst,
            100,
            "reads",
            worst / 100,
            f"{min(reads)}..{max(reads)}",
            "1 read",
            worst <= 1,
        )
    )

    # 7. cashews, for reference
    results.extend(await bench_cashews(name, maker, crud, client, args))

    # 8. zipf mix
    results.append(await bench_mix(name, maker, crud, client, counter, args))

    # 9. Redis down
    results.append(await bench_redis_down(name, maker, args))

    # 10. the near cache
    results.extend(await bench_near(name, url, maker, client, args))
    # Let its near caches go: their trackers stop tracking at the next message, so the later
    # cases' commits don't pay for Redis messages to caches nobody reads.
    gc.collect()

    # 11. waiting for a replica
    results.extend(await bench_replicas(name, engine, args))
    await client.aclose()
    await engine.dispose()
    return results


async def bench_update(
    name: str,
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    client: redis.asyncio.Redis,
    crud: FastRDB[Account, AccountIn, AccountPatch, AccountOut],
    email: str,
    args: argparse.Namespace,
) -> list[Result]:
    """Case 3 (and 4 with ``--million``): an ORM update + commit in a listened session against
    the same in a session nobody listens to."""
    results: list[Result] = []
    n, rounds = args.n, args.rounds
    plain = async_sessionmaker(engine, expire_on_commit=False)
    listened = async_sessionmaker(engine, expire_on_commit=False)
    full_client = bench_client(DB_FULL)
    listened_full = async_sessionmaker(engine, expire_on_commit=False)
    handles = [listen(listened, client), listen(listened_full, full_client)]
    async with maker() as db:  # publish the pattern in both Redis databases
        await crud.get(db=db, redis=full_client, email=email)

    def updater(factory: async_sessionmaker[AsyncSession]) -> Op:
        async def op() -> None:
            async with factory() as session:
                account = await session.get_one(Account, 2)
                account.counter += 1
                await session.commit()

        return op

    progress(f"{name}: 3 ORM update + commit, listened vs not")
    results.append(
        ratio_result(
            "3 update",
            name,
            "ORM update + commit, listen()ed",
            "same without FastRDB",
            await compare(updater(listened), updater(plain), n=max(1, n // 5), rounds=rounds),
            1.3,
        )
    )
    if args.million:
        if await full_client.dbsize() < 1_000_000:
            progress(f"{name}: 4 writing 1,000,000 unrelated keys")
            await full_client.flushdb()
            async with maker() as db:
                await crud.get(db=db, redis=full_client, email=email)
            for start in range(0, 1_000_000, 10_000):
                await full_client.mset(
                    {f"unrelated:{i}": "x" for i in range(start, start + 10_000)}
                )
        progress(f"{name}: 4 update with 1,000,000 unrelated keys vs none")
        results.append(
            ratio_result(
                "4 unrelated keys",
                name,
                "update, 1M unrelated keys in Redis",
                "update, empty Redis",
                await compare(
                    updater(listened_full), updater(listened), n=max(1, n // 5), rounds=rounds
                ),
                1.2,
            )
        )
    for handle in handles:
        handle.remove()
    await full_client.aclose()
    return results


async def bench_timers(
    name: str, client: redis.asyncio.Redis, key: str, args: argparse.Namespace
) -> list[Result]:
    """A GET on a client without socket timeouts (``socket_timeout=None``), against the same
    GET bounded five ways: FastRDB's watchdog (on the client's ``get``, and sent by
    :mod:`fastrdb.cache.wire` as FastRDB's hit does), one ``asyncio.timeout`` per call, a
    client with ``socket_timeout`` within ``redis_timeout``, and the client
    ``Redis.from_url(url)`` makes
    (redis-py 8: a 5 s ``socket_timeout``, so every command is sent through an
    ``asyncio.wait_for`` task). Measured in this process's CPU time: what the bounding costs
    the application, whatever the machine's load does to the round trip."""
    progress(f"{name}: 1t bounding a GET in time: watchdog, asyncio.timeout, socket_timeout")
    health = ClientHealth(Settings(), own_timeout=True)
    direct = ClientHealth(Settings(), own_timeout=True, direct=True)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB_EMPTY}"
    unbounded = redis.asyncio.Redis.from_url(url, socket_timeout=None)
    bounded = redis.asyncio.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)

    async def bare() -> Any:
        return await unbounded.get(key)

    async def watched() -> Any:
        return await store.get(unbounded, health, key)

    async def wired() -> Any:
        return await store.get(unbounded, direct, key)

    async def timed() -> Any:
        async with asyncio.timeout(0.25):
            return await unbounded.get(key)

    async def socket_bound() -> Any:
        return await bounded.get(key)

    async def default_client() -> Any:
        return await client.get(key)

    results = []
    for subject, label in (
        (watched, "GET under FastRDB's watchdog"),
        (wired, "GET by cache.wire under the watchdog"),
        (timed, "GET in asyncio.timeout"),
        (socket_bound, "GET, client with socket_timeout=0.25"),
        (default_client, "GET, client of Redis.from_url(url)"),
    ):
        measured = await compare(
            subject, bare, n=args.n, rounds=args.rounds, clock=time.process_time
        )
        results.append(
            ratio_result(
                "1t timers",
                name,
                label,
                "GET, socket_timeout=None",
                measured,
                None,
                note="CPU time, reference",
            )
        )
    await bounded.aclose()
    await unbounded.aclose()
    return results


async def bench_documented_client(
    name: str,
    maker: async_sessionmaker[AsyncSession],
    crud: FastRDB[Account, AccountIn, AccountPatch, AccountOut],
    client: redis.asyncio.Redis,
    email: str,
    args: argparse.Namespace,
) -> Result:
    """Case 1c: a cached get on the client docs/fastapi.md makes (``socket_timeout=None``:
    FastRDB bounds its calls itself) against the same on ``Redis.from_url(url)``'s client, in
    this process's CPU time. A hit's GET goes by :mod:`fastrdb.cache.wire` on both, which
    lifts the client's socket timeout for it: about 1 is expected."""
    progress(f"{name}: 1c cached get, client without socket_timeout vs Redis.from_url(url)")
    documented = redis.asyncio.Redis.from_url(
        f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB_EMPTY}", socket_timeout=None
    )
    async with maker() as db:
        await crud.get(db=db, redis=documented, email=email)

        async def on_documented() -> Any:
            return await crud.get(db=db, redis=documented, email=email)

        async def on_default() -> Any:
            return await crud.get(db=db, redis=client, email=email)

        measured = await compare(
            on_documented, on_default, n=args.n, rounds=args.rounds, clock=time.process_time
        )
    await documented.aclose()
    return ratio_result(
        "1c client",
        name,
        "FastRDB get (hit), socket_timeout=None",
        "FastRDB get (hit), Redis.from_url(url)",
        measured,
        None,
        note="CPU time, reference",
    )


async def bench_cashews(
    name: str,
    maker: async_sessionmaker[AsyncSession],
    crud: Any,
    client: redis.asyncio.Redis,
    args: argparse.Namespace,
) -> list[Result]:
    try:
        from cashews import Cache
    except ImportError:
        return [
            Result(
                "7 cashews",
                name,
                "FastRDB get (hit)",
                "cashews @cache (hit)",
                0,
                0,
                "µs/op",
                0,
                "",
                "reference",
                None,
                "cashews not installed (pip install cashews)",
            )
        ]
    progress(f"{name}: 7 cashews read-through for reference")
    cache = Cache()
    cache.setup(f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB_CASHEWS}", client_side=False)
    await cache.clear()
    email = "u3@bench.io"
    async with maker() as db:

        @cache(ttl="10m", key="cashews:account:{email}")
        async def cashews_get(email: str) -> AccountOut:
            row = (await db.execute(select(Account).where(Account.email == email))).scalar_one()
            return AccountOut.model_validate(row)

        await cashews_get(email)
        await crud.get(db=db, redis=client, email=email)
        measured = await compare(
            lambda: crud.get(db=db, redis=client, email=email),
            lambda: cashews_get(email),
            n=args.n,
            rounds=args.rounds,
        )
    await cache.close()
    return [
        ratio_result(
            "7 cashews",
            name,
            "FastRDB get (hit)",
            "cashews @cache (hit)",
            measured,
            None,
            note="reference only; cashews pickles values and does no invalidation",
        )
    ]


async def bench_mix(
    name: str,
    maker: async_sessionmaker[AsyncSession],
    crud: Any,
    client: redis.asyncio.Redis,
    counter: SelectCounter,
    args: argparse.Namespace,
) -> Result:
    progress(f"{name}: 8 Zipf 95% read / 5% write over 10,000 rows")
    rng = random.Random(7)
    weights = [1 / (rank**1.1) for rank in range(1, 10_001)]
    ops = args.mix_ops
    picks = rng.choices(range(1, 10_001), weights=weights, k=ops)
    writes = [rng.random() < 0.05 for _ in range(ops)]
    committed: dict[int, list[tuple[float, int]]] = {}
    reads: list[tuple[int, float, int]] = []
    values: dict[int, int] = {}
    await client.flushdb()
    stats_before = crud.stats()
    counter.count = 0
    queue = list(zip(picks, writes, strict=True))
    locks: dict[int, asyncio.Lock] = {}

    async def worker() -> None:
        async with maker() as db:
            while queue:
                row, write = queue.pop()
                email = f"u{row}@bench.io"
                if write:
                    async with locks.setdefault(row, asyncio.Lock()):
                        value = values.get(row, 0) + 1
                        values[row] = value
                        await crud.update(
                            db=db, redis=client, obj_in=AccountPatch(counter=value), email=email
                        )
                        committed.setdefault(row, []).append((time.monotonic(), value))
                else:
                    started = time.monotonic()
                    got = await crud.get(db=db, redis=client, email=email)
                    reads.append((row, started, got.counter))

    await asyncio.gather(*(worker() for _ in range(16)))
    stats = {k: v - stats_before[k] for k, v in crud.stats().items()}
    stale = sum(
        1
        for row, started, value in reads
        if value < max((v for t, v in committed.get(row, []) if t < started), default=0)
    )
    served = stats["hits"] + stats["misses"]
    hit_ratio = stats["hits"] / served if served else 0.0
    saved = len(reads) - counter.count
    return Result(
        "8 zipf mix",
        name,
        "hit ratio",
        "",
        hit_ratio * 100,
        0,
        "%",
        hit_ratio,
        f"{len(reads)} reads, {counter.count} DB selects, {saved} saved",
        "0 stale reads",
        stale == 0,
        f"{stale} stale reads",
    )


async def near_ready(crud: Any, client: redis.asyncio.Redis) -> Any:
    """``crud``'s near cache for ``client``, once its tracking connection is set up."""
    cache = crud._near.of(client)
    for _ in range(1000):
        if cache.tracker.up:
            return cache
        await asyncio.sleep(0.01)
    raise RuntimeError("the near cache's tracking was never set up")


async def bench_near(
    name: str,
    url: str,
    maker: async_sessionmaker[AsyncSession],
    client: redis.asyncio.Redis,
    args: argparse.Namespace,
) -> list[Result]:
    """10: the near cache — a hit against the floor, a 95/5 Zipf mix at 64 tasks with and
    without it, the memory one entry takes, and the window of its promise (10d)."""
    results: list[Result] = []
    await client.flushdb()
    near = make_crud(near=20_000)
    email, key = "u1@bench.io", "bench:account:u1@bench.io"
    progress(f"{name}: 10a near hit vs bare GET + validate")
    async with maker() as db:
        cache = await near_ready(near, client)
        for _ in range(3):  # miss and fill; hit in Redis, stored near; near hit
            await near.get(db=db, redis=client, email=email)
        assert near.stats()["near_hits"] >= 1, "the near cache did not serve the hit"

        async def hit() -> Any:
            return await near.get(db=db, redis=client, email=email)

        async def bare_hit() -> Any:
            return AccountOut.model_validate_json(await client.get(key))  # type: ignore[arg-type]

        results.append(
            ratio_result(
                "10a near hit",
                name,
                "FastRDB get (near hit)",
                "GET + model_validate_json",
                await compare(hit, bare_hit, n=args.n, rounds=args.rounds),
                0.10,
            )
        )

    # 10b. A 95/5 Zipf mix at 64 tasks, with the near cache and without it.
    progress(f"{name}: 10b Zipf 95/5 mix at 64 tasks, near cache on vs off")
    plain = make_crud()
    rng = random.Random(11)
    weights = [1 / (rank**1.1) for rank in range(1, 10_001)]
    values: dict[int, int] = {}
    stale = 0
    writer_busy: list[float] = []  # SQLite: the share of each round its one writer was busy
    cpu_per_op: dict[int, list[float]] = {}  # per crud: this process's CPU seconds per op

    async def mix(crud: Any, ops: int) -> float:
        nonlocal stale
        writing = 0.0
        picks = rng.choices(range(1, 10_001), weights=weights, k=ops)
        queue = [(row, rng.random() < 0.05) for row in picks]
        committed: dict[int, list[tuple[float, int]]] = {}
        reads: list[tuple[int, float, int]] = []
        one_writer = asyncio.Lock()  # SQLite refuses 64 concurrent writers: one at a time
        row_locks: dict[int, asyncio.Lock] = {}

        async def worker() -> None:
            nonlocal writing
            async with maker() as db:
                while queue:
                    row, write = queue.pop()
                    email = f"u{row}@bench.io"
                    if write:
                        lock = one_writer if name == "sqlite" else row_locks.get(row)
                        if lock is None:
                            lock = row_locks[row] = asyncio.Lock()
                        async with lock:
                            write_began = time.perf_counter()
                            value = values.get(row, 0) + 1
                            values[row] = value
                            await crud.update(
                                db=db, redis=client, obj_in=AccountPatch(counter=value), email=email
                            )
                            committed.setdefault(row, []).append((time.monotonic(), value))
                            writing += time.perf_counter() - write_began
                    else:
                        started = time.monotonic()
                        got = await crud.get(db=db, redis=client, email=email)
                        reads.append((row, started, got.counter))

        began, cpu_began = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(64)))
        wall = time.perf_counter() - began
        cpu_per_op.setdefault(id(crud), []).append((time.process_time() - cpu_began) / ops)
        rate = ops / wall
        writer_busy.append(writing / wall)
        stale += sum(
            1
            for row, started, value in reads
            if value < max((v for t, v in committed.get(row, []) if t < started), default=0)
        )
        return rate

    ops = max(2000, args.mix_ops // 4)
    await mix(near, ops)  # warm both: entries in Redis and in the near cache
    await mix(plain, ops)
    hits_before = near.stats()["near_hits"]
    rates_near, rates_plain = [], []
    for round_ in range(max(3, args.rounds // 2)):
        order = [(near, rates_near), (plain, rates_plain)]
        if round_ % 2:
            order.reverse()
        for crud, sink in order:
            sink.append(await mix(crud, ops))
    ratios = [a / b for a, b in zip(rates_near, rates_plain, strict=True)]
    near_hits = near.stats()["near_hits"] - hits_before
    cpu_near, cpu_plain = (cpu_per_op[id(crud)][1:] for crud in (near, plain))  # past warm-up
    cpu_ratios = [a / b for a, b in zip(cpu_near, cpu_plain, strict=True)]
    results.append(
        Result(
            "10b near mix",
            name,
            "64 tasks, Zipf 95/5, near cache",
            "same, without it",
            statistics.median(rates_near),
            statistics.median(rates_plain),
            "ops/s",
            statistics.median(ratios),
            f"{min(ratios):.2f}..{max(ratios):.2f}",
            "0 stale reads",
            stale == 0,
            f"{stale} stale reads, {near_hits} near hits; CPU per op (this process, all "
            f"threads) {statistics.median(cpu_near) * 1e6:,.0f} µs vs "
            f"{statistics.median(cpu_plain) * 1e6:,.0f} µs: {statistics.median(cpu_ratios):.2f}x "
            f"({min(cpu_ratios):.2f}..{max(cpu_ratios):.2f})"
            + (
                f"; the one writer was busy {min(writer_busy):.0%}..{max(writer_busy):.0%} "
                "of each round (the mix is bound by SQLite's serialized writes)"
                if name == "sqlite"
                else ""
            ),
        )
    )

    # 10c. Memory per entry: the bench's row, 2,000 entries.
    progress(f"{name}: 10c memory per near entry")
    sizing = make_crud(near=2_000)
    async with maker() as db:
        cache = await near_ready(sizing, client)
        for row in range(1, 2001):  # into Redis, then read once more: stored near
            await sizing.get(db=db, redis=client, email=f"u{row}@bench.io")
        cache.clear(counted=False)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for row in range(1, 2001):
            await sizing.get(db=db, redis=client, email=f"u{row}@bench.io")
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        stored = len(cache)
    per_entry = (after - before) / max(stored, 1)
    row_json = AccountOut(id=1, email="u1@bench.io", name="x", counter=0).model_dump_json()
    results.append(
        Result(
            "10c near memory",
            name,
            "bytes per near entry",
            "",
            per_entry,
            0,
            "B",
            0.0,
            f"{stored} entries",
            "",
            None,
            f"key, bytes, LRU and group bookkeeping; the row's JSON is {len(row_json)}+ B",
        )
    )

    # 10d. The window: another process's commit() returning → this process dropping the entry.
    progress(f"{name}: 10d near window, {args.window_commits} commits by another process")
    window = await near_window.measure(
        url,
        f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB_EMPTY}",
        make_crud(near=64),
        maker,
        client,
        args.window_commits,
    )
    applied = window.applied_us
    stale = window.stale_after_us
    results.append(
        Result(
            "10d near window",
            name,
            "entry dropped - writer's commit() returned, p50",
            "",
            statistics.median(applied),
            0,
            "µs",
            0.0,
            f"p99 {near_window.percentile(applied, 0.99):,.0f}, max {max(applied):,.0f} µs",
            "0 stale reads after a return",
            not stale and not window.clock_disagreements,
            f"{window.commits} commits; reads began every {window.read_gap_us:,.0f} µs (median); "
            f"{len(stale)} stale reads began after a return"
            + (f" (latest {max(stale):,.0f} µs after)" if stale else "")
            + (
                f"; {window.clock_disagreements} clock disagreements"
                if window.clock_disagreements
                else ""
            ),
        )
    )
    return results


@contextlib.contextmanager
def replicated_redis() -> Iterator[int]:
    """A redis-server with one replica, both on free loopback ports in a temporary folder,
    stopped by process id: the master's port."""
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    processes = []
    with tempfile.TemporaryDirectory(prefix="fastrdb-bench-") as folder:
        try:
            for port, extra in (
                (ports[0], []),
                (ports[1], ["--replicaof", "127.0.0.1", str(ports[0])]),
            ):
                processes.append(
                    subprocess.Popen(
                        [
                            shutil.which("redis-server") or "redis-server",
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            folder,
                            "--dbfilename",
                            f"{port}.rdb",
                            *extra,
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            replica = sync_redis.Redis(port=ports[1])
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(sync_redis.RedisError):
                    if replica.info("replication").get("master_link_status") == "up":
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the bench replica did not sync")
                time.sleep(0.05)
            replica.close()
            yield ports[0]
        finally:
            for process in processes:
                process.kill()
                process.wait(10)


async def bench_replicas(name: str, engine: AsyncEngine, args: argparse.Namespace) -> list[Result]:
    """Case 11: what Settings(wait_replicas=1) costs (one replica, on loopback): one
    invalidation alone (a sync client, so only Redis is timed), then a whole commit."""
    progress(f"{name}: 11 invalidation and commit with wait_replicas=1 vs without")
    results = []
    with replicated_redis() as port:
        waiting = redis.asyncio.Redis(port=port)
        plain = redis.asyncio.Redis(port=port)
        crud = make_crud()
        maker = async_sessionmaker(engine, expire_on_commit=False)
        async with maker() as db:  # publish the pattern: the commits drop a key
            await crud.get(db=db, redis=plain, email="u3@bench.io")

        blocking = sync_redis.Redis(port=port)
        namespace = Namespace("fastrdb")
        row = "bench:account:u3@bench.io"

        def plan(_: Any) -> store.InvalidationPlan:
            return store.InvalidationPlan(row_keys=[row], own_tokens=[""])

        def invalidator(wait: Wait | None) -> Op:
            call = store.Caller(False, 1.0)

            async def op() -> None:
                blocking.set(row, "x")  # something to drop, as after a fill
                store.deliver_invalidation(
                    call, blocking, namespace, ["bench_accounts"], plan, wait=wait
                )

            return op

        results.append(
            ratio_result(
                "11 wait replicas",
                name,
                "SET + invalidation, wait_replicas=1",
                "SET + invalidation",
                await compare(
                    invalidator(Wait(1, 1.0)), invalidator(None), n=args.n, rounds=args.rounds
                ),
                None,
            )
        )
        blocking.close()

        wait = Settings(redis_timeout=1.0, wait_replicas=1, wait_timeout=1.0)
        factories = {
            client: async_sessionmaker(engine, expire_on_commit=False)
            for client in (waiting, plain)
        }
        handles = [
            listen(factories[waiting], waiting, settings=wait),
            listen(factories[plain], plain, settings=Settings(redis_timeout=1.0)),
        ]

        def updater(factory: async_sessionmaker[AsyncSession]) -> Op:
            async def op() -> None:
                async with factory() as session:
                    account = await session.get_one(Account, 3)
                    account.counter += 1
                    await session.commit()

            return op

        results.append(
            ratio_result(
                "11 wait replicas",
                name,
                "update + commit, listen()ed, wait_replicas=1",
                "same, listen()ed without it",
                await compare(
                    updater(factories[waiting]),
                    updater(factories[plain]),
                    n=max(1, args.n // 5),
                    rounds=args.rounds,
                ),
                None,
            )
        )
        for handle in handles:
            handle.remove()
        health = health_of(waiting)
        if health.errors or health.pending is not None:  # a WAIT that failed measures nothing
            raise RuntimeError("case 11: the replica did not acknowledge every commit")
        await waiting.aclose()
        await plain.aclose()
    for result in results:
        result.note = (
            f"+{result.subject_value - result.baseline_value:,.0f} µs: the WAIT round trip"
        )
    return results


async def bench_redis_down(
    name: str, maker: async_sessionmaker[AsyncSession], args: argparse.Namespace
) -> Result:
    progress(f"{name}: 9 1,000 gets with Redis down vs plain database reads")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    dead = redis.asyncio.Redis(port=dead_port, socket_connect_timeout=0.1, socket_timeout=0.1)
    crud = make_crud()
    email = "u5@bench.io"
    async with maker() as db:

        async def cached() -> Any:
            return await crud.get(db=db, redis=dead, email=email)

        async def plain() -> Any:
            row = (await db.execute(select(Account).where(Account.email == email))).scalar_one()
            return AccountOut.model_validate(row)

        measured = await compare(cached, plain, n=1000, rounds=3)
    await dead.aclose()
    return ratio_result(
        "9 redis down", name, "FastRDB get, Redis unreachable", "select + validate", measured, 2.0
    )


def table(results: list[Result]) -> str:
    lines = [
        "| case | db | subject | baseline | subject | baseline | ratio (spread) | target | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        met = {True: "yes", False: "**no**", None: "—"}[r.met]
        lines.append(
            f"| {r.case} | {r.database} | {r.subject} | {r.baseline or '—'} | "
            f"{r.subject_value:,.1f} {r.unit} | {r.baseline_value:,.1f} | "
            f"{r.ratio:.2f} ({r.spread}) | {r.target} | {met}{' — ' + r.note if r.note else ''} |"
        )
    return "\n".join(lines)


async def amain(args: argparse.Namespace, tmp: Path) -> list[Result]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    results = []
    for name in args.databases.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        results.extend(await bench_database(name, URLS[name].format(tmp=tmp), args))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("-n", type=int, default=2000, help="operations per round (hit cases)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mix-ops", type=int, default=20_000)
    parser.add_argument(
        "--no-million",
        dest="million",
        action="store_false",
        help="skip case 4 (writing 1,000,000 keys takes a while)",
    )
    parser.add_argument(
        "--near-only", action="store_true", help="run only case 10 (the near cache)"
    )
    parser.add_argument(
        "--replicas-only",
        action="store_true",
        help="run only case 11 (wait_replicas: starts a redis-server and a replica)",
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="run only cases 1, 2 and 5 (a hit, a miss, 64 concurrent hits)",
    )
    parser.add_argument(
        "--update-only",
        action="store_true",
        help="run only case 3 (a listened ORM update; 4 too with --million)",
    )
    parser.add_argument(
        "--window-commits",
        type=int,
        default=300,
        help="commits by another process in case 10d (the near cache's window)",
    )
    parser.add_argument("--output", default="bench/results.json")
    args = parser.parse_args()
    started = time.time()
    results = asyncio.run(amain(args, Path(args.output).resolve().parent))
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seconds": round(time.time() - started, 1),
        "results": [asdict(r) for r in results],
    }
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"\n{len(results)} cases in {report['seconds']} s; JSON in {args.output}")


if __name__ == "__main__":
    main()
