"""The read side of coherence: reads fill only from what their own SELECT returned, under the
isolation level in force, with key text that means exactly what the database compares."""

from __future__ import annotations

import enum
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Date, Engine, Numeric, String, Uuid, select
from sqlalchemy import Enum as SAEnum
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastrdb import FastRDB, FastRDBError
from tests.conftest import Database

Redis = redis.asyncio.Redis


class ReadsBase(DeclarativeBase):
    pass


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Thing(ReadsBase):
    __tablename__ = "reads_things"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str | None] = mapped_column(String(20), nullable=True)
    cat: Mapped[str] = mapped_column(String(20), default="x")
    color: Mapped[Color] = mapped_column(SAEnum(Color), default=Color.BLUE)
    name: Mapped[str] = mapped_column(String(50), default="")
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2), default=Decimal("0"))
    ref: Mapped[uuid.UUID] = mapped_column(Uuid, default=uuid.uuid4)
    day: Mapped[date] = mapped_column(Date, default=date(2026, 1, 1))


class ThingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    code: str | None
    cat: str
    color: Color
    name: str
    price: Decimal
    ref: uuid.UUID
    day: date


class ThingIn(BaseModel):
    id: int
    code: str | None = None
    cat: str = "x"
    name: str = ""


class ThingPatch(BaseModel):
    name: str | None = None


Crud = FastRDB[Thing, ThingIn, ThingPatch, ThingOut]
by_id = Crud(Thing, ThingOut, pattern="thing:{id}", list_pattern="things:p{page}:l{limit}")
by_code = Crud(Thing, ThingOut, pattern="thing:code:{code}")
by_cat = Crud(
    Thing,
    ThingOut,
    pattern="thing:{id}",
    list_pattern="things:cat:{cat}:p{page}:l{limit}",
    invalidate_pattern_prefix="things:cat:{cat}:*",
)
by_color = Crud(
    Thing,
    ThingOut,
    pattern="thing:{id}",
    list_pattern="things:color:{color}:p{page}:l{limit}",
    invalidate_pattern_prefix="things:color:{color}:*",
)
by_price = Crud(Thing, ThingOut, pattern="thing:price:{price}")
by_ref = Crud(Thing, ThingOut, pattern="thing:ref:{ref}")

_tables_made: set[str] = set()


@pytest.fixture
def things(database: Database, sync_engine: Engine) -> Database:
    """The ``reads_things`` table, made once per database and emptied before each test."""
    if database.name not in _tables_made:
        ReadsBase.metadata.drop_all(sync_engine)
        ReadsBase.metadata.create_all(sync_engine)
        _tables_made.add(database.name)
    with sync_engine.begin() as connection:
        connection.execute(Thing.__table__.delete())
    return database


async def add(maker: async_sessionmaker[AsyncSession], **values: Any) -> None:
    async with maker() as session:
        session.add(Thing(**values))
        await session.commit()


async def rename(maker: async_sessionmaker[AsyncSession], thing_id: int, name: str) -> None:
    async with maker() as session:
        thing = await session.get_one(Thing, thing_id)
        thing.name = name
        await session.commit()


async def stored(redis_client: Redis, key: str) -> ThingOut | None:
    raw = await redis_client.get(key)
    return ThingOut.model_validate_json(raw) if raw is not None else None


# -- 1. a reader that holds the row --


