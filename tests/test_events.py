"""Writes made outside FastRDB keep the cache coherent once listen() is called."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio
from sqlalchemy import Engine, create_engine, delete, insert, inspect, select, update
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import flag_modified

from fastrdb.events import ListenHandle, listen
from fastrdb.events.collector import _written
from tests.conftest import Database, async_redis_client
from tests.models import Author, Book, PlainBase, Tag, User, Verse, VerseSchema, book_tags
from tests.processes import run_python
from tests.test_crud import add_user, users, verses

Redis = redis.asyncio.Redis


@pytest.fixture
def sync_writer(sync_engine: Engine, sync_redis: redis.Redis) -> Iterator[sessionmaker[Session]]:
    maker = sessionmaker(sync_engine)
    handle = listen(maker, sync_redis)
    yield maker
    handle.remove()


async def cached_user(db: AsyncSession, redis_client: Redis, email: str, name: str = "Old") -> int:
    created = await add_user(db, redis_client, email, name)
    assert (await users.get(db=db, redis=redis_client, email=email)).name == name
    assert await redis_client.exists(f"user:email:{email}")
    return created.id


async def test_orm_attribute_change(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """An attribute changed and committed through plain ORM code is seen by the next get."""
    user_id = await cached_user(db, redis_client, "a@x.io")
    before = users.stats()["invalidations"]
    async with writer() as session:
        user = await session.get_one(User, user_id)
        user.name = "New"
        await session.commit()
    assert users.stats()["invalidations"] == before + 1
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "New"


async def test_orm_change_of_an_expired_instance(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """An instance expired by a previous commit (pattern field not loaded) still invalidates."""
    user_id = await cached_user(db, redis_client, "a@x.io")
    async with writer() as session:
        user = await session.get_one(User, user_id)
        await session.commit()  # expires every attribute, the email included
        user.name = "New"
        await session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "New"


async def test_orm_delete(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """A row deleted through the ORM is gone for the next get, even when it was expired."""
    user_id = await cached_user(db, redis_client, "a@x.io")
    async with writer() as session:
        user = await session.get_one(User, user_id)
        await session.commit()
        await session.delete(user)
        await session.commit()
    with pytest.raises(NoResultFound):
        await users.get(db=db, redis=redis_client, email="a@x.io")


async def test_orm_insert_changes_list_pages(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """A row inserted through the ORM shows up in the next get_multi."""
    await cached_user(db, redis_client, "a@x.io")
    assert len(await users.get_multi(db=db, redis=redis_client)) == 1
    async with writer() as session:
        session.add(
            User(id=None, email="b@x.io", name="B", bio=None, created_at=None, updated_at=None)
        )  # type: ignore[arg-type]
        await session.commit()
    assert len(await users.get_multi(db=db, redis=redis_client)) == 2


async def test_pattern_field_change(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """Changing the email drops the old email's key; the new email's key works."""
    user_id = await cached_user(db, redis_client, "old@x.io")
    async with writer() as session:
        (await session.get_one(User, user_id)).email = "new@x.io"
        await session.commit()
    with pytest.raises(NoResultFound):
        await users.get(db=db, redis=redis_client, email="old@x.io")
    assert (await users.get(db=db, redis=redis_client, email="new@x.io")).id == user_id


async def test_bulk_update(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """update(Model).where(...).values(...) invalidates every row it touches."""
    await cached_user(db, redis_client, "a@x.io")
    await cached_user(db, redis_client, "b@x.io")
    assert len(await users.get_multi(db=db, redis=redis_client)) == 2
    async with writer() as session:
        await session.execute(
            update(User).where(User.email.in_(["a@x.io", "b@x.io"])).values(name="Bulk")
        )
        await session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Bulk"
    assert (await users.get(db=db, redis=redis_client, email="b@x.io")).name == "Bulk"
    assert {u.name for u in await users.get_multi(db=db, redis=redis_client)} == {"Bulk"}


async def test_bulk_update_of_the_pattern_field_with_an_expression(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """A bulk SET of the pattern field from an SQL expression drops the old keys."""
    await cached_user(db, redis_client, "a@x.io")
    async with writer() as session:
        await session.execute(
            update(User).where(User.email == "a@x.io").values(email=User.name + "@moved.io")
        )
        await session.commit()
    with pytest.raises(NoResultFound):
        await users.get(db=db, redis=redis_client, email="a@x.io")
    assert (await users.get(db=db, redis=redis_client, email="Old@moved.io")).name == "Old"


async def test_bulk_update_by_primary_key(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """The ORM's bulk UPDATE by primary key (a list of parameter sets) invalidates each row."""
    first = await cached_user(db, redis_client, "a@x.io")
    second = await cached_user(db, redis_client, "b@x.io")
    async with writer() as session:
        await session.execute(
            update(User), [{"id": first, "name": "One"}, {"id": second, "name": "Two"}]
        )
        await session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "One"
    assert (await users.get(db=db, redis=redis_client, email="b@x.io")).name == "Two"


