"""count() cached like a list page, get_page() with the real total, paginate(total=)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fastrdb import FastRDB, FastRDBError, PaginatedResponse, Settings
from tests.conftest import async_redis_client
from tests.interleave import CountSelects, HoldGetReply, PauseAfterSelect
from tests.models import User, UserCreate, UserResponse, UserUpdate
from tests.test_crud import add_user, users

Redis = redis.asyncio.Redis

COUNT_KEY = "fastrdb:count:users"


def new_user(email: str) -> User:
    """A User built as plain ORM code builds one (the model is a mapped dataclass)."""
    return User(id=None, email=email, name="B", bio=None, created_at=None, updated_at=None)  # type: ignore[arg-type]


async def count(maker: async_sessionmaker[AsyncSession], redis: Redis, **filters: object) -> int:
    async with maker() as db:
        return await users.count(db=db, redis=redis, **filters)


async def test_count_with_redis_is_cached(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """count(redis=...) fills fastrdb:count:<table> (a digest suffix for filters); the next
    call reads no row; count() without redis always reads the database."""
    async with maker() as db:
        for i in range(3):
            await add_user(db, redis_client, f"u{i}@x.io", "same" if i else "other")
    assert await count(maker, redis_client) == 3
    assert await count(maker, redis_client, name="same") == 2
    assert await redis_client.get(COUNT_KEY) == b"3"
    assert len(await redis_client.keys(COUNT_KEY + ":~*")) == 1
    with CountSelects(engine, "users") as counted:
        assert await count(maker, redis_client) == 3
        assert await count(maker, redis_client, name="same") == 2
    assert counted.count == 0
    with CountSelects(engine, "users") as counted:
        async with maker() as db:
            assert await users.count(db=db) == 3
    assert counted.count == 1


async def test_every_kind_of_write_drops_cached_counts(
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """FastRDB create/update/delete, an ORM insert and bulk insert/delete: each drops the
    cached counts before its commit() returns."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "A")
    assert await count(maker, redis_client) == 1
    assert await count(maker, redis_client, name="B") == 0
    async with maker() as db:
        await users.update(db=db, redis=redis_client, obj_in=UserUpdate(name="B"), email="a@x.io")
    assert await count(maker, redis_client, name="B") == 1
    async with writer() as session:
        session.add(new_user("b@x.io"))
        await session.commit()
    assert await count(maker, redis_client) == 2
    async with writer() as session:
        await session.execute(insert(User).values(email="c@x.io", name="B"))
        await session.commit()
    assert await count(maker, redis_client, name="B") == 3
    async with writer() as session:
        await session.execute(delete(User).where(User.email == "c@x.io"))
        await session.commit()
    assert await count(maker, redis_client) == 2
    async with maker() as db:
        await users.delete(db=db, redis=redis_client, email="b@x.io")
    assert (await count(maker, redis_client), await count(maker, redis_client, name="B")) == (1, 1)


