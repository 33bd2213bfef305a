"""Entries that embed related rows (nested response schemas): a change of any embedded row drops
them, a read that began before such a change never fills after it, and a schema FastRDB cannot
trace is refused with the field's name."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from pydantic import AliasPath, BaseModel, ConfigDict, Field
from sqlalchemy import Engine, ForeignKey, Integer, String, func, insert, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    WriteOnlyMapped,
    column_property,
    configure_mappers,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

from fastrdb import ConfigurationError, FastRDB, FastRDBError, Settings
from fastrdb.cache import store
from fastrdb.cache.scripts import DROP
from fastrdb.events import listen
from fastrdb.keys import Namespace, dropping_key
from fastrdb.relations import embedding
from tests.conftest import Database, async_redis_client
from tests.interleave import PauseAfterSelect
from tests.models import Author, Book, BookCreate, BookOut, BookUpdate, Tag, book_tags

Redis = redis.asyncio.Redis

books = FastRDB[Book, BookCreate, BookUpdate, BookOut](
    Book, BookOut, pattern="book:{id}", list_pattern="books:{page}:{limit}"
)


async def seed(maker: async_sessionmaker[AsyncSession]) -> None:
    async with maker() as session:
        session.add(Author(id=1, name="Old"))
        session.add(Tag(id=1, label="sf"))
        await session.flush()
        session.add(Book(id=1, title="Dune", author_id=1))
        await session.flush()
        await session.execute(insert(book_tags).values(book_id=1, tag_id=1))
        await session.commit()


async def rename(maker: async_sessionmaker[AsyncSession], name: str) -> None:
    async with maker() as session:
        author = await session.get(Author, 1)
        assert author is not None
        author.name = name
        await session.commit()


async def cache_both(db: AsyncSession, redis_client: Redis) -> None:
    assert (await books.get(db=db, redis=redis_client, id=1)).author.name == "Old"
    assert [b.author.name for b in await books.get_multi(db=db, redis=redis_client)] == ["Old"]
    assert await redis_client.exists("book:1", "books:1:10") == 2


async def test_an_author_rename_drops_the_books_that_embed_it(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """A listened session renames the author: the cached book and page of books are dropped,
    and the next reads embed the new name."""
    await seed(maker)
    async with maker() as db:
        await cache_both(db, redis_client)
    await rename(writer, "New")
    assert await redis_client.exists("book:1", "books:1:10") == 0
    async with maker() as db:
        assert (await books.get(db=db, redis=redis_client, id=1)).author.name == "New"
        assert [b.author.name for b in await books.get_multi(db=db, redis=redis_client)] == ["New"]


Change = Callable[[AsyncSession], Awaitable[Any]]


async def _relabel(session: AsyncSession) -> None:
    tag = await session.get(Tag, 1)
    assert tag is not None
    tag.label = "space"


async def _bulk_rename(session: AsyncSession) -> None:
    await session.execute(update(Author).where(Author.id == 1).values(name="Bulk"))


async def _untag(session: AsyncSession) -> None:
    await session.execute(book_tags.delete().where(book_tags.c.tag_id == 1))


async def _move_books(session: AsyncSession) -> None:
    session.add(Author(id=2, name="Other"))
    await session.flush()
    await session.execute(update(Book).where(Book.author_id == 1).values(author_id=2))


@pytest.mark.parametrize(
    "change",
    [_relabel, _bulk_rename, _untag, _move_books],
    ids=[
        "tag relabelled",
        "bulk author update",
        "association row deleted",
        "books moved to a new author",
    ],
)
async def test_every_change_of_an_embedded_table_drops_the_entries(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
    change: Change,
) -> None:
    """Related rows, bulk statements and association-table rows changed through a listened
    session all drop the book and the page; the next reads match the database."""
    await seed(maker)
    async with maker() as db:
        await cache_both(db, redis_client)
    async with writer() as session:
        await change(session)
        await session.commit()
    assert await redis_client.exists("book:1", "books:1:10") == 0
    async with maker() as db:
        query = select(Book).options(selectinload(Book.author), selectinload(Book.tags))
        fresh = (await db.execute(query.where(Book.id == 1))).scalar_one()
        expected = BookOut.model_validate(fresh)
        assert await books.get(db=db, redis=redis_client, id=1) == expected
        assert await books.get_multi(db=db, redis=redis_client) == [expected]


async def test_a_worker_rename_drops_the_books_that_embed_it(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    sync_engine: Engine,
    sync_redis: redis.Redis,
) -> None:
    """The same through a background worker: a listened sync Session with the blocking client."""
    await seed(maker)
    async with maker() as db:
        await cache_both(db, redis_client)
    worker = sessionmaker(sync_engine)
    handle = listen(worker, sync_redis)
    with worker() as session:
        author = session.get(Author, 1)
        assert author is not None
        author.name = "New"
        session.commit()
    handle.remove()
    assert await redis_client.exists("book:1", "books:1:10") == 0


async def test_refresh_mode_refills_a_book_with_its_author(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """With on_write="refresh", a retitled book's key is filled again after the commit, its
    author loaded in the refresh's own read (no lazy load in the background task)."""
    await seed(maker)
    refreshing = async_sessionmaker(engine)
    handle = listen(refreshing, redis_client, on_write="refresh")
    try:
        async with refreshing() as session:
            book = await session.get(Book, 1)
            assert book is not None
            book.title = "Dune Messiah"
            await session.commit()
        await handle.refreshed()
    finally:
        handle.remove()
    raw = await redis_client.get("book:1")
    assert raw is not None
    cached = BookOut.model_validate_json(raw)
    assert (cached.title, cached.author.name, [t.label for t in cached.tags]) == (
        "Dune Messiah",
        "Old",
        ["sf"],
    )