@pytest.mark.usefixtures("things")
async def test_reader_holding_the_row_fills_what_the_database_returned(
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """A session already holding a row (expire_on_commit=False) gets and caches the row as
    another session committed it, not its identity-map copy."""
    await add(writer, id=1, name="Old")
    async with maker() as holder:
        held = await holder.get_one(Thing, 1)  # the app's current_user
        await holder.commit()
        await rename(writer, 1, "New")
        assert (await by_id.get(db=holder, redis=redis_client, id=1)).name == "New"
        assert held.name == "New"
        cached = await stored(redis_client, "thing:1")
        assert cached is None or cached.name == "New"
        page = await by_id.get_multi(db=holder, redis=redis_client)
        assert [t.name for t in page] == ["New"]
    async with maker() as fresh:
        assert (await by_id.get(db=fresh, redis=redis_client, id=1)).name == "New"


@pytest.mark.usefixtures("things")
async def test_reader_holding_the_row_in_its_transaction(
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """Inside the holder's open transaction, get_multi never caches the held copy."""
    await add(writer, id=1, name="Old")
    async with maker() as holder:
        held = await holder.get_one(Thing, 1)
        await rename(writer, 1, "New")
        await by_id.get_multi(db=holder, redis=redis_client)
        assert held.name in ("Old", "New")  # kept alive: the identity map holds it weakly
    async with maker() as fresh:
        assert [t.name for t in await by_id.get_multi(db=fresh, redis=redis_client)] == ["New"]


@pytest.mark.usefixtures("things")
async def test_reads_keep_the_sessions_unflushed_changes(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A read never overwrites what the session changed and has not flushed (no refresh then),
    and does not cache it."""
    await add(maker, id=1, name="Old")
    async with maker() as session:
        thing = await session.get_one(Thing, 1)
        thing.name = "Mine"
        assert (await by_id.get(db=session, redis=redis_client, id=1)).name == "Mine"
        assert thing.name == "Mine"
        await session.rollback()
    assert await redis_client.get("thing:1") is None


# -- 2. every method with a default async_sessionmaker(engine) --


@pytest.mark.usefixtures("things")
async def test_every_method_with_a_default_sessionmaker(
    engine: AsyncEngine, redis_client: Redis
) -> None:
    """expire_on_commit=True (MariaDB ends FastRDB's REPEATABLE READ reads with a commit):
    every method returns its rows serialized from what it read."""
    default = async_sessionmaker(engine)
    async with default() as db:
        made = await by_id.create(db=db, redis=redis_client, obj_in=ThingIn(id=1, name="A"))
        assert made.name == "A"
        assert (await by_id.get(db=db, redis=redis_client, id=1)).name == "A"
        assert [t.id for t in await by_id.get_multi(db=db, redis=redis_client)] == [1]
        both = await by_id.create_multi(
            db=db, redis=redis_client, instances=[ThingIn(id=2), ThingIn(id=3)]
        )
        assert [t.id for t in both] == [2, 3]
        patch = ThingPatch(name="B")
        assert (await by_id.update(db=db, redis=redis_client, obj_in=patch, id=1)).name == "B"
        assert (await by_id.get(db=db, redis=redis_client, id=1)).name == "B"
        assert await by_id.count(db=db, redis=redis_client) == 3
        await by_id.delete(db=db, redis=redis_client, id=3)
        with pytest.raises(NoResultFound):
            await by_id.get(db=db, redis=redis_client, id=3)


# -- 7. None is not "None" --


@pytest.mark.usefixtures("things")
async def test_none_and_the_string_none_are_different_keys(
    writer: async_sessionmaker[AsyncSession],
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """get(code=None) and get(code="None") select different rows and never share an entry."""
    await add(writer, id=1, code=None, name="null")
    await add(writer, id=2, code="None", name="text")
    async with maker() as db:
        assert (await by_code.get(db=db, redis=redis_client, code=None)).name == "null"
        assert (await by_code.get(db=db, redis=redis_client, code="None")).name == "text"
        assert (await by_code.get(db=db, redis=redis_client, code=None)).name == "null"
    assert await redis_client.exists("thing:code:None", "thing:code:%none") == 2


# -- 8. narrowed pages only where key text means what the database compares --


@pytest.mark.usefixtures("things")
async def test_narrowed_page_of_a_collated_string(
    writer: async_sessionmaker[AsyncSession],
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """A row changing from "B" to "A" drops the cached page filtered cat="a" wherever the
    database finds "A" equal to "a" (MariaDB's case-insensitive collation)."""
    await add(writer, id=1, cat="a", name="one")
    await add(writer, id=2, cat="B", name="two")
    async with maker() as db:
        first = await by_cat.get_multi(db=db, redis=redis_client, cat="a")
    async with writer() as session:
        thing = await session.get_one(Thing, 2)
        thing.cat = "A"
        await session.commit()
    async with maker() as db:
        expected = (await db.execute(select(Thing.id).where(Thing.cat == "a"))).scalars().all()
        page = await by_cat.get_multi(db=db, redis=redis_client, cat="a")
    assert [t.id for t in first] == [1]
    assert [t.id for t in page] == sorted(expected)


@pytest.mark.usefixtures("things")
async def test_narrowed_page_of_an_enum(
    writer: async_sessionmaker[AsyncSession],
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """A page cached for Color.RED is dropped by an insert that assigns the name "RED"."""
    await add(writer, id=1, color=Color.RED)
    async with maker() as db:
        assert [
            t.id for t in await by_color.get_multi(db=db, redis=redis_client, color=Color.RED)
        ] == [1]
    await add(writer, id=2, color="RED")
    async with maker() as db:
        page = await by_color.get_multi(db=db, redis=redis_client, color=Color.RED)
    assert [t.id for t in page] == [1, 2]


# -- 9. the isolation level of this checkout, not of the pooled connection's past --


async def test_fill_decision_follows_the_checkouts_isolation_level(
    database: Database,
    things: Database,
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """A REPEATABLE READ session reusing a pooled connection first seen at READ COMMITTED does
    not cache its old snapshot after another session's commit."""
    if database.name != "postgresql":
        pytest.skip("PostgreSQL reads at READ COMMITTED by default and can switch per engine")
    engine = create_async_engine(database.async_url, pool_size=1, max_overflow=0)
    try:
        await add(writer, id=1, name="Old")
        async with AsyncSession(engine) as db:
            assert (await by_id.get(db=db, redis=redis_client, id=1)).name == "Old"
        await redis_client.delete("thing:1")
        repeatable = engine.execution_options(isolation_level="REPEATABLE READ")
        async with AsyncSession(repeatable) as db:
            await db.execute(select(Thing.id))  # the snapshot is taken here
            await rename(writer, 1, "New")
            assert (await by_id.get(db=db, redis=redis_client, id=1)).name == "Old"
        cached = await stored(redis_client, "thing:1")
        assert cached is None or cached.name == "New"
    finally:
        await engine.dispose()


# -- 11. filters in the column's type: one entry per row, never a driver error --


@pytest.mark.usefixtures("things")
async def test_filter_values_are_converted_to_the_column_type(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """get(id="1") and get(id=1) share one entry; UUID, date, Enum and Decimal text converts."""
    ref = uuid.uuid4()
    await add(maker, id=1, name="one", ref=ref, day=date(2026, 3, 4), price=Decimal("9.5"))
    async with maker() as db:
        assert (await by_id.get(db=db, redis=redis_client, id="1")).name == "one"
        assert (await by_id.get(db=db, redis=redis_client, id=1)).name == "one"
        assert by_id.stats()["fills"] >= 1
        assert await redis_client.keys("thing:*") == [b"thing:1"]
        got = await by_id.get(
            db=db, redis=redis_client, id=1, ref=str(ref).upper(), day="2026-03-04", color="BLUE"
        )
        assert got.name == "one"
        assert (await by_ref.get(db=db, redis=redis_client, ref=ref.hex)).name == "one"
        assert await redis_client.exists(f"thing:ref:%uuid_{ref}")
        assert (await by_price.get(db=db, redis=redis_client, price="9.50")).name == "one"
        assert await redis_client.exists("thing:price:%dec_9.5")
        assert [
            t.id for t in await by_id.get_multi(db=db, redis=redis_client, cat="x", id="1")
        ] == [1]
        assert await by_id.count(db=db, id="1") == 1


@pytest.mark.usefixtures("things")
@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"id": "one"}, "id"),
        ({"id": "1.5"}, "id"),
        ({"id": True}, "id"),
        ({"id": 1, "ref": "not-a-uuid"}, "ref"),
        ({"id": 1, "day": "March"}, "day"),
        ({"id": 1, "color": "GREEN"}, "color"),
        ({"id": 1, "price": "cheap"}, "price"),
        ({"id": 1, "name": 1.5}, "name"),
    ],
)
async def test_filter_values_that_do_not_convert_are_refused(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    filters: dict[str, Any],
    field: str,
) -> None:
    """A value that is not exactly the column's type is a FastRDBError naming the field on
    every method, before any SQL (never a driver error)."""
    async with maker() as db:
        calls = [
            by_id.get(db=db, redis=redis_client, **filters),
            by_id.get_multi(db=db, redis=redis_client, **filters),
            by_id.count(db=db, **filters),
            by_id.delete(db=db, redis=redis_client, **filters),
        ]
        for call in calls:
            with pytest.raises(FastRDBError) as caught:
                await call
            assert caught.value.field == field


# -- patterns without placeholders --


@pytest.mark.usefixtures("things")
async def test_pattern_without_placeholders(
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """The issue's FastRDB(..., pattern="todo", ...) constructs; each row gets its own entry,
    and a write through a listened session drops it."""
    todo = Crud(
        Thing,
        ThingOut,
        pattern="todo",
        list_pattern="question:page{page}:limit:{limit}",
        invalidate_pattern_prefix="todo",
    )
    async with maker() as db:
        await todo.create(db=db, redis=redis_client, obj_in=ThingIn(id=1, name="one"))
        await todo.create(db=db, redis=redis_client, obj_in=ThingIn(id=2, name="two"))
        assert await redis_client.get("todo") is None
        assert (await todo.get(db=db, redis=redis_client, id=1)).name == "one"
        assert (await todo.get(db=db, redis=redis_client, id=2)).name == "two"
        assert (await todo.get(db=db, redis=redis_client, id="1")).name == "one"
        assert [t.id for t in await todo.get_multi(db=db, redis=redis_client)] == [1, 2]
    await rename(writer, 1, "uno")
    async with maker() as db:
        assert (await todo.get(db=db, redis=redis_client, id=1)).name == "uno"
        assert (await todo.get(db=db, redis=redis_client, id=2)).name == "two"
        assert [t.name for t in await todo.get_multi(db=db, redis=redis_client)] == ["uno", "two"]
        updated = await todo.update(db=db, redis=redis_client, obj_in=ThingPatch(name="1"), id=1)
        assert updated.name == "1"
        assert (await todo.get(db=db, redis=redis_client, id=1)).name == "1"
        flat = Crud(Thing, ThingOut, pattern="todo", list_pattern="questions")
        assert [t.id for t in await flat.get_multi(db=db, redis=redis_client, limit=1)] == [1]
        pages = await flat.get_multi(db=db, redis=redis_client, limit=1, page=2)
        assert [t.id for t in pages] == [2]