async def test_a_count_read_before_a_commit_cannot_fill_after_it(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """Reader counts and pauses after its SELECT; a writer inserts and commits; the reader's
    fill is refused, and the next count sees the new row."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io")
    with PauseAfterSelect(engine, "users") as pause:
        reader = asyncio.create_task(count(maker, redis_client))
        await pause.wait_selected()
        async with writer() as session:
            session.add(new_user("b@x.io"))
            await session.commit()
        pause.resume()
        assert await reader == 1  # it started before the commit
    assert await redis_client.get(COUNT_KEY) is None
    assert await count(maker, redis_client) == 2


patient = FastRDB[User, UserCreate, UserUpdate, UserResponse](
    User,
    UserResponse,
    pattern="user:email:{email}",
    settings=Settings(lease_wait=60, lease_ttl=60, redis_timeout=10),
)
"""Waits for a fill however loaded the machine is (a waiting reader never reads for itself)."""


async def patient_count(maker: async_sessionmaker[AsyncSession], redis: Any) -> int:
    async with maker() as db:
        return await patient.count(db=db, redis=redis)


async def test_concurrent_count_misses_cost_one_database_read(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """50 concurrent counts on a cold key, each with its own session: one SELECT; the others
    wait for the lease holder's fill, or find it when they ask for the lease."""
    async with maker() as db:  # the client's first user sets its timeouts
        await patient.create(
            db=db, redis=redis_client, obj_in=UserCreate(email="a@x.io", name="A"), email="a@x.io"
        )
    with CountSelects(engine, "users") as counted:
        counts = await asyncio.gather(*(patient_count(maker, redis_client) for _ in range(50)))
    assert counts == [1] * 50
    assert counted.count == 1, counted.count


async def test_a_count_whose_miss_came_before_another_readers_fill_takes_it(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """Reader B's GET of the count misses; before B asks for the lease, reader A misses,
    leases, counts and fills; B then finds A's count, not a free lease: one SELECT."""
    async with maker() as db:
        await patient.create(
            db=db, redis=redis_client, obj_in=UserCreate(email="a@x.io", name="A"), email="a@x.io"
        )
    client = async_redis_client()  # B's
    with (
        CountSelects(engine, "users") as counted,
        HoldGetReply(client, COUNT_KEY) as held,
    ):
        reader_b = asyncio.create_task(patient_count(maker, client))
        await held.wait_held()
        assert await patient_count(maker, redis_client) == 1
        held.release()
        assert await reader_b == 1
    await client.aclose()
    assert counted.count == 1, counted.count


async def test_get_page_has_the_real_total_and_costs_two_hits_when_warm(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """get_page() returns one page of get_multi with total = every matching row; warm, it
    reads nothing from the database."""
    async with maker() as db:
        for i in range(5):
            await add_user(db, redis_client, f"u{i}@x.io", "same" if i < 4 else "other")
    async with maker() as db:
        page = await users.get_page(db=db, redis=redis_client, limit=3, page=2, name="same")
    assert isinstance(page, PaginatedResponse)
    assert [u.email for u in page.data] == ["u3@x.io"]
    assert (page.total, page.limit, page.page) == (4, 3, 2)
    with CountSelects(engine, "users") as counted:
        async with maker() as db:
            again = await users.get_page(db=db, redis=redis_client, limit=3, page=2, name="same")
    assert again == page
    assert counted.count == 0


async def test_get_page_checks_its_arguments(db: AsyncSession, redis_client: Redis) -> None:
    """get_page() refuses what get_multi refuses, naming the field."""
    for arguments, field in [({"limit": 0}, "limit"), ({"page": 0}, "page"), ({"nope": 1}, "nope")]:
        with pytest.raises(FastRDBError) as caught:
            await users.get_page(db=db, redis=redis_client, **arguments)  # type: ignore[arg-type]
        assert caught.value.field == field


def test_paginate_takes_a_total() -> None:
    """paginate(total=) reports the given total; without it, total is the page's length."""
    assert users.paginate(data=[1, 2], limit=2, page=3, total=7).total == 7
    assert users.paginate(data=[1, 2], limit=2, page=3).total == 2
    for bad in (-1, 1.5, True):
        with pytest.raises(FastRDBError) as caught:
            users.paginate(data=[], limit=2, page=1, total=bad)  # type: ignore[arg-type]
        assert caught.value.field == "total"


async def test_count_inside_a_writing_transaction_reads_the_database(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A session that FastRDB served and that then flushed writes to the table counts them,
    and caches nothing."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io")
    assert await count(maker, redis_client) == 1
    async with maker() as db:
        assert await users.count(db=db, redis=redis_client) == 1
        db.add(new_user("b@x.io"))
        await db.flush()
        assert await users.count(db=db, redis=redis_client) == 2
        assert len((await db.execute(select(User))).scalars().all()) == 2
        await db.rollback()
    assert await count(maker, redis_client) == 1