@pytest.mark.parametrize("kind", ["row", "page"])
async def test_a_read_that_loaded_the_author_before_a_commit_cannot_fill_after_it(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
    kind: str,
) -> None:
    """The reader has read the book and its author ("Old") and pauses; the author is renamed
    and committed; the reader resumes: it answers "Old" but does not cache it."""
    await seed(maker)
    key = "book:1" if kind == "row" else "books:1:10"

    async def read() -> str:
        async with maker() as db:
            if kind == "row":
                return (await books.get(db=db, redis=redis_client, id=1)).author.name
            return (await books.get_multi(db=db, redis=redis_client))[0].author.name

    with PauseAfterSelect(engine, "authors") as pause:
        reader = asyncio.create_task(read())
        await pause.wait_selected()
        await rename(writer, "New")
        pause.resume()
        assert await reader == "Old"
    raw = await redis_client.get(key)
    assert raw is None or b'"Old"' not in raw
    assert await read() == "New"


async def test_a_session_holding_the_author_embeds_the_committed_row(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """A session that loaded the author before another session renamed it (the app's
    ``current_user`` habit) reads the book: the author is read again, not taken from its
    identity map, and the cache holds the committed name."""
    await seed(maker)
    async with maker() as db:
        held = await db.get(Author, 1)
        assert held is not None and held.name == "Old"
        await db.commit()
        await rename(writer, "New")
        assert (await books.get(db=db, redis=redis_client, id=1)).author.name == "New"
        assert (await books.get_multi(db=db, redis=redis_client))[0].author.name == "New"
    raw = await redis_client.get("book:1")
    assert raw is not None and b'"New"' in raw


async def test_a_read_keeps_the_session_s_unflushed_changes(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A session with an unflushed change to the author reads the book: the change is neither
    overwritten by the refresh nor cached."""
    await seed(maker)
    async with maker() as db:  # autoflush=False: the change stays in memory
        author = await db.get(Author, 1)
        assert author is not None
        author.name = "Pending"
        assert (await books.get(db=db, redis=redis_client, id=1)).author.name == "Pending"
        assert author.name == "Pending"
        await db.commit()
    assert await redis_client.get("book:1") is None
    async with maker() as db:
        assert (await books.get(db=db, redis=redis_client, id=1)).author.name == "Pending"


async def test_writes_through_embed_the_related_rows(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """create and update answer the book with its author loaded in the read (no lazy load on
    an AsyncSession), and a later author rename drops what they cached."""
    await seed(maker)
    async with maker() as db:
        created = await books.create(
            db=db, redis=redis_client, obj_in=BookCreate(id=2, title="Emma", author_id=1), id=2
        )
        assert created.author.name == "Old" and created.tags == []
    async with maker() as db:
        updated = await books.update(
            db=db, redis=redis_client, obj_in=BookUpdate(title="Emma II"), id=2
        )
        assert (updated.title, updated.author.name) == ("Emma II", "Old")
        # Cached by the write-through, or (REPEATABLE READ: MariaDB) by this read.
        assert (await books.get(db=db, redis=redis_client, id=2)).title == "Emma II"
    assert await redis_client.exists("book:2") == 1
    await rename(writer, "New")
    assert await redis_client.exists("book:2") == 0


async def test_a_write_through_that_loaded_the_author_before_a_commit_cannot_fill_after_it(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
    database: Database,
) -> None:
    """update() reads its book back with the author ("Old") before its commit and pauses; the
    author is renamed and committed; update() resumes and commits: the write-through, whose
    lease was registered for the authors table before that read, does not land."""
    if database.name == "sqlite":
        pytest.skip("SQLite's one writer: the rename would wait for the paused update")
    await seed(maker)

    async def update_title() -> str:
        async with maker() as db:
            updated = await books.update(
                db=db, redis=redis_client, obj_in=BookUpdate(title="Dune II"), id=1
            )
            return updated.author.name

    with PauseAfterSelect(engine, "authors") as pause:
        task = asyncio.create_task(update_title())
        await pause.wait_selected()
        await rename(writer, "New")
        pause.resume()
        assert await task == "Old"
    raw = await redis_client.get("book:1")
    assert raw is None or b'"Old"' not in raw
    async with maker() as db:
        assert (await books.get(db=db, redis=redis_client, id=1)).author.name == "New"


async def test_a_write_through_in_an_older_snapshot_does_not_embed_it(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
    database: Database,
) -> None:
    """Under REPEATABLE READ the writer's transaction read the author ("Old") before another
    session renamed it; its update() then reads the book back in that snapshot, after taking
    its lease: the write-through embeds the old author, so it is not cached."""
    if database.name == "sqlite":
        pytest.skip("SQLite has one writer: nothing commits inside a writing transaction")
    await seed(maker)
    repeatable = async_sessionmaker(
        engine.execution_options(isolation_level="REPEATABLE READ"), expire_on_commit=False
    )
    async with repeatable() as db:
        author = await db.get(Author, 1)  # the transaction's snapshot starts here
        assert author is not None and author.name == "Old"
        await rename(writer, "New")
        updated = await books.update(
            db=db, redis=redis_client, obj_in=BookUpdate(title="Dune II"), id=1
        )
        assert updated.author.name == "Old"  # what its snapshot holds: a fair answer
    raw = await redis_client.get("book:1")
    assert raw is None or b'"Old"' not in raw
    async with maker() as db:
        assert (await books.get(db=db, redis=redis_client, id=1)).author.name == "New"


async def test_a_session_that_renamed_the_author_does_not_read_cached_books(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """Before its commit, the renaming session reads its own change, not the cached book."""
    await seed(maker)
    async with maker() as db:
        await cache_both(db, redis_client)
    async with writer() as session:
        author = await session.get(Author, 1)
        assert author is not None
        author.name = "Mine"
        await session.flush()
        assert (await books.get(db=session, redis=redis_client, id=1)).author.name == "Mine"
        await session.rollback()


async def test_a_reader_registers_before_it_reads(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """On a Redis Cluster the lease and the registries live in other slots: the reader holds
    its lease but has not joined the authors' registry when a rename commits (so the commit
    cannot find it); the reader then registers and reads, and so caches the new name."""
    if not store.is_cluster(redis_client):
        pytest.skip("one Redis takes the lease and registers in one script")
    await seed(maker)
    registry = books._plan.embedded[1][0]
    paused, resume = asyncio.Event(), asyncio.Event()
    sadd = redis_client.sadd

    async def paused_sadd(name: Any, *values: Any) -> Any:
        if name == registry and not paused.is_set():
            paused.set()
            await resume.wait()
        return await sadd(name, *values)

    redis_client.sadd = paused_sadd  # type: ignore[method-assign]

    async def read() -> str:
        async with maker() as db:
            return (await books.get(db=db, redis=redis_client, id=1)).author.name

    reader = asyncio.create_task(read())
    async with asyncio.timeout(10):
        await paused.wait()
    await rename(writer, "New")
    resume.set()
    assert await reader == "New"
    raw = await redis_client.get("book:1")
    assert raw is not None and b'"New"' in raw


async def test_a_fill_between_the_drain_and_the_drop_is_dropped(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """On a Redis Cluster the commit drains the authors' registry, then drops each member in
    its own slot. A reader that read the old author fills in between (its lease is still
    there): the drop that follows removes what it stored."""
    if not store.is_cluster(redis_client):
        pytest.skip("one Redis drains and drops in one script")
    await seed(maker)
    writer_client = async_redis_client()  # its own client, patient while the test holds it
    writer = async_sessionmaker(engine)
    handle = listen(writer, writer_client, settings=Settings(redis_timeout=30))
    draining, resume_drop = asyncio.Event(), asyncio.Event()
    evalsha = writer_client.evalsha

    async def paused_evalsha(sha: str, numkeys: int, *args: Any) -> Any:
        if sha == DROP.sha and args[0] == "book:1" and not draining.is_set():
            draining.set()
            await resume_drop.wait()
        return await evalsha(sha, numkeys, *args)

    writer_client.evalsha = paused_evalsha

    async def read() -> str:
        async with maker() as db:
            return (await books.get(db=db, redis=redis_client, id=1)).author.name

    try:
        with PauseAfterSelect(engine, "authors") as pause:
            reader = asyncio.create_task(read())
            await pause.wait_selected()
            committer = asyncio.create_task(rename(writer, "New"))
            async with asyncio.timeout(10):
                await draining.wait()
            pause.resume()
            assert await reader == "Old"
        assert b'"Old"' in (await redis_client.get("book:1") or b"")  # the fill did land
        resume_drop.set()
        await committer
        assert await redis_client.get("book:1") is None
        assert await read() == "New"
    finally:
        resume_drop.set()
        handle.remove()
        await writer_client.aclose()


async def test_members_left_being_dropped_by_a_crashed_invalidation_are_cleared(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """On a Redis Cluster an invalidation notes the members it drained as being dropped until
    it has dropped them. One that dies in between (its process killed) leaves them noted; the
    next invalidation that drains the registry drops them, and then clears them: otherwise
    every later invalidation of that registry would drop them again, for ever. Forced by
    doing what the dead one did: the member taken out of the registry and noted, not dropped."""
    if not store.is_cluster(redis_client):
        pytest.skip("one Redis drains and drops in one script")
    await seed(maker)
    async with maker() as db:
        await cache_both(db, redis_client)
    registry = Namespace("fastrdb").embeds("authors")  # what a rename of the author drains
    assert await redis_client.srem(registry, "book:1") == 1
    await redis_client.sadd(dropping_key(registry), "deadbeefdeadbeef|book:1")
    writer = async_sessionmaker(engine)
    handle = listen(writer, redis_client)
    try:
        await rename(writer, "New")
    finally:
        handle.remove()
    assert await redis_client.get("book:1") is None
    assert await redis_client.smembers(dropping_key(registry)) == set()


# -- what the schema walk finds, and what it refuses --------------------------------------------


def test_the_walk_finds_every_embedded_table() -> None:
    """BookOut embeds authors, tags and the association table; the loader options load both
    relationships."""
    configure_mappers()
    found = embedding(inspect(Book), BookOut)
    assert sorted(table.name for table in found.tables) == ["authors", "book_tags", "tags"]
    assert len(found.options) == 2


class OtherBase(DeclarativeBase):
    pass


class Shelf(OtherBase):
    __tablename__ = "shelves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(50))
    boxes: Mapped[list[Box]] = relationship(back_populates="shelf")

    @property
    def shout(self) -> str:
        return self.label.upper()

    @hybrid_property
    def size(self) -> int:
        return len(self.label)


class Box(OtherBase):
    __tablename__ = "boxes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shelf_id: Mapped[int] = mapped_column(ForeignKey("shelves.id"))
    shelf: Mapped[Shelf] = relationship(back_populates="boxes")


class Crate(OtherBase):
    __tablename__ = "crates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shelf_id: Mapped[int] = mapped_column(ForeignKey("shelves.id"))
    boxes: WriteOnlyMapped[Box] = relationship(
        primaryjoin="Crate.shelf_id == foreign(Box.shelf_id)", viewonly=True
    )


Shelf.box_count = column_property(
    select(func.count(Box.id)).where(Box.shelf_id == Shelf.id).scalar_subquery()
)


class BoxOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int


class ShelfOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    label: str
    note: str = "constant"  # not on the model: its default, nothing to trace


class ShelfWithShout(ShelfOut):
    shout: str


class ShelfWithSize(ShelfOut):
    size: int


class ShelfWithIds(ShelfOut):
    boxes: list[int]


class ShelfWithPath(ShelfOut):
    first: int = Field(validation_alias=AliasPath("boxes", 0, "id"))


class ShelfInBox(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    boxes: list[BoxInShelf]


class BoxInShelf(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    shelf: ShelfInBox


class BoxOnAliasedShelf(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    where: ShelfWithShout = Field(validation_alias="shelf")


class CrateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    boxes: list[BoxOut]


class ShelfWithCount(ShelfOut):
    box_count: int


@pytest.mark.parametrize(
    ("model", "schema", "field"),
    [
        (Shelf, ShelfWithShout, "shout"),
        (Shelf, ShelfWithSize, "size"),
        (Shelf, ShelfWithIds, "boxes"),
        (Shelf, ShelfWithPath, "first"),
        (Box, BoxInShelf, "shelf.boxes"),
        (Box, BoxOnAliasedShelf, "where.shout"),
        (Crate, CrateOut, "boxes"),
    ],
    ids=[
        "property",
        "hybrid",
        "relationship as ints",
        "alias path",
        "recursion",
        "nested",
        "write-only relationship",
    ],
)
def test_an_untraceable_field_is_refused_at_construction(
    model: type, schema: type[BaseModel], field: str
) -> None:
    """A field read from something that is not a mapped column or a relationship to a pydantic
    model is refused when the FastRDB instance is built (mappers configured): a set-up mistake,
    ConfigurationError (not a FastRDBError) naming response_schema and the field."""
    configure_mappers()
    with pytest.raises(ConfigurationError) as raised:
        FastRDB(model, schema, pattern="x:{id}")
    assert not isinstance(raised.value, FastRDBError)
    assert raised.value.argument == "response_schema"
    assert raised.value.field == field
    assert str(raised.value).startswith(f"response_schema: field {field!r} ")


async def test_an_untraceable_field_is_refused_at_first_use_before_mappers_are_configured(
    db: AsyncSession, redis_client: Redis
) -> None:
    """Built while its mapper is not configured yet (models still being imported), the
    instance refuses the untraceable field at its first call, with the same ConfigurationError."""

    class LampBase(DeclarativeBase):
        pass

    class Lamp(LampBase):
        __tablename__ = "lamps"
        id: Mapped[int] = mapped_column(primary_key=True)

        @property
        def glow(self) -> str:
            return "bright"

    class LampOut(BaseModel):
        model_config = ConfigDict(from_attributes=True)
        id: int
        glow: str

    assert not inspect(Lamp).configured
    lamps = FastRDB(Lamp, LampOut, pattern="lamp:{id}")
    with pytest.raises(ConfigurationError) as raised:
        await lamps.get(db=db, redis=redis_client, id=1)
    assert (raised.value.argument, raised.value.field) == ("response_schema", "glow")


def test_traceable_shapes_are_accepted() -> None:
    """Plain columns, defaults and a SQL-expression column: the expression's tables count as
    embedded, its own table too (a correlated subquery may read other rows)."""
    configure_mappers()
    FastRDB(Shelf, ShelfOut, pattern="shelf:{id}")
    counted = embedding(inspect(Shelf), ShelfWithCount)
    assert sorted(table.name for table in counted.tables) == ["boxes", "shelves"]
    assert embedding(inspect(Shelf), ShelfOut).tables == ()