async def test_bulk_delete(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """delete(Model).where(...) invalidates the rows it removes and the list pages."""
    await cached_user(db, redis_client, "a@x.io")
    await cached_user(db, redis_client, "b@x.io")
    assert len(await users.get_multi(db=db, redis=redis_client)) == 2
    async with writer() as session:
        await session.execute(delete(User).where(User.email == "a@x.io"))
        await session.commit()
    with pytest.raises(NoResultFound):
        await users.get(db=db, redis=redis_client, email="a@x.io")
    assert [u.email for u in await users.get_multi(db=db, redis=redis_client)] == ["b@x.io"]


async def test_bulk_insert(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """insert(Model) with parameter sets drops the list pages."""
    await cached_user(db, redis_client, "a@x.io")
    assert len(await users.get_multi(db=db, redis=redis_client)) == 1
    async with writer() as session:
        await session.execute(insert(User), [{"email": "b@x.io", "name": "B"}])
        await session.commit()
    assert len(await users.get_multi(db=db, redis=redis_client)) == 2


async def test_core_table_update_through_a_session(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """update() of the Table (not the mapped class) through a session is seen too."""
    await cached_user(db, redis_client, "a@x.io")
    table = User.__table__
    async with writer() as session:
        await session.execute(update(table).where(table.c.email == "a@x.io").values(name="Core"))
        await session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Core"


async def test_narrowed_lists_follow_bulk_updates(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """A bulk update narrowed by invalidate_pattern_prefix still drops the affected chapter."""
    await verses.create(
        db=db, redis=redis_client, obj_in=VerseSchema(chapter_id=3, verse_id=1, text="x")
    )
    assert [v.text for v in await verses.get_multi(db=db, redis=redis_client, chapter_id=3)] == [
        "x"
    ]
    async with writer() as session:
        await session.execute(update(Verse).where(Verse.chapter_id == 3).values(text="y"))
        await session.commit()
    assert [v.text for v in await verses.get_multi(db=db, redis=redis_client, chapter_id=3)] == [
        "y"
    ]


async def test_flush_then_reader_caches_then_commit(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """A reader that caches the committed value between the writer's flush and its commit
    does not keep serving it: the invalidation runs at commit, not at flush."""
    user_id = await cached_user(db, redis_client, "a@x.io")
    await redis_client.delete("user:email:a@x.io")
    async with writer() as session:
        (await session.get_one(User, user_id)).name = "New"
        await session.flush()
        assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Old"
        assert await redis_client.exists("user:email:a@x.io")
        await session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "New"


async def test_flush_then_rollback_keeps_the_cache(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """A flush followed by a rollback invalidates nothing; the cache answers the old value."""
    user_id = await cached_user(db, redis_client, "a@x.io")
    async with writer() as session:
        (await session.get_one(User, user_id)).name = "New"
        await session.flush()
        await session.rollback()
    assert await redis_client.exists("user:email:a@x.io")
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Old"


async def test_savepoints_keep_collecting_until_the_root_commit(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """Changes in a released savepoint, or a rolled-back one, are invalidated at root commit."""
    a = await cached_user(db, redis_client, "a@x.io")
    b = await cached_user(db, redis_client, "b@x.io")
    async with writer() as session:
        async with session.begin_nested():
            (await session.get_one(User, a)).name = "New"
        assert await redis_client.exists("user:email:a@x.io"), "nothing happens at release"
        savepoint = await session.begin_nested()
        (await session.get_one(User, b)).name = "Gone"
        await session.flush()
        await savepoint.rollback()
        await session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "New"
    assert (await users.get(db=db, redis=redis_client, email="b@x.io")).name == "Old"


async def test_several_flushes_accumulate(
    db: AsyncSession, redis_client: Redis, writer: async_sessionmaker[AsyncSession]
) -> None:
    """Two flushes in one transaction both count at commit."""
    a = await cached_user(db, redis_client, "a@x.io")
    b = await cached_user(db, redis_client, "b@x.io")
    async with writer() as session:
        (await session.get_one(User, a)).name = "A2"
        await session.flush()
        (await session.get_one(User, b)).name = "B2"
        await session.flush()
        await session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "A2"
    assert (await users.get(db=db, redis=redis_client, email="b@x.io")).name == "B2"


async def test_sync_session_with_sync_redis(
    db: AsyncSession, redis_client: Redis, sync_writer: sessionmaker[Session]
) -> None:
    """A background-worker style sync Session with a blocking client invalidates too."""
    user_id = await cached_user(db, redis_client, "a@x.io")
    with sync_writer() as session:
        session.get_one(User, user_id).name = "FromWorker"
        session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "FromWorker"


async def test_unlistened_sessions_are_not_affected(
    db: AsyncSession, redis_client: Redis, engine: AsyncEngine
) -> None:
    """Only sessions of a listened target invalidate: another factory's commit leaves the cache."""
    user_id = await cached_user(db, redis_client, "a@x.io")
    listened = async_sessionmaker(engine)
    handle = listen(listened, redis_client)
    other = async_sessionmaker(engine)
    async with other() as session:
        (await session.get_one(User, user_id)).name = "Unseen"
        await session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Old"
    handle.remove()


async def test_remove_stops_invalidation(
    db: AsyncSession, redis_client: Redis, engine: AsyncEngine
) -> None:
    """After handle.remove(), the target's sessions no longer invalidate."""
    user_id = await cached_user(db, redis_client, "a@x.io")
    maker = async_sessionmaker(engine)
    handle = listen(maker, redis_client)
    handle.remove()
    handle.remove()
    assert not handle.active
    async with maker() as session:
        (await session.get_one(User, user_id)).name = "Unseen"
        await session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Old"


async def test_listen_twice_keeps_one_listener(
    db: AsyncSession, redis_client: Redis, engine: AsyncEngine
) -> None:
    """A second listen() on the same target replaces the first instead of adding work."""
    maker = async_sessionmaker(engine)
    first = listen(maker, redis_client)
    second = listen(maker, redis_client)
    assert not first.active
    assert second.active
    user_id = await cached_user(db, redis_client, "a@x.io")
    async with maker() as session:
        (await session.get_one(User, user_id)).name = "New"
        await session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "New"
    second.remove()


@pytest.mark.parametrize("kind", ["class", "instance"])
async def test_session_classes_and_instances_can_be_listened(
    db: AsyncSession, redis_client: Redis, engine: AsyncEngine, kind: str
) -> None:
    """listen() takes an AsyncSession subclass or a single session as well as a factory."""

    class AppSession(AsyncSession):
        pass

    user_id = await cached_user(db, redis_client, "a@x.io")
    session = AppSession(engine)
    handle: ListenHandle = listen(AppSession if kind == "class" else session, redis_client)
    async with session:
        (await session.get_one(User, user_id)).name = kind
        await session.commit()
    handle.remove()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == kind


def test_client_kind_must_match_the_target(
    redis_client: Redis, sync_redis: redis.Redis, engine: AsyncEngine, sync_engine: Engine
) -> None:
    """An async target needs an asyncio client and a sync target a blocking one."""
    with pytest.raises(TypeError, match=r"redis\.asyncio"):
        listen(async_sessionmaker(engine), sync_redis)
    with pytest.raises(TypeError, match="blocking"):
        listen(sessionmaker(sync_engine), redis_client)
    with pytest.raises(TypeError, match="listen"):
        listen(object(), redis_client)


async def test_crud_writes_invalidate_without_listen(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """FastRDB's own writes drop stale keys although nobody called listen()."""
    async with maker() as db:
        await cached_user(db, redis_client, "a@x.io")
        assert len(await users.get_multi(db=db, redis=redis_client)) == 1
        await add_user(db, redis_client, "b@x.io")
        assert len(await users.get_multi(db=db, redis=redis_client)) == 2


async def test_a_client_given_to_crud_calls_is_not_kept_alive(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A client the app dropped (one per request, per test) is freed, with its connections:
    the binding FastRDB keeps per client for unlistened sessions does not hold it."""

    async def request(client: Redis) -> None:
        async with maker() as db:
            await add_user(db, client, "a@x.io")
            await users.get(db=db, redis=client, email="a@x.io")
        await client.aclose()

    client = async_redis_client()
    await request(client)
    dropped = weakref.ref(client)
    del client
    gc.collect()
    assert dropped() is None


async def test_a_session_bound_by_a_crud_call_keeps_its_client(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """An unlistened session that a CRUD call bound invalidates its later ORM commits through
    that call's client, although the app holds the client no more (a client per call)."""
    async with maker() as db:
        created = await add_user(db, redis_client, "a@x.io", "Old")
    client = async_redis_client()
    held = weakref.ref(client)
    async with maker() as db:
        assert (await users.get(db=db, redis=client, email="a@x.io")).name == "Old"
        del client
        gc.collect()
        (await db.get_one(User, created.id)).name = "New"
        await db.commit()
        client = held()
        assert client is not None
        await client.aclose()
    assert await redis_client.get("user:email:a@x.io") is None


WORKER = """
import sys
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker
from fastrdb.events import listen
from tests.conftest import sync_redis_client
from tests.models import User

url, user_id, name = sys.argv[1:4]
maker = sessionmaker(create_engine(url))
listen(maker, sync_redis_client())
with maker() as session:
    session.get_one(User, int(user_id)).name = name
    session.commit()
print("FastRDB instances imported:", "tests.test_crud" in sys.modules)
"""


@pytest.mark.slow
async def test_separate_worker_process(
    db: AsyncSession, redis_client: Redis, database: Database
) -> None:
    """A separate process that imports only the models (no FastRDB instance) and uses a sync
    Session with listen() invalidates what the app cached."""
    user_id = await cached_user(db, redis_client, "a@x.io")
    result = await run_python(WORKER, database.sync_url, str(user_id), "Worker")
    assert result.returncode == 0, result.stderr
    assert "FastRDB instances imported: False" in result.stdout
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Worker"


async def test_new_patterns_are_picked_up_without_restart(
    db: AsyncSession, redis_client: Redis, sync_writer: sessionmaker[Session]
) -> None:
    """A pattern first used after the listener started is invalidated all the same."""
    from fastrdb import FastRDB
    from tests.models import UserCreate, UserResponse, UserUpdate

    by_id = FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:id:{id}"
    )
    user_id = await cached_user(db, redis_client, "a@x.io")
    with sync_writer() as session:
        session.get_one(User, user_id).name = "First"
        session.commit()
    assert (await by_id.get(db=db, redis=redis_client, id=user_id)).name == "First"
    with sync_writer() as session:
        session.get_one(User, user_id).name = "Second"
        session.commit()
    assert (await by_id.get(db=db, redis=redis_client, id=user_id)).name == "Second"
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Second"
    row = (await db.execute(select(User.name).where(User.id == user_id))).scalar_one()
    assert row == "Second"


async def test_legacy_query_update_and_delete(
    db: AsyncSession, redis_client: Redis, sync_writer: sessionmaker[Session]
) -> None:
    """The 1.x-style Query.update() and Query.delete() are seen like update() and delete()."""
    await cached_user(db, redis_client, "a@x.io")
    await cached_user(db, redis_client, "b@x.io")
    with sync_writer() as session:
        session.query(User).filter(User.email == "a@x.io").update({"name": "Legacy"})
        session.query(User).filter(User.email == "b@x.io").delete()
        session.commit()
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Legacy"
    with pytest.raises(NoResultFound):
        await users.get(db=db, redis=redis_client, email="b@x.io")


_EDITS: dict[str, Callable[[Session, Book], None]] = {
    "untouched": lambda session, book: None,
    "title set to its value": lambda session, book: setattr(book, "title", book.title),
    "title changed": lambda session, book: setattr(book, "title", "Other"),
    "title changed and put back": lambda session, book: (
        setattr(book, "title", "Other"),
        setattr(book, "title", "Title"),
    ),
    "title flagged modified": lambda session, book: flag_modified(book, "title"),
    "expired title set": lambda session, book: (
        session.expire(book, ["title"]),
        setattr(book, "title", "Other"),
    ),
    "tag added (a collection)": lambda session, book: book.tags.append(Tag(id=9, label="t")),
    "author changed (many-to-one)": lambda session, book: setattr(
        book, "author", session.get_one(Author, 2)
    ),
    "author set to its value": lambda session, book: setattr(book, "author", book.author),
    "foreign key changed": lambda session, book: setattr(book, "author_id", 2),
}


@pytest.mark.parametrize("edit", list(_EDITS))
def test_what_a_flush_writes_is_what_is_modified_says(edit: str) -> None:
    """The hooks' cheap test of whether a flush writes a row's columns answers as
    ``Session.is_modified(obj, include_collections=False)`` does."""
    engine = create_engine("sqlite://")
    PlainBase.metadata.create_all(
        engine, tables=[Author.__table__, Book.__table__, Tag.__table__, book_tags]
    )
    with Session(engine) as session:
        session.add_all([Author(id=1, name="A"), Author(id=2, name="B")])
        session.add(Book(id=1, title="Title", author_id=1))
        session.commit()
        book = session.get_one(Book, 1)
        assert book.author.id == 1 and book.tags == []  # loaded, as code showing them would
        _EDITS[edit](session, book)
        state = inspect(book)
        assert _written(state) is session.is_modified(book, include_collections=False)
    engine.dispose()
