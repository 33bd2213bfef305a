"""Negative entries: a get that finds no row is remembered, and dropped by any commit that can
make a row match, before that commit returns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from sqlalchemy import insert, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fastrdb import FastRDB, Settings
from tests.conftest import async_redis_client
from tests.interleave import CountSelects, HoldGetReply, PauseAfterSelect
from tests.models import User, UserCreate, UserResponse, UserUpdate, Verse, VerseSchema, VerseUpdate

Redis = redis.asyncio.Redis

KEY = "verse:3:2"
verses = FastRDB[Verse, VerseSchema, VerseUpdate, VerseSchema](
    Verse, VerseSchema, pattern="verse:{chapter_id}:{verse_id}"
)


async def missing(maker: async_sessionmaker[AsyncSession], redis_client: Redis) -> None:
    """get(chapter 3, verse 2) raises NoResultFound."""
    async with maker() as db:
        with pytest.raises(NoResultFound):
            await verses.get(db=db, redis=redis_client, chapter_id=3, verse_id=2)


async def found(maker: async_sessionmaker[AsyncSession], redis_client: Redis) -> str:
    async with maker() as db:
        return (await verses.get(db=db, redis=redis_client, chapter_id=3, verse_id=2)).text


async def test_a_missing_row_is_remembered(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """The second get of a missing row raises without a SELECT; the entry is JSON null and
    lives Settings.negative_exp seconds."""
    await missing(maker, redis_client)
    assert await redis_client.get(KEY) == b"null"
    assert 0 < await redis_client.ttl(KEY) <= Settings().negative_exp
    with CountSelects(engine, "verses") as counted:
        await missing(maker, redis_client)
    assert counted.count == 0
    assert verses.stats()["negative_hits"] >= 1


async def test_negative_exp_zero_keeps_nothing(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """Settings(negative_exp=0): a missing row is not remembered."""
    crud = FastRDB[Verse, VerseSchema, VerseUpdate, VerseSchema](
        Verse,
        VerseSchema,
        pattern="verse:{chapter_id}:{verse_id}",
        settings=Settings(negative_exp=0),
    )
    async with maker() as db:
        with pytest.raises(NoResultFound):
            await crud.get(db=db, redis=redis_client, chapter_id=3, verse_id=2)
    assert await redis_client.keys("verse:*") == []


async def insert_through_fastrdb(maker: async_sessionmaker[AsyncSession], redis: Redis) -> None:
    async with maker(expire_on_commit=False) as db:  # as the seed guide configures sessions
        await verses.create(
            db=db, redis=redis, obj_in=VerseSchema(chapter_id=3, verse_id=2, text="new")
        )


async def insert_orm(maker: async_sessionmaker[AsyncSession], redis: Redis) -> None:
    async with maker() as session:
        session.add(Verse(chapter_id=3, verse_id=2, text="new"))
        await session.commit()


async def insert_bulk(maker: async_sessionmaker[AsyncSession], redis: Redis) -> None:
    async with maker() as session:
        rows = [{"chapter_id": 3, "verse_id": v, "text": "new"} for v in (2, 3)]
        await session.execute(insert(Verse), rows)
        await session.commit()


async def insert_statement_values(maker: async_sessionmaker[AsyncSession], redis: Redis) -> None:
    """The values live only in the statement: the session sees no parameters."""
    async with maker() as session:
        await session.execute(insert(Verse).values(chapter_id=3, verse_id=2, text="new"))
        await session.commit()


async def upsert(maker: async_sessionmaker[AsyncSession], redis: Redis) -> None:
    """The dialect's own upsert, inserting a new row, with the values in the statement."""
    async with maker() as session:
        name = session.bind.dialect.name if session.bind is not None else ""
        values = {"chapter_id": 3, "verse_id": 2, "text": "new"}
        statement: Any
        if name == "postgresql":
            statement = postgresql.insert(Verse).values(**values)
            statement = statement.on_conflict_do_update(
                index_elements=["chapter_id", "verse_id"], set_={"text": statement.excluded.text}
            )
        elif name == "sqlite":
            statement = sqlite.insert(Verse).values(**values)
            statement = statement.on_conflict_do_update(
                index_elements=["chapter_id", "verse_id"], set_={"text": statement.excluded.text}
            )
        else:
            statement = mysql.insert(Verse).values(**values)
            statement = statement.on_duplicate_key_update(text=statement.inserted.text)
        await session.execute(statement)
        await session.commit()


async def update_into_place(maker: async_sessionmaker[AsyncSession], redis: Redis) -> None:
    """An existing row (3, 1) becomes (3, 2) by a bulk UPDATE."""
    async with maker() as session:
        await session.execute(
            update(Verse)
            .where(Verse.chapter_id == 3, Verse.verse_id == 1)
            .values(verse_id=2, text="new")
        )
        await session.commit()


