"""The example app under load and chaos, every answer checked against the history of writes.

examples/fastapi_app.py runs under uvicorn with 2 worker processes on PostgreSQL (10,000 rows)
and the soak's own redis-server; examples/worker.py writes through a listened sync session;
``fastrdb capture`` follows the database when it can (``wal_level=logical``; the default
PostgreSQL is one the soak starts itself). An asyncio load generator (bench/http/load.py) sends
95 % GET / 5 % PATCH with Zipf keys for ``--duration`` seconds while the chaos schedule
(bench/soak/chaos.py) restarts Redis and SIGKILLs the worker in the middle of commits.

Every answer is checked against the writes that had returned before it was sent
(bench/http/check.py): a write whose outcome is unknown (its worker was killed, its PATCH got
no answer) counts as either value until a read shows it. After each kill the database is read
``--settle`` seconds later (the allowance for change capture's lag) to settle the killed write,
then the row is read through the app. Then a twin app with the same routes and no cache
(bench/http/plain.py) takes the same load and chaos for ``--twin-duration`` seconds.

Prints requests/s, p50/p99 latency, 5xx and stale answers for both; exits 1 if an answer was
stale, a 5xx (or no answer) came outside a Redis-down window, or the chaos did not happen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.http import load
from bench.http.check import Exchange, read_logs
from bench.http.run import free_port, stop, wait_ready
from bench.soak.chaos import EVENTS, Chaos, Kill
from bench.soak.figures import Figures, measure
from bench.soak.services import Database, Worker, environment, start_app, start_capture
from tests.servers import RedisClusterServers, RedisServer

BREAKER_COOLDOWN = 5.0  # fastrdb.Settings.breaker_cooldown: how long reads bypass Redis after


_START = time.monotonic()


def progress(message: str) -> None:
    print(f"  {time.monotonic() - _START:5.1f} s … {message}", file=sys.stderr, flush=True)


@dataclass
class Phase:
    """One app under load and chaos."""

    app: str
    port: int
    database: str
    env: dict[str, str]
    folder: Path
    process: subprocess.Popen[bytes]
    writes: list[Exchange] = field(default_factory=list)
    settles: list[Exchange] = field(default_factory=list)
    checks: list[load.Client] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    generations: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    worker_exited: int | None = None
    """The exit status of the last worker if it ended before the soak killed it."""

    async def start_worker(self, hot: int) -> Worker:
        tag = f"{self.app[0]}{next(self.generations)}"
        log = self.folder / f"worker-{self.app}.log"
        return await Worker.start(tag, self.env, hot, self.writes, log)


async def run_phase(
    phase: Phase,
    args: argparse.Namespace,
    redis: RedisServer | RedisClusterServers,
    db: Database,
    seconds: float,
) -> tuple[Figures, Chaos, float]:
    """Load, chaos and checks for ``seconds``; the figures, what the chaos did and when the
    load began (``time.monotonic()``)."""
    worker = await phase.start_worker(args.worker_rows)

    async def settle(kill: Kill) -> None:
        assert kill.write is not None
        row, name = kill.write
        await asyncio.sleep(args.settle)
        shown, started, finished = await db.read_name(phase.database, row)
        phase.settles.append(Exchange("G", row, 200, started, finished, shown))
        kill.committed = shown == name
        await read_through_app(row)  # then through the app: checked like every answer

    async def read_through_app(row: int) -> None:
        client = load.Client(phase.port)
        phase.checks.append(client)
        await client.send(row)
        client.close()

    async def kill_worker(point: str) -> Kill:
        nonlocal worker
        kill = Kill(point, time.monotonic() * 1e6)
        kill.write = await worker.kill_at(point, read_through_app)
        worker = await phase.start_worker(args.worker_rows)
        if kill.write is not None:
            task = asyncio.create_task(settle(kill))
            phase.tasks.add(task)
        return kill

    events = tuple(args.events) if args.chaos == "on" else ()
    chaos = Chaos(redis, kill_worker, events, args.chaos_interval, args.redis_down)
    prefix = phase.folder / f"load-{phase.app}"
    began = time.monotonic()
    try:
        await asyncio.gather(
            load.run(
                phase.port,
                connections=args.connections,
                seconds=seconds,
                rows=args.rows,
                zipf=args.zipf,
                writes=args.writes,
                seed=args.seed,
                run=1,
                log_prefix=prefix,
            ),
            chaos.run(seconds),
        )
        await asyncio.gather(*phase.tasks)
    finally:
        phase.worker_exited = worker.process.returncode
        await worker.kill()
    logs = [Path(f"{prefix}.{n}") for n in range(1, args.connections + 1)]
    http = read_logs([log for log in logs if log.exists()])
    for client in phase.checks:
        http += [Exchange(*parse(line)) for line in client.lines]
    for name, kept in (("writes", phase.writes), ("settles", phase.settles), ("http", http)):
        lines = (
            f"{e.kind} {e.row} {e.status} {e.started:.0f} {e.finished:.0f} {e.name}\n" for e in kept
        )
        (phase.folder / f"{name}-{phase.app}.history").write_text("".join(lines))
    figures = measure(
        phase.app,
        seconds,
        http,
        phase.writes,
        phase.settles,
        chaos.outages,
        (BREAKER_COOLDOWN + 1) * 1e6,
        began * 1e6,
    )
    return figures, chaos, began


def parse(line: str) -> tuple[str, int, int, float, float, str]:
    kind, row, status, started, finished, name = line.split(" ", 5)
    return kind, int(row), int(status), float(started), float(finished), name


def summary(phase: Phase, figures: Figures, chaos: Chaos, started: float) -> dict[str, Any]:
    return {
        "figures": asdict(figures),
        "worker_exited": phase.worker_exited,
        "outages": [
            {"down_s": o.down / 1e6 - started, "up_s": o.up / 1e6 - started} for o in chaos.outages
        ],
        "kills": [
            {
                "point": k.point,
                "at_s": k.at / 1e6 - started,
                "write": list(k.write) if k.write else None,
                "committed": k.committed,
            }
            for k in chaos.kills
        ],
    }


async def soak(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    redis: RedisServer | RedisClusterServers
    if args.cluster:
        redis = await asyncio.to_thread(RedisClusterServers(masters=3, replicas=1).start)
        redis_url = f"redis+cluster://127.0.0.1:{redis.ports[0]}"
        progress(f"Redis Cluster of 3 masters and 3 replicas on ports {redis.ports}")
    else:
        redis = RedisServer()
        if args.redis_persist:  # a restart reloads every entry: replays are what drops them
            redis.extra = ["--appendonly", "yes", "--appendfsync", "always"]
        redis.start()
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        progress(f"redis-server on port {redis.port}")
    db = await asyncio.to_thread(Database.start, args.database)
    names = {app: f"{args.database_prefix}_{app}" for app in ("fastrdb", "twin")}
    processes: list[subprocess.Popen[bytes]] = []
    report: dict[str, Any] = {}
    try:
        progress(f"seeding {args.rows:,} rows into 2 databases on {db.server}")
        await db.seed(list(names.values()), args.rows)
        progress("seeded; starting change capture and the apps")
        capture = args.capture == "auto" and await db.logical()
        if capture:
            processes.append(
                start_capture(
                    db.url(names["fastrdb"], "postgresql"),
                    redis_url,
                    names["fastrdb"],
                    folder / "capture.log",
                )
            )
        elif args.capture == "auto" and "after-commit" in args.events:
            args.events.remove("after-commit")
            progress("wal_level is not logical: no change capture, so no kill after COMMIT")
        report["capture"] = capture
        phases = {}
        for app, name in names.items():
            port = free_port()
            env = environment(DATABASE_URL=db.url(name), REDIS_URL=redis_url)
            process = start_app(app, port, env, folder / f"{app}.log")
            processes.append(process)
            phases[app] = Phase(app, port, name, env, folder, process)
        for app, phase in phases.items():
            await asyncio.to_thread(wait_ready, phase.port, phase.process, app)
        progress("apps ready")
        durations = {"fastrdb": args.duration, "twin": args.twin_duration}
        for app, phase in phases.items():
            progress(f"{app}: {durations[app]:g} s of load, chaos {args.chaos}")
            figures, chaos, began = await run_phase(phase, args, redis, db, durations[app])
            report[app] = summary(phase, figures, chaos, began)
    finally:
        for process in processes:
            stop(process)
        with contextlib.suppress(Exception):
            await db.drop(list(names.values()))
        db.stop()
        if isinstance(redis, RedisClusterServers):
            redis.stop()
        else:
            redis.kill()
    return report


def verdict(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What makes the run fail; empty when it passed."""
    failures = []
    for app in ("fastrdb", "twin"):
        figures = report[app]["figures"]
        if figures["stale"]:
            failures.append(f"{app}: {figures['stale']} stale answers")
        outside = figures["errors"] - figures["errors_in_outages"]
        if outside:
            failures.append(f"{app}: {outside} 5xx (or unanswered) outside Redis-down windows")
        if report[app]["worker_exited"] is not None:
            failures.append(f"{app}: the worker exited by itself ({report[app]['worker_exited']})")
        if args.chaos == "on":
            missed = [k for k in report[app]["kills"] if k["write"] is None]
            if missed:
                failures.append(f"{app}: {len(missed)} worker kills found no commit to stop")
    return failures


