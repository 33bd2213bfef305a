"""Capture benchmarks: lag from COMMIT to the key gone, writer throughput with capture running
vs not, and catch-up of a queued backlog.

    python -m bench.capture [--databases postgresql,mariadb] [--seconds 4]
                            [--baseline DIR] [--rounds 2] [--pairs 10]
                            [--cases lag,throughput,floor,catchup] [--rates 100,1000,3000]

Starts its own PostgreSQL (wal_level=logical), MariaDB (row binlog) and Redis on free loopback
ports, and runs ``fastrdb capture`` as a separate process, as in production. Key deletions
are observed through Redis keyspace notifications (on the benchmark's own Redis), timestamped
on arrival, against the moment the writer's COMMIT returned.

``--baseline DIR`` (another checkout of FastRDB, e.g. ``git archive <commit> | tar -x -C DIR``)
runs each case with that checkout's ``fastrdb capture`` and this one's, alternating, in
``--rounds`` rounds: each result says its ``variant`` (``baseline`` or ``current``), so the
two compare in the same run, under the same load.

The ``floor`` case is the throughput case with the database's own command-line consumer of
the same log in capture's place (``pg_recvlogical`` with ``test_decoding``, or
``mariadb-binlog --raw``), writing nowhere: what reading the log costs the writer whoever
reads it, the floor capture's ratio compares with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import redis.asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.dbservers import MariaDBServer, PostgresServer
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
ROWS = 20_000
"""Rows of the table the cases write (a lag case changes each at most once: at most
``ROWS`` changes, 3,000 rows/s for 6 s)."""
CATCHUP_ROWS = 10_000
"""Rows of each of the catch-up case's 10 statements (one transaction)."""
WRITERS = 4
PAIRS = 10
"""Writer throughput: pairs of legs, one with capture stopped and one with it running, in
alternating order (stopped first in even pairs, running first in odd ones)."""
LEG_ROWS = 2000
"""Row updates per writer throughput leg."""
QUIET = 0.25
"""A throughput pair is quiet when, in each leg, processes other than the benchmark's own
(other users of the machine) used at most this many cores: its ratio is also reported apart."""
FLOOR_PAUSE = 0.5
"""Seconds before each leg of the floor case: its consumer reads what came before meanwhile
(it has no key to watch)."""
SCHEME = '["row","bc:{id}"]'


def progress(message: str) -> None:
    print(f"[capture bench] {message}", file=sys.stderr, flush=True)


async def start_capture(
    database: str, redis_url: str, root: Path = ROOT
) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fastrdb",
        "capture",
        "--database",
        database,
        "--redis",
        redis_url,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    async with asyncio.timeout(60):  # its slot / position exists once it logged this
        while b"capture_started" not in (line := await process.stderr.readline()):
            if not line:
                raise RuntimeError("fastrdb capture exited before it started")
    _drains.add(asyncio.create_task(_drain(process.stderr)))
    return process


_drains: set[asyncio.Task[None]] = set()


async def _drain(stream: asyncio.StreamReader) -> None:
    """Keep reading the capture's log so its pipe never fills; show warnings."""
    while line := await stream.readline():
        if b'"warning"' in line or b'"error"' in line:
            sys.stderr.write(line.decode())


async def stop_capture(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGTERM)
    await process.wait()


