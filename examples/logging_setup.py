"""FastRDB's log events in an application that configures the standard ``logging`` module,
structlog, or nothing (then only FastRDB's warnings and errors reach stderr).

    python examples/logging_setup.py stdlib|structlog|nothing

Uses DATABASE_URL and REDIS_URL when set, like the other examples. It logs a cache miss and a
fill (debug), then points FastRDB at a Redis that does not answer (a warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import redis.asyncio
import structlog
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.embedded import database_url, embedded_redis
from examples.models import Base, User, UserCreate, UserResponse, UserUpdate
from fastrdb import FastRDB

users = FastRDB[User, UserCreate, UserUpdate, UserResponse](
    User, UserResponse, pattern="user:email:{email}"
)


def use_stdlib() -> None:
    logging.basicConfig(format="%(name)s %(levelname)s %(message)s", level=logging.WARNING)
    logging.getLogger("fastrdb").setLevel(logging.DEBUG)  # FastRDB's events from debug up


def use_structlog() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))


async def main(mode: str) -> None:
    if mode == "stdlib":
        use_stdlib()
    elif mode == "structlog":
        use_structlog()
    engine = create_async_engine(database_url("logging.db"))
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with embedded_redis() as (_, client), sessions() as db:
        new = UserCreate(email="log@x.io", name="Log")
        await users.create(db=db, redis=client, obj_in=new, email=new.email)
        await client.delete("user:email:log@x.io")
        await users.get(db=db, redis=client, email="log@x.io")  # cache_miss, cache_fill: debug
        await users.delete(db=db, redis=client, email="log@x.io")
    down = redis.asyncio.Redis(port=1, socket_timeout=0.1, socket_connect_timeout=0.1)
    async with sessions() as db:
        for _ in range(3):  # Settings.breaker_threshold failures: redis_unavailable, a warning
            with contextlib.suppress(NoResultFound):  # the row was deleted above
                await users.get(db=db, redis=down, email="log@x.io")
    await down.aclose()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "nothing"))