WRITES: list[Callable[[async_sessionmaker[AsyncSession], Redis], Awaitable[None]]] = [
    insert_through_fastrdb,
    insert_orm,
    insert_bulk,
    insert_statement_values,
    upsert,
    update_into_place,
]


@pytest.mark.parametrize("write", WRITES, ids=[w.__name__ for w in WRITES])
async def test_a_write_that_makes_the_row_match_drops_it(
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    write: Callable[[async_sessionmaker[AsyncSession], Redis], Awaitable[None]],
) -> None:
    """Inserts (FastRDB, ORM, bulk, values only in the statement, upsert) and an update that
    make the row exist drop its negative entry before commit() returns."""
    async with maker() as db:
        await verses.create(
            db=db, redis=redis_client, obj_in=VerseSchema(chapter_id=3, verse_id=1, text="one")
        )
    await missing(maker, redis_client)
    assert await redis_client.get(KEY) == b"null"
    await write(writer, redis_client)
    assert await found(maker, redis_client) == "new"


patient = FastRDB[Verse, VerseSchema, VerseUpdate, VerseSchema](
    Verse,
    VerseSchema,
    pattern="verse:{chapter_id}:{verse_id}",
    settings=Settings(lease_wait=60, lease_ttl=60, redis_timeout=10),
)
"""Waits for a fill however loaded the machine is (a waiting reader never reads for itself)."""


async def patient_missing(maker: async_sessionmaker[AsyncSession], redis: Any) -> bool:
    """Whether get(chapter 3, verse 2) found a row, through ``patient``."""
    async with maker() as db:
        try:
            await patient.get(db=db, redis=redis, chapter_id=3, verse_id=2)
        except NoResultFound:
            return False
        return True


async def test_a_404_storm_costs_one_database_read(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """100 concurrent gets of a missing row, each with its own session: one SELECT; the others
    wait for the lease holder's negative entry, or find it when they ask for the lease."""
    with CountSelects(engine, "verses") as counted:
        results = await asyncio.gather(*(patient_missing(maker, redis_client) for _ in range(100)))
    assert results == [False] * 100
    assert counted.count == 1, counted.count


async def test_a_404_whose_miss_came_before_another_readers_negative_fill_takes_it(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """Reader B's GET misses; before B asks for the lease, reader A misses, leases, finds no
    row and fills the negative entry; B then finds that entry, not a free lease: one SELECT."""
    client = async_redis_client()  # B's
    with (
        CountSelects(engine, "verses") as counted,
        HoldGetReply(client, KEY) as held,
    ):
        reader_b = asyncio.create_task(patient_missing(maker, client))
        await held.wait_held()
        assert await patient_missing(maker, redis_client) is False
        assert await redis_client.get(KEY) == b"null"
        held.release()
        assert await reader_b is False
    await client.aclose()
    assert counted.count == 1, counted.count


async def test_a_miss_read_before_an_insert_cannot_fill_after_it(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """Reader finds no row and pauses; a writer inserts it and commits; the reader's negative
    fill is refused, and the next get finds the row."""
    with PauseAfterSelect(engine, "verses") as pause:
        reader = asyncio.create_task(missing(maker, redis_client))
        await pause.wait_selected()
        await insert_orm(writer, redis_client)
        pause.resume()
        await reader
    assert await redis_client.get(KEY) is None
    assert await found(maker, redis_client) == "new"


async def test_an_insert_of_unknown_values_during_a_miss_read_refuses_its_fill(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """The same interleaving when the insert's values live only in the statement: the reader's
    key joined the table's registry of negative entries before its read, the commit drains the
    registry, so the fill is refused."""
    with PauseAfterSelect(engine, "verses") as pause:
        reader = asyncio.create_task(missing(maker, redis_client))
        await pause.wait_selected()
        await insert_statement_values(writer, redis_client)
        pause.resume()
        await reader
    assert await redis_client.get(KEY) is None
    assert await found(maker, redis_client) == "new"


async def test_string_keys_are_remembered_only_where_the_database_compares_exactly(
    database: Any, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """MariaDB compares strings case-insensitively: a negative entry for ANN@X.IO would stay
    when ann@x.io is inserted, yet the database now returns that row. So on MariaDB no
    negative entry is kept for a string filter; on SQLite and PostgreSQL one is."""
    users = FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:{email}"
    )
    async with maker() as db:
        with pytest.raises(NoResultFound):
            await users.get(db=db, redis=redis_client, email="ANN@X.IO")
    exact = database.name != "mariadb"
    assert await redis_client.get("user:ANN@X.IO") == (b"null" if exact else None)
    async with maker() as db:
        await users.create(db=db, redis=redis_client, obj_in=UserCreate(email="ann@x.io", name="A"))
    async with maker() as db:
        if exact:
            with pytest.raises(NoResultFound):
                await users.get(db=db, redis=redis_client, email="ANN@X.IO")
        else:
            assert (await users.get(db=db, redis=redis_client, email="ANN@X.IO")).name == "A"