def table(report: dict[str, Any]) -> str:
    lines = [
        "| app (same routes) | requests | req/s | p50 | p99 | writes | 5xx (in Redis-down windows) "
        "| stale |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {"fastrdb": "FastRDB example app", "twin": "twin: plain SQLAlchemy, no cache"}
    for app in ("fastrdb", "twin"):
        f = report[app]["figures"]
        lines.append(
            f"| {labels[app]} | {f['requests']:,} | {f['rps']:,.0f} | {f['p50_ms']:.1f} ms "
            f"| {f['p99_ms']:.1f} ms | {f['writes']:,} | {f['errors']} ({f['errors_in_outages']}) "
            f"| {f['stale']} |"
        )
    return "\n".join(lines)


def chaos_lines(report: dict[str, Any], cluster: bool) -> list[str]:
    lines = []
    for app in ("fastrdb", "twin"):
        outages = report[app]["outages"]
        kills = report[app]["kills"]
        windows = ", ".join(f"{o['down_s']:.1f}-{o['up_s']:.1f} s" for o in outages)
        what = "a Redis Cluster master killed" if cluster else "Redis restarted"
        lines.append(f"- {app}: {what} {len(outages)}x (down {windows or '-'})")
        for point in ("before-commit", "after-commit"):
            mine = [k for k in kills if k["point"] == point]
            if mine:
                committed = sum(1 for k in mine if k["committed"])
                lines.append(
                    f"- {app}: worker SIGKILLed {len(mine)}x {point} "
                    f"(the database showed the killed write {committed}x)"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load on FastRDB")
    parser.add_argument(
        "--twin-duration", type=float, help="seconds of load on the twin (default duration/4, >= 5)"
    )
    parser.add_argument(
        "--database",
        help="a PostgreSQL URL whose server gets the soak's databases (default: a server of "
        "the soak's own with wal_level=logical, so change capture runs)",
    )
    parser.add_argument("--database-prefix", default="soak")
    parser.add_argument("--chaos", choices=["on", "off"], default="on")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="a Redis Cluster of 3 masters with a replica each instead of one redis-server; "
        "the chaos kills a master instead of restarting Redis",
    )
    parser.add_argument(
        "--capture",
        choices=["auto", "off"],
        default="auto",
        help="run `fastrdb capture` when the server has wal_level=logical (auto); off shows "
        "what a worker killed after COMMIT leaves without it (stale answers: exit status 1)",
    )
    parser.add_argument(
        "--events",
        help="the chaos events, in turn, among "
        f"{', '.join(EVENTS)} (default: redis or cluster-master, before-commit, after-commit)",
    )
    parser.add_argument("--chaos-interval", type=float, default=5.0, help="seconds between events")
    parser.add_argument("--redis-down", type=float, default=2.0, help="seconds Redis stays down")
    parser.add_argument(
        "--redis-persist",
        action="store_true",
        help="Redis keeps its data across restarts (appendonly, fsync always): cached entries "
        "survive an outage, and only the replayed invalidations drop the stale ones",
    )
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after a kill")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--worker-rows", type=int, default=100, help="the worker writes ids <= N")
    parser.add_argument("--writes", type=float, default=0.05, help="share of PATCH")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="copy the logs and every exchange (*.history: kind row status started finished "
        "name, as bench/http/check.py reads them) to DIR",
    )
    args = parser.parse_args()
    if args.events is None:
        args.events = f"{'cluster-master' if args.cluster else 'redis'},before-commit,after-commit"
    args.events = [event for event in args.events.split(",") if event]
    unknown = set(args.events) - set(EVENTS)
    if unknown:
        parser.error(f"--events: unknown {', '.join(sorted(unknown))} (known: {', '.join(EVENTS)})")
    wrong = "redis" if args.cluster else "cluster-master"
    if wrong in args.events:
        parser.error(f"--events: {wrong} needs {'no ' if args.cluster else ''}--cluster")
    if args.twin_duration is None:
        args.twin_duration = max(5.0, args.duration / 4)
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="fastrdb-soak-") as name:
        folder = Path(name)
        try:
            report = asyncio.run(soak(args, folder))
        except BaseException:
            for log in sorted(folder.glob("*.log")):
                sys.stderr.write(f"--- {log.name}\n{log.read_text()[-3000:]}\n")
            raise
        failures = verdict(report, args)
        if args.keep:
            shutil.copytree(folder, args.keep, dirs_exist_ok=True)
        if failures:
            for log in sorted(folder.glob("*.log")):
                sys.stderr.write(f"--- {log.name}\n{log.read_text()[-3000:]}\n")
    report["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["seconds"] = round(time.time() - began, 1)
    report["load_average"] = os.getloadavg()
    report["settings"] = {k: v for k, v in vars(args).items() if k != "json"}
    report["failures"] = failures
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(table(report))
    print()
    for line in chaos_lines(report, args.cluster):
        print(line)
    print(
        f"\n{args.duration:g} s + {args.twin_duration:g} s of load, "
        f"{args.connections} connections, "
        f"change capture {'on' if report['capture'] else 'off'}; {report['seconds']} s in all; "
        f"load average {report['load_average'][0]:.1f} at the end"
    )
    for app in ("fastrdb", "twin"):
        for example in report[app]["figures"]["stale_examples"]:
            print(f"stale ({app}): {json.dumps(example)}")
    for failure in failures:
        print(f"FAILED: {failure}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
