"""What a cache hit costs the session: nothing that touches the database."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import redis.asyncio
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fastrdb import FastRDB, FastRDBError
from fastrdb.events import listen
from tests.models import User, UserCreate, UserResponse, UserUpdate

users = FastRDB[User, UserCreate, UserUpdate, UserResponse](
    User, UserResponse, pattern="user:email:{email}", list_pattern="user:page:{page}:limit:{limit}"
)


class Checkouts:
    """Counts connections checked out of an engine's pool."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        event.listen(engine.sync_engine, "checkout", self._checkout)

    def _checkout(self, *args: Any) -> None:
        self.count += 1


async def test_a_hit_checks_out_no_connection_and_begins_nothing(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: redis.asyncio.Redis,
) -> None:
    """get() and get_multi() served from Redis leave the session without a transaction, so a
    request that only hits needs no connection and nothing to close."""
    handle = listen(maker, redis_client)
    async with maker() as db:
        await users.create(
            db=db, redis=redis_client, obj_in=UserCreate(email="a@x.io", name="A"), email="a@x.io"
        )
        await users.get(db=db, redis=redis_client, email="a@x.io")
        await users.get_multi(db=db, redis=redis_client, limit=5)
    checkouts = Checkouts(engine)
    hits = users.stats()["hits"]
    for session in (maker(), AsyncSession(engine)):  # listened, and not
        assert (await users.get(db=session, redis=redis_client, email="a@x.io")).name == "A"
        assert len(await users.get_multi(db=session, redis=redis_client, limit=5)) == 1
        assert not session.in_transaction()
        await session.close()
    assert users.stats()["hits"] == hits + 4
    assert checkouts.count == 0
    handle.remove()


async def test_reads_raise_where_they_are_awaited(
    maker: async_sessionmaker[AsyncSession], redis_client: redis.asyncio.Redis
) -> None:
    """get(), get_multi() and count() hand back their read's coroutine without running any of
    it (they are plain methods, one coroutine fewer per hit): bad input raises when the call is
    awaited, as from an ``async def``, and a call never awaited does nothing."""
    async with maker() as db:
        calls = [
            users.get(db=db, redis=redis_client, nickname="a"),
            users.get_multi(db=db, redis=redis_client, limit=0),
            users.count(db=db, redis=redis_client, nickname="a"),
        ]
        assert all(inspect.iscoroutine(call) for call in calls)
        for call in calls:
            with pytest.raises(FastRDBError):
                await call
        users.get(db=db, redis=redis_client, email="a@x.io").close()  # never awaited
        assert await redis_client.dbsize() == 0
        assert not db.in_transaction()
