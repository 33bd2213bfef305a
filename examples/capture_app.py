"""A FastAPI app that runs ``fastrdb capture`` as a task in its lifespan.

    DATABASE_URL=postgresql+asyncpg://… REDIS_URL=redis://… uvicorn examples.capture_app:app

The database must be set up for capture (docs/capture.md): PostgreSQL with
``wal_level=logical`` and a role with REPLICATION, or MariaDB with the row binlog. Then writes
that no session sees (psql, other programs, cascades, triggers) drop their keys too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio
from fastapi import FastAPI

from fastrdb.capture import Capture


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    database_url = os.environ["DATABASE_URL"]
    client = redis.asyncio.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
    capture = Capture(database_url, client, slot="fastrdb")
    task = asyncio.create_task(capture.run())  # one running capture per slot
    app.state.capture = capture
    yield
    capture.stop()  # run() ends once the batch in hand is delivered (or left for the next run)
    await task
    await client.aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/capture")
async def capture_stats() -> dict[str, object]:
    stats = app.state.capture.stats
    return {"transactions": stats.transactions, "rows": stats.rows, "lag": stats.last_lag}
