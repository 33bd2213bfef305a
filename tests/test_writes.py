"""What FastRDB's own writes cost: Redis round trips and SELECTs per update, and that what
they return and cache is the row as the database holds it."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fastrdb.cache import store
from fastrdb.events import listen
from fastrdb.events.collector import read_under_lock
from tests.interleave import CountSelects, Send, around_commands
from tests.models import User, UserResponse, UserUpdate
from tests.test_crud import add_user, users

Redis = redis.asyncio.Redis


async def test_an_update_costs_two_redis_round_trips(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """On one Redis, update() takes the write-through lease (one script) and then its commit
    drops the stale keys and stores the new row in one more: nothing after the commit."""
    if store.is_cluster(redis_client):
        pytest.skip("a cluster drops per slot, then stores the row")
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Zero")
        await users.update(db=db, redis=redis_client, obj_in=UserUpdate(name="A"), email="a@x.io")
    sent: list[str] = []

    async def counted(send: Send, *args: Any) -> Any:
        sent.append(str(args[0]))
        return await send(*args)

    fills = users.stats()["fills"]
    with around_commands(redis_client, counted):
        async with maker() as db:
            await users.update(
                db=db, redis=redis_client, obj_in=UserUpdate(name="B"), email="a@x.io"
            )
    assert sent == ["EVALSHA", "EVALSHA"]
    assert users.stats()["fills"] == fills + 1
    assert b'"B"' in (await redis_client.get("user:email:a@x.io") or b"")
    assert not await redis_client.exists("{user:email:a@x.io}:lease")


async def test_an_update_reads_the_row_less_than_plain_orm_code(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """update() takes the row it returns and caches from the post-image the session hooks
    record (read back or known exactly, in its transaction, under its lock), and its locked
    read of the row is the flush's pre-image where ``FOR UPDATE`` locks: on MariaDB it sends
    one SELECT fewer than a listened plain ORM update of the same row, none to reload it; as
    many on SQLite, and on PostgreSQL, where the UPDATE returns both images for both."""
    handle = listen(maker, redis_client)
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Zero")
    with CountSelects(engine, "users") as fastrdb_selects:
        async with maker() as db:
            await users.update(
                db=db, redis=redis_client, obj_in=UserUpdate(name="A"), email="a@x.io"
            )
    with CountSelects(engine, "users") as orm_selects:
        async with maker() as db:
            user = (
                await db.execute(select(User).where(User.email == "a@x.io").with_for_update())
            ).scalar_one()
            user.name = "B"
            await db.commit()
    handle.remove()
    fewer = 0 if engine.dialect.name in ("sqlite", "postgresql") else 1
    assert fastrdb_selects.count == orm_selects.count - fewer


async def test_what_an_update_returns_and_caches_is_the_stored_row(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """The response of update() and the value it caches equal the row read afterwards from
    the database, ``onupdate`` timestamp included (set by the database, not sent)."""
    async with maker() as db:
        created = await add_user(db, redis_client, "a@x.io", "Zero")
    async with maker() as db:
        updated = await users.update(
            db=db, redis=redis_client, obj_in=UserUpdate(name="A"), email="a@x.io"
        )
    async with maker() as db:
        stored = UserResponse.model_validate((await db.get(User, created.id)), from_attributes=True)
    assert updated == stored
    raw = await redis_client.get("user:email:a@x.io")
    assert raw is not None and UserResponse.model_validate_json(raw) == stored


async def test_a_row_noted_in_a_rolled_back_transaction_is_read_again(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A row noted as read under lock serves only the next flush of its own transaction: after
    a rollback, another session's commit moves the row to a new email; this session's next
    write (moving it on again) reads its pre-image again, so the key of the email it held is
    dropped."""
    handle = listen(maker, redis_client)
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Zero")
    async with maker() as db:
        query = select(User).where(User.email == "a@x.io").with_for_update()
        user = (await db.execute(query)).scalar_one()
        read_under_lock(db.sync_session, user)
        ident = user.id
        await db.rollback()
        async with maker() as other:
            moved = await other.get(User, ident)
            assert moved is not None
            moved.email = "b@x.io"
            await other.commit()
        async with maker() as reader:
            assert (await users.get(db=reader, redis=redis_client, email="b@x.io")).name == "Zero"
        again = await db.get(User, ident)  # the session's copy, not read again
        assert again is not None
        again.email = "c@x.io"
        await db.commit()
    handle.remove()
    assert await redis_client.get("user:email:b@x.io") is None, "the moved row's key survived"