async def start_floor(
    server: PostgresServer | MariaDBServer, folder: Path
) -> asyncio.subprocess.Process:
    """The database's own consumer of the log from now on, writing to ``folder`` or nowhere
    (see the module's docstring)."""
    if isinstance(server, PostgresServer):
        binary = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_recvlogical"))[-1]
        where = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", "postgres"]
        command = [binary, *where, "--slot", "bench_floor"]
        create = await asyncio.create_subprocess_exec(
            *command, "--create-slot", "--if-not-exists", "-P", "test_decoding"
        )
        if await create.wait():
            raise RuntimeError("pg_recvlogical could not create its slot")
        return await asyncio.create_subprocess_exec(*command, "--start", "-f", "/dev/null")
    reader = await asyncio.create_subprocess_exec(
        *server.client(), "-N", "-e", "SHOW MASTER STATUS", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await reader.communicate()
    log_file = out.decode().split()[0]
    return await asyncio.create_subprocess_exec(
        "mariadb-binlog",
        "--read-from-remote-server",
        "-h",
        "127.0.0.1",
        f"-P{server.port}",
        "-uroot",
        "--raw",
        "--stop-never",
        f"--result-file={folder}/",
        log_file,
    )


async def stop_floor(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGCONT)  # stopped legs end with it resumed; to be sure
    process.terminate()
    await process.wait()


class Deletions:
    """Arrival times of the ``del`` keyspace events, per key."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.seen: dict[str, list[float]] = {}
        self._waiters: dict[str, tuple[float, asyncio.Future[float]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._pubsub: Any = None

    async def start(self) -> None:
        self._pubsub = pubsub = self.client.pubsub()
        await pubsub.psubscribe("__keyevent@0__:del")
        self._task = asyncio.create_task(self._listen(pubsub))

    async def _listen(self, pubsub: Any) -> None:
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            now = time.perf_counter()
            key = message["data"].decode()
            self.seen.setdefault(key, []).append(now)
            after, waiter = self._waiters.get(key, (0.0, None))
            if waiter is not None and now >= after:
                del self._waiters[key]
                if not waiter.done():
                    waiter.set_result(now)

    async def wait(self, key: str, after: float = 0.0, within: float = 120) -> float:
        """The first deletion of ``key`` at or after ``after`` (a deletion before it, of an
        earlier change delivered again or late, is not this change's)."""
        for moment in self.seen.get(key, ()):
            if moment >= after:
                return moment
        future = asyncio.get_running_loop().create_future()
        self._waiters[key] = (after, future)
        async with asyncio.timeout(within):
            return await future

    async def stop(self) -> None:
        """Stop listening and give the connection back (a settle per leg: many of them)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pubsub is not None:
            await self._pubsub.aclose()


async def prepare(engine: AsyncEngine, kind: str, client: redis.asyncio.Redis) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS bench_capture"))
        await connection.execute(
            text("CREATE TABLE bench_capture (id INTEGER PRIMARY KEY, name VARCHAR(100))")
        )
        if kind == "postgresql":
            await connection.execute(text("ALTER TABLE bench_capture REPLICA IDENTITY FULL"))
        await connection.execute(
            text("INSERT INTO bench_capture (id, name) VALUES (:id, 'n')"),
            [{"id": n} for n in range(ROWS + 1)],  # the last one: settle()'s
        )
    await client.sadd("fastrdb:schemes:bench_capture", SCHEME)  # as FastRDB publishes it


async def settle(engine: AsyncEngine, client: redis.asyncio.Redis) -> None:
    """Wait until capture has delivered everything committed so far: a change of a row no
    case writes (id ``ROWS``), committed last, and its key gone."""
    deletions = Deletions(client)
    await deletions.start()
    sent = time.perf_counter()
    await client.set(f"bc:{ROWS}", "cached")
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(
            text("UPDATE bench_capture SET name = :name WHERE id = :id"),
            {"name": f"s{time.perf_counter()}", "id": ROWS},
        )
    await deletions.wait(f"bc:{ROWS}", sent)
    await deletions.stop()


async def write_at(
    engine: AsyncEngine, client: redis.asyncio.Redis, rate: int, seconds: float, first: int
) -> list[tuple[str, float, float]]:
    """Update cached rows at ``rate`` rows/s in total, one row per autocommit transaction,
    from ``WRITERS`` connections; (key, moment its UPDATE was sent, moment its COMMIT
    returned) per row."""
    count = int(rate * seconds)
    if count > ROWS:
        raise ValueError(f"{rate} rows/s for {seconds} s changes more than {ROWS} rows")
    await client.mset({f"bc:{(first + n) % ROWS}": "cached" for n in range(count)})
    commits: list[tuple[str, float, float]] = []
    start = time.perf_counter() + 0.1

    async def writer(lane: int) -> None:
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            for n in range(lane, count, WRITERS):
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                row = (first + n) % ROWS
                sent = time.perf_counter()
                await autocommit.execute(
                    text("UPDATE bench_capture SET name = :name WHERE id = :id"),
                    # `first` is unique per case: a row a longer case before this one set
                    # to v<first + n> (3,000 rows/s for 4 s: 12,000 rows, beyond the next
                    # case's offset) must still change, or no row event, no deletion.
                    {"name": f"v{first}-{n}", "id": row},
                )
                commits.append((f"bc:{row}", sent, time.perf_counter()))

    await asyncio.gather(*(writer(lane) for lane in range(WRITERS)))
    return commits


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def lag_case(
    engine: AsyncEngine,
    client: redis.asyncio.Redis,
    rate: int,
    seconds: float,
    first: int,
    capture_pid: int | None = None,
) -> dict[str, Any]:
    await settle(engine, client)  # nothing of an earlier case is delivered during this one
    deletions = Deletions(client)
    await deletions.start()
    cpu_before = cpu_seconds(capture_pid) if capture_pid else 0.0
    commits = await write_at(engine, client, rate, seconds, first)
    # The deletion of this change: the first after its UPDATE was sent (the event loop may
    # take the notification before the writer's COMMIT returns: a lag just below zero).
    lags = [(await deletions.wait(key, sent)) - committed for key, sent, committed in commits]
    cpu = cpu_seconds(capture_pid) - cpu_before if capture_pid else None
    await deletions.stop()
    extra = {} if cpu is None else {"capture_cpu_us_per_row": round(cpu / len(commits) * 1e6)}
    return {
        **extra,
        "case": f"lag COMMIT→key gone at {rate} rows/s",
        "p50_ms": round(statistics.median(lags) * 1000, 2),
        "p99_ms": round(percentile(lags, 0.99) * 1000, 2),
        "samples": len(lags),
        "achieved_rows_per_s": round(
            len(commits) / (max(t for *_, t in commits) - min(t for *_, t in commits))
        ),
    }


async def writer_ops(engine: AsyncEngine, count: int, first: int) -> float:
    """Row updates per second, each its own autocommit transaction, as fast as possible."""
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        start = time.perf_counter()
        for n in range(count):
            await autocommit.execute(
                text("UPDATE bench_capture SET name = :name WHERE id = :id"),
                {"name": f"w{first + n}", "id": (first + n) % ROWS},
            )
        return count / (time.perf_counter() - start)


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (Linux ``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def own_cpu() -> float:
    """CPU seconds so far of this process and every process it started (the database and
    Redis servers, capture), living ones (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    ours = {os.getpid()}
    grown = True
    while grown:
        found = {pid for pid, parent in parents.items() if parent in ours} - ours
        grown = bool(found)
        ours |= found
    return sum(times[pid] for pid in ours)


async def deliveries(client: redis.asyncio.Redis) -> int:
    """Scripts run by the benchmark's Redis so far: capture's deliveries (one script
    each; the writers run none)."""
    stats = await client.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def throughput_case(
    engine: AsyncEngine,
    client: redis.asyncio.Redis,
    capture: asyncio.subprocess.Process,
    offset: Callable[[], int],
    pairs: int,
    caught_up: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Writer throughput with capture running vs stopped (``SIGSTOP``), ``pairs`` pairs of
    legs in alternating order; per running leg, capture's CPU time and deliveries, and per
    leg the machine's busy share and the cores other processes used (other users of the
    machine): the ratio of the pairs where those stayed under :data:`QUIET` is reported
    apart, beside the ratio of all pairs. Each leg starts once ``caught_up()`` returned
    (default: capture has delivered everything, :func:`settle`)."""
    ratios: list[float] = []
    quiet: list[float] = []
    running: list[float] = []
    stopped: list[float] = []
    cpu_ms: list[float] = []
    per_second: list[float] = []
    busy: list[float] = []
    others: list[float] = []
    """Per leg, the CPU (in cores) that processes other than the benchmark's own used."""
    behind: list[float] = []
    """Per running leg, how long capture took after it to deliver the leg's last change: work
    capture put off past the leg would not show in the writer's rate, but shows here."""

    async def leg(with_capture: bool) -> float:
        if caught_up is None:
            await settle(engine, client)  # each leg starts with capture caught up
        else:
            await caught_up()
        if not with_capture:
            capture.send_signal(signal.SIGSTOP)
        cpu = cpu_seconds(capture.pid)
        calls = await deliveries(client)
        machine, mine = machine_busy(), own_cpu()
        start = time.perf_counter()
        rate = await writer_ops(engine, LEG_ROWS, offset())
        elapsed = time.perf_counter() - start
        used, total = (b - a for a, b in zip(machine, machine_busy(), strict=True))
        busy.append(used / total)
        others.append((used - (own_cpu() - mine)) / elapsed)
        if with_capture:
            per_second.append((await deliveries(client) - calls) / elapsed)
            if caught_up is None:  # the leg's CPU includes what capture did after it
                done = time.perf_counter()
                await settle(engine, client)
                behind.append(time.perf_counter() - done)
            cpu_ms.append((cpu_seconds(capture.pid) - cpu) * 1000)
        else:
            capture.send_signal(signal.SIGCONT)
        return rate

    for pair in range(pairs):
        if pair % 2 == 0:
            without = await leg(False)
            with_capture = await leg(True)
        else:
            with_capture = await leg(True)
            without = await leg(False)
        running.append(with_capture)
        stopped.append(without)
        ratios.append(with_capture / without)
        if max(others[-2:]) <= QUIET:
            quiet.append(with_capture / without)

    def quartiles(values: list[float], digits: int) -> list[float]:
        q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        return [round(q[0], digits), round(q[2], digits)]

    return {
        "case": "writer throughput, capture running vs not",
        "ratio": round(statistics.median(ratios), 2),
        "quartiles": quartiles(ratios, 2),
        "spread": [round(min(ratios), 2), round(max(ratios), 2)],
        "pairs": pairs,
        "rows_per_s_running": round(statistics.median(running)),
        "rows_per_s_stopped": round(statistics.median(stopped)),
        "capture_cpu_ms_per_leg": round(statistics.median(cpu_ms)),
        "capture_cpu_us_per_row": round(statistics.median(cpu_ms) * 1000 / LEG_ROWS),
        "deliveries_per_s": round(statistics.median(per_second)),
        "caught_up_after_leg_ms": (
            [round(min(behind) * 1000, 1), round(max(behind) * 1000, 1)] if behind else None
        ),
        "machine_busy": [round(min(busy), 2), round(max(busy), 2)],
        "other_cores": [round(min(others), 2), round(max(others), 2)],
        "quiet_pairs": len(quiet),
        "quiet_ratio": round(statistics.median(quiet), 2) if quiet else None,
        "quiet_spread": [round(min(quiet), 2), round(max(quiet), 2)] if quiet else None,
    }


async def bench(
    kind: str,
    seconds: float,
    variants: dict[str, Path],
    rounds: int,
    cases: Collection[str] = ("lag", "throughput", "catchup"),
    pairs: int = PAIRS,
    rates: Collection[int] = (100, 1000, 3000),
) -> list[dict[str, Any]]:
    server: PostgresServer | MariaDBServer = (
        PostgresServer() if kind == "postgresql" else MariaDBServer()
    )
    server.start()
    redis_server = RedisServer()
    redis_server.extra = ["--notify-keyspace-events", "Eg"]
    redis_server.start()
    redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.asyncio.Redis.from_url(redis_url)
    driver = "postgresql+asyncpg" if kind == "postgresql" else "mysql+asyncmy"
    engine = create_async_engine(server.url.replace(server.url.split("://")[0], driver, 1))
    results: list[dict[str, Any]] = []
    first = 0

    def offset() -> int:
        nonlocal first
        first += 7919
        return first

    try:
        await prepare(engine, kind, client)
        for round_ in range(rounds):
            for variant, root in variants.items():
                capture = await start_capture(server.url, redis_url, root)
                await asyncio.sleep(0.5)
                for rate in rates if "lag" in cases else ():
                    progress(f"{kind} {variant} round {round_ + 1}: lag at {rate} rows/s")
                    result = await lag_case(engine, client, rate, seconds, offset(), capture.pid)
                    results.append({**result, "variant": variant, "round": round_ + 1})
                if "throughput" in cases:
                    progress(f"{kind} {variant} round {round_ + 1}: writer throughput")
                    result = await throughput_case(engine, client, capture, offset, pairs)
                    results.append({**result, "variant": variant, "round": round_ + 1})
                await stop_capture(capture)
            if "floor" in cases:
                progress(f"{kind} round {round_ + 1}: writer throughput, the floor")
                with tempfile.TemporaryDirectory() as folder:
                    floor = await start_floor(server, Path(folder))
                    result = await throughput_case(
                        engine, client, floor, offset, pairs, lambda: asyncio.sleep(FLOOR_PAUSE)
                    )
                    await stop_floor(floor)
                result["case"] = "writer throughput, the database's own log consumer running vs not"
                results.append({**result, "variant": "floor", "round": round_ + 1})

        for variant, root in variants.items() if "catchup" in cases else ():
            progress(f"{kind} {variant}: catch-up of 100,000 queued changes")
            async with engine.begin() as connection:
                for _ in range(10):  # 100,000 row changes: 10 statements of 10,000 rows
                    await connection.execute(
                        text("UPDATE bench_capture SET name = concat(name, 'x') WHERE id < :n"),
                        {"n": CATCHUP_ROWS},
                    )
            await client.set("bc:0", "cached")
            async with engine.begin() as connection:  # the sentinel, committed last
                await connection.execute(text("UPDATE bench_capture SET name = 'end' WHERE id = 0"))
            deletions = Deletions(client)
            await deletions.start()
            start = time.perf_counter()
            capture = await start_capture(server.url, redis_url, root)
            gone = await deletions.wait("bc:0")
            await deletions.stop()
            results.append(
                {
                    "case": "catch-up: 100,000 queued row changes applied",
                    "seconds": round(gone - start, 2),
                    "note": "from starting the capture process (its start-up included)",
                    "variant": variant,
                }
            )
            await stop_capture(capture)
            async with engine.begin() as connection:
                await connection.execute(
                    text("UPDATE bench_capture SET name = 'n' WHERE id < :n"),
                    {"n": CATCHUP_ROWS},
                )
            await client.set("bc:1", "cached")
            async with engine.begin() as connection:  # the reset's sentinel
                await connection.execute(text("UPDATE bench_capture SET name = 'm' WHERE id = 1"))
            deletions = Deletions(client)
            await deletions.start()
            capture = await start_capture(server.url, redis_url, root)  # past that reset
            await deletions.wait("bc:1")
            await deletions.stop()
            await stop_capture(capture)
    finally:
        await engine.dispose()
        await client.aclose()
        redis_server.kill()
        server.stop()
    for result in results:
        result["database"] = kind
    return results


async def amain(args: argparse.Namespace, variants: dict[str, Path]) -> list[dict[str, Any]]:
    results = []
    for kind in args.databases.split(","):
        results.extend(
            await bench(
                kind.strip(),
                args.seconds,
                variants,
                args.rounds,
                set(args.cases.split(",")),
                args.pairs,
                [int(rate) for rate in args.rates.split(",")],
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="postgresql,mariadb")
    parser.add_argument("--seconds", type=float, default=4.0, help="per lag case")
    parser.add_argument("--baseline", help="another checkout, run alternately with this one")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=PAIRS, help="writer throughput pairs")
    parser.add_argument("--rates", default="100,1000,3000", help="rows/s of the lag cases")
    parser.add_argument(
        "--cases",
        default="lag,throughput,catchup",
        help="any of lag, throughput, floor, catchup",
    )
    args = parser.parse_args()
    variants = {"current": ROOT}
    if args.baseline:
        variants = {"baseline": Path(args.baseline).resolve(), "current": ROOT}
    for result in asyncio.run(amain(args, variants)):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
