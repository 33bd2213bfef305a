"""FastRDB in one screen: cached reads, writes through FastRDB and through plain ORM code.

Run it with ``scripts/demo`` (SQLite and an embedded Redis) or set DATABASE_URL / REDIS_URL.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import structlog
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.embedded import database_url, embedded_redis
from examples.models import Base, User, UserCreate, UserResponse, UserUpdate
from fastrdb import FastRDB
from fastrdb.events import listen

users = FastRDB[User, UserCreate, UserUpdate, UserResponse](
    User,
    UserResponse,
    pattern="user:email:{email}",
    list_pattern="user:page:{page}:limit:{limit}",
    exp=600,
)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def main() -> None:
    # An application may configure structlog; FastRDB itself never does.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    url = database_url("demo.db")
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async with embedded_redis() as (where, redis):
        print(f"database: {url}\nredis:    {where}\n")
        handle = listen(sessions, redis)  # plain ORM writes invalidate too

        async with sessions() as db:
            for i, name in enumerate(["Ada", "Grace", "Linus"]):
                await users.create(
                    db=db, redis=redis, obj_in=UserCreate(email=f"u{i}@example.io", name=name)
                )
            print("created 3 users; each write-through filled its key:")
            print("   ", sorted(k.decode() for k in await redis.keys("user:*")))

            await redis.delete("user:email:u0@example.io")
            for attempt in ("miss", "hit"):
                started = time.perf_counter()
                user = await users.get(db=db, redis=redis, email="u0@example.io")
                elapsed = time.perf_counter() - started
                print(f"get #{attempt:<4} -> {user.name:<6} in {ms(elapsed)}")

            page = await users.get_multi(db=db, redis=redis, limit=2, page=1)
            print("get_multi page 1 ->", [u.name for u in page], "(cached as user:page:1:limit:2)")

            await users.update(
                db=db, redis=redis, obj_in=UserUpdate(name="Ada L."), email="u0@example.io"
            )
            print(
                "update via FastRDB -> get:",
                (await users.get(db=db, redis=redis, email="u0@example.io")).name,
            )

        async with sessions() as other:  # plain ORM code, knows nothing of FastRDB
            await other.execute(
                update(User).where(User.email == "u1@example.io").values(name="G. Hopper")
            )
            (
                await other.execute(select(User).where(User.email == "u2@example.io"))
            ).scalar_one().name = "L.T."
            await other.commit()
        async with sessions() as db:
            print(
                "bulk update() + ORM change elsewhere -> get:",
                (await users.get(db=db, redis=redis, email="u1@example.io")).name,
                "/",
                (await users.get(db=db, redis=redis, email="u2@example.io")).name,
            )
            page = await users.get_multi(db=db, redis=redis, limit=2, page=1)
            print("get_multi page 1 ->", [u.name for u in page])

        async with engine.begin() as connection:  # raw SQL: no session hook sees it
            await connection.execute(text("UPDATE users SET name = 'Ada (SQL)' WHERE id = 1"))
        async with sessions() as db:
            await users.invalidate(redis=redis, email="u0@example.io")  # one row's keys
            await users.invalidate(redis=redis, db=db, id=1)  # values read from the row
            await users.invalidate_all(redis=redis)  # the whole table
            print(
                "raw SQL + invalidate -> get:",
                (await users.get(db=db, redis=redis, email="u0@example.io")).name,
            )
        print("\nstats:", users.stats())
        handle.remove()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
