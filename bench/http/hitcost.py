"""What one cached GET costs the app's own process, counted rather than timed: the example
app's GET handler against cashews' decorated handler (bench/http/peers.py), driven in-process
through ASGI, so the HTTP server and the load generator are left out.

    python -m bench.http.hitcost              # callgrind: instructions per cached GET
    python -m bench.http.hitcost --profile    # cProfile: Python calls per cached GET

A loaded machine makes wall time useless for a difference of a few percent; instruction counts
are repeatable under load. Each app runs ``--requests`` N and then 2N cached GETs, each in a
process of its own under ``valgrind --tool=callgrind``; the difference over N is the cost of
one GET with start-up, imports and warm-up excluded. The Redis server's work is not counted
(it runs in its own process); the round trips are counted separately (``--profile`` shows the
client calls). Both apps use their own database (``bench_http_hitcost``, 100 rows, created by
the script on ``--server`` and dropped after it) and a redis-server the script starts.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.http.run import ROOT, drop_databases, seed_databases, start_redis, stop

APPS = {
    "fastrdb": ("examples.fastapi_app", "app", "FastRDB example app, `users.get`"),
    "cashews": ("bench.http.peers", "cashews_stale", "cashews `@cache` (no invalidation)"),
}
PATH = "/users/u7@bench.io"
DATABASE = "bench_http_hitcost"


async def _get(app: Any) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "app": app,
        "state": {},
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


def _app(name: str) -> Any:
    import importlib
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    module, attribute, _ = APPS[name]
    return getattr(importlib.import_module(module), attribute)


async def _serve(name: str, requests: int, profile: cProfile.Profile | None) -> None:
    app = _app(name)
    async with app.router.lifespan_context(app):
        for _ in range(200):  # the first GET fills; the rest warm every cache on the way
            assert await _get(app) == 200
        if profile is not None:
            profile.enable()
        for _ in range(requests):
            await _get(app)
        if profile is not None:
            profile.disable()


def child(name: str, requests: int) -> None:
    """Run in the measured process: ``requests`` cached GETs after the warm-up."""
    asyncio.run(_serve(name, requests, None))


def instructions(name: str, requests: int, env: dict[str, str]) -> int:
    """The instructions callgrind counted in a process serving ``requests`` cached GETs."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.http.hitcost",
            "--child",
            name,
            str(requests),
        ]
        subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True)
        totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        assert totals is not None, "callgrind wrote no totals"
        return int(totals.group(1))


def profile(name: str, requests: int) -> None:
    profiler = cProfile.Profile()
    asyncio.run(_serve(name, requests, profiler))
    stats = pstats.Stats(profiler)
    calls = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
    print(f"\n## {APPS[name][2]}: {calls / requests:.0f} Python calls per cached GET")
    by_package: dict[str, float] = {}
    rows: list[tuple[float, str]] = []
    for (filename, line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        where = filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        package = where.split("/")[0] if "/" in where else "builtins"
        if "python3." in where:
            package = "stdlib " + where.rsplit("/", 2)[-2]
        by_package[package] = by_package.get(package, 0) + entry[1] / requests
        rows.append((entry[1] / requests, f"{function}  ({where}:{line})"))
    for package, count in sorted(by_package.items(), key=lambda item: -item[1]):
        print(f"  {count:7.1f}  {package}")
    print("  most called:")
    for count, what in sorted(rows, reverse=True)[:20]:
        print(f"  {count:7.1f}  {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="N (default 500)")
    parser.add_argument("--server", default="postgres@127.0.0.1:5432", help="PostgreSQL")
    parser.add_argument("--profile", action="store_true", help="cProfile instead of callgrind")
    parser.add_argument("--child", nargs=2, metavar=("APP", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if not args.profile and shutil.which("valgrind") is None:
        sys.exit("valgrind is missing (Debian: apt-get install valgrind); try --profile")
    asyncio.run(seed_databases(args.server, [DATABASE], 100))
    with tempfile.TemporaryDirectory() as folder:
        redis_server, port = start_redis(Path(folder))
        env = {
            **os.environ,
            "DATABASE_URL": f"postgresql+asyncpg://{args.server}/{DATABASE}",
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "PYTHONHASHSEED": "0",
        }
        try:
            if args.profile:
                os.environ.update(env)
                for name in APPS:
                    profile(name, args.requests)
                return
            per_get: dict[str, float] = {}
            for name in APPS:
                once = instructions(name, args.requests, env)
                twice = instructions(name, 2 * args.requests, env)
                per_get[name] = (twice - once) / args.requests
            print("| app | instructions per cached GET | ratio to cashews |")
            print("|---|---|---|")
            for name, count in per_get.items():
                ratio = count / per_get["cashews"]
                print(f"| {APPS[name][2]} | {count:,.0f} | {ratio:.2f} |")
        finally:
            stop(redis_server)
            asyncio.run(drop_databases(args.server, [DATABASE]))


if __name__ == "__main__":
    main()
