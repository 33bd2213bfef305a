"""What the FastAPI wiring costs per cached GET, without HTTP or load generator in the way.

    python -m bench.http.wiring [rounds]

Drives examples/fastapi_app.py in-process through ASGI (DATABASE_URL and REDIS_URL as the app
reads them; SQLite and an embedded Redis otherwise) and measures the CPU time per request of a
cache hit under the documented wiring and under earlier ones, swapped in with FastAPI's
dependency overrides and alternated round by round.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio
import structlog
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from examples import fastapi_app
from examples.fastapi_app import app

PATHS = ["/users/u1@bench.io", "/users/wiring@bench.io"]  # a bench_http row, or our own


async def closed_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The earlier wiring: every session closed (a greenlet switch even after a hit)."""
    async with request.app.state.sessions() as session:
        yield session


def redis_in_threadpool(request: Request) -> redis.asyncio.Redis:
    """The earlier wiring: a plain ``def`` dependency, run in the threadpool."""
    client: redis.asyncio.Redis = request.app.state.redis
    return client


async def redis_on_loop(request: Request) -> redis.asyncio.Redis:
    client: redis.asyncio.Redis = request.app.state.redis
    return client


WIRINGS: dict[str, dict[Callable[..., Any], Callable[..., Any]]] = {
    "def get_redis, session always closed (before)": {
        fastapi_app.get_db: closed_session,
        fastapi_app.get_redis: redis_in_threadpool,
    },
    "async get_redis, session always closed": {
        fastapi_app.get_db: closed_session,
        fastapi_app.get_redis: redis_on_loop,
    },
    "documented: async get_redis, close if in a transaction": {},
}


async def call(method: str, body: bytes = b"") -> int:
    path = "/users" if method == "POST" else PATHS[0]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "app": app,
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def main(rounds: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    async with app.router.lifespan_context(app):
        if await call("GET") != 200:
            PATHS.pop(0)
            await call("POST", b'{"email": "wiring@bench.io", "name": "W"}')
        status = await call("GET")
        assert status == 200, status
        cpu: dict[str, list[float]] = {name: [] for name in WIRINGS}
        n = 1000
        for _ in range(rounds):
            for name, overrides in WIRINGS.items():
                app.dependency_overrides = dict(overrides)
                await call("GET")
                started = time.process_time()
                for _ in range(n):
                    await call("GET")
                cpu[name].append((time.process_time() - started) / n * 1e6)
        app.dependency_overrides = {}
        print(f"CPU µs per cached GET, median (min..max) of {rounds} alternating rounds:")
        for name, values in cpu.items():
            print(
                f"  {statistics.median(values):7.1f} ({min(values):.0f}..{max(values):.0f})  {name}"
            )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7))
