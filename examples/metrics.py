"""FastRDB's figures for Prometheus: register the collector, serve /metrics, scrape it once.

Needs the ``prometheus`` extra. Run it with ``.venv/bin/python examples/metrics.py`` (SQLite
and an embedded Redis) or set DATABASE_URL / REDIS_URL.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.request
from pathlib import Path

from prometheus_client import REGISTRY, start_http_server
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fastrdb
from examples.embedded import database_url, embedded_redis
from examples.models import Base, User, UserCreate, UserResponse, UserUpdate
from fastrdb import FastRDB
from fastrdb.prometheus import FastRDBCollector

users = FastRDB[User, UserCreate, UserUpdate, UserResponse](
    User, UserResponse, pattern="user:email:{email}"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    REGISTRY.register(FastRDBCollector())
    port = free_port()
    start_http_server(port, addr="127.0.0.1")

    engine = create_async_engine(database_url("metrics.db"))
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with embedded_redis() as (_, redis), sessions() as db:
        await users.create(db=db, redis=redis, obj_in=UserCreate(email="a@x.io", name="Ada"))
        for _ in range(3):
            await users.get(db=db, redis=redis, email="a@x.io")
        print("health:", fastrdb.health(redis).as_dict())
        url = f"http://127.0.0.1:{port}/metrics"
        scraped = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
    for line in scraped.splitlines():
        if line.startswith(("fastrdb_cache_hits_total", "fastrdb_redis_serving")):
            print(line)
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
