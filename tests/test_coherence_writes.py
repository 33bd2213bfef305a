"""Which keys a commit drops comes from the database's pre- and post-images, not from the
writer's session state (issue 11, the write side), on every test database."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio
from pydantic import BaseModel
from sqlalchemy import Engine, create_engine, event, insert, select, update
from sqlalchemy.exc import NoResultFound, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from fastrdb import FastRDB
from fastrdb._compat import await_in_greenlet
from fastrdb.events import exact, folding, listen
from tests.conftest import Database
from tests.models import User, UserCreate, UserResponse, UserUpdate, Verse
from tests.models_writes import (
    Acct,
    AcctOut,
    Employee,
    EmployeeOut,
    Engineer,
    Kid,
    KidOut,
    Manager,
    ManagerOut,
    Node,
    NodeOut,
    Parent,
    Priced,
    PricedOut,
    Stamped,
    StampedOut,
    Tally,
    TallyOut,
)
from tests.test_crud import add_user, users, verses

Redis = redis.asyncio.Redis
Maker = async_sessionmaker[AsyncSession]

employees = FastRDB[Employee, BaseModel, BaseModel, EmployeeOut](
    Employee, EmployeeOut, pattern="employee:{id}"
)
managers = FastRDB[Manager, BaseModel, BaseModel, ManagerOut](
    Manager, ManagerOut, pattern="manager:{id}"
)
managers_by_dept = FastRDB[Manager, BaseModel, BaseModel, ManagerOut](
    Manager, ManagerOut, pattern="manager:dept:{dept}"
)
accts = FastRDB[Acct, BaseModel, BaseModel, AcctOut](Acct, AcctOut, pattern="acct:{email_addr}")
kids = FastRDB[Kid, BaseModel, BaseModel, KidOut](Kid, KidOut, pattern="kid:{id}")
nodes_by_buddy = FastRDB[Node, BaseModel, BaseModel, NodeOut](
    Node, NodeOut, pattern="node:buddy:{buddy_id}"
)
stamps_by_rev = FastRDB[Stamped, BaseModel, BaseModel, StampedOut](
    Stamped, StampedOut, pattern="stamped:rev:{rev}"
)
stamps_by_seq = FastRDB[Stamped, BaseModel, BaseModel, StampedOut](
    Stamped, StampedOut, pattern="stamped:seq:{seq}"
)
tallies = FastRDB[Tally, BaseModel, BaseModel, TallyOut](Tally, TallyOut, pattern="tally:{n}")
priced = FastRDB[Priced, BaseModel, BaseModel, PricedOut](
    Priced,
    PricedOut,
    pattern="priced:{id}",
    list_pattern="priced:price:{price}:page:{page}:limit:{limit}",
    invalidate_pattern_prefix="priced:price:{price}:*",
)


def _other_users_crud(pattern: str) -> Iterator[FastRDB[Any, Any, Any, Any]]:
    """A FastRDB of User with another pattern, gone after the test: listeners in refresh mode
    refill through every live instance of a model, and other tests expect only theirs."""
    crud = FastRDB[User, UserCreate, UserUpdate, UserResponse](User, UserResponse, pattern=pattern)
    yield crud
    del crud
    gc.collect()


@pytest.fixture
def users_by_id() -> Iterator[FastRDB[Any, Any, Any, Any]]:
    yield from _other_users_crud("user:id:{id}")


@pytest.fixture
def users_by_name() -> Iterator[FastRDB[Any, Any, Any, Any]]:
    yield from _other_users_crud("user:name:{name}")


async def read(crud: FastRDB[Any, Any, Any, Any], maker: Maker, redis: Redis, **kw: Any) -> Any:
    """A get in a session of its own (cached after it when it missed)."""
    async with maker() as db:
        return await crud.get(db=db, redis=redis, **kw)


async def cached(crud: FastRDB[Any, Any, Any, Any], maker: Maker, redis: Redis, **kw: Any) -> Any:
    value = await read(crud, maker, redis, **kw)
    assert await read(crud, maker, redis, **kw) == value
    return value


async def add(maker: Maker, *rows: Any) -> None:
    async with maker() as session:
        session.add_all(rows)
        await session.commit()


# -- family 3: expired attributes, out-of-date copies --


async def test_pattern_field_set_on_an_expired_instance(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """An email set on an instance expired by a commit drops the OLD email's key."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Ann")
    await cached(users, maker, redis_client, email="a@x.io")
    async with writer() as session:
        user = (await session.execute(select(User).where(User.email == "a@x.io"))).scalar_one()
        await session.commit()  # expires every attribute: no old email in history
        user.email = "b@x.io"
        await session.commit()
    with pytest.raises(NoResultFound):
        await read(users, maker, redis_client, email="a@x.io")


async def test_pattern_field_set_after_expire_in_a_sync_worker(
    maker: Maker, redis_client: Redis, sync_maker: sessionmaker[Session], sync_redis: Any
) -> None:
    """A worker's session.expire(obj) then a pattern field change drops the old key."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Ann")
    await cached(users, maker, redis_client, email="a@x.io")
    handle = listen(sync_maker, sync_redis)
    try:
        with sync_maker() as session:
            user = session.execute(select(User)).scalar_one()
            session.expire(user)
            user.email = "b@x.io"
            session.commit()
    finally:
        handle.remove()
    with pytest.raises(NoResultFound):
        await read(users, maker, redis_client, email="a@x.io")


async def _change_email_elsewhere(writer: Maker, user_id: int, email: str) -> None:
    async with writer() as other:
        (await other.get_one(User, user_id)).email = email
        await other.commit()


async def test_out_of_date_copy_updates_another_field(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """A copy loaded before another session changed the email still drops the NEW email's key
    when it updates the name."""
    async with maker() as db:
        user_id = (await add_user(db, redis_client, "a@x.io", "Ann")).id
    async with writer() as session:
        user = await session.get_one(User, user_id)  # email a@x.io, held
        await _change_email_elsewhere(writer, user_id, "b@x.io")
        await cached(users, maker, redis_client, email="b@x.io")
        user.name = "Renamed"
        await session.commit()
    assert (await read(users, maker, redis_client, email="b@x.io")).name == "Renamed"


async def test_out_of_date_copies_updated_in_one_statement(
    engine: AsyncEngine, maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """Three copies loaded before another session changed their emails (a → a2), given new
    emails (a3) in one flush: the unit of work sends one UPDATE with three parameter sets
    (``executemany``), and every row's a2 key drops — known only from each row's pre-image as
    the database held it, not from the session (a) nor the post-image (a3)."""
    async with maker() as db:
        ids = [(await add_user(db, redis_client, f"{n}@x.io", n)).id for n in ("a", "b", "c")]
    sent: list[tuple[str, bool]] = []

    def note(connection: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool):
        if statement.startswith("UPDATE users"):
            sent.append((statement, many))

    async with writer() as session:
        held = [await session.get_one(User, user_id) for user_id in ids]
        for user_id, name in zip(ids, ("a", "b", "c"), strict=True):
            await _change_email_elsewhere(writer, user_id, f"{name}2@x.io")
            await cached(users, maker, redis_client, email=f"{name}2@x.io")
        for user, name in zip(held, ("a", "b", "c"), strict=True):
            user.email = f"{name}3@x.io"
        event.listen(engine.sync_engine, "before_cursor_execute", note)
        try:
            await session.commit()
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", note)
    assert [many for _, many in sent] == [True], sent
    for name in ("a", "b", "c"):
        with pytest.raises(NoResultFound):
            await read(users, maker, redis_client, email=f"{name}2@x.io")
        assert (await read(users, maker, redis_client, email=f"{name}3@x.io")).name == name


async def test_out_of_date_copy_deletes_the_row(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """Deleting through an out-of-date copy drops the key of the row as the database held it."""
    async with maker() as db:
        user_id = (await add_user(db, redis_client, "a@x.io", "Ann")).id
    async with writer() as session:
        user = await session.get_one(User, user_id)
        await _change_email_elsewhere(writer, user_id, "b@x.io")
        await cached(users, maker, redis_client, email="b@x.io")
        await session.delete(user)
        await session.commit()
    with pytest.raises(NoResultFound):
        await read(users, maker, redis_client, email="b@x.io")


async def test_fastrdb_update_in_a_session_holding_an_out_of_date_copy(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """FastRDB's own update() refreshes the copy it writes: the key it fills and the keys it
    drops are the row's as the database holds it."""
    async with maker() as db:
        user_id = (await add_user(db, redis_client, "a@x.io", "Ann")).id
    async with maker() as db:
        held = await db.get_one(User, user_id)  # the session now holds a copy
        assert held.email == "a@x.io"
        await _change_email_elsewhere(writer, user_id, "b@x.io")
        await cached(users, maker, redis_client, email="b@x.io")
        response = await users.update(
            db=db, redis=redis_client, obj_in=UserUpdate(name="New"), email="b@x.io"
        )
        assert response.email == "b@x.io" and response.name == "New"
        raw = await redis_client.get("user:email:b@x.io")
        assert raw is None or UserResponse.model_validate_json(raw).name == "New"
    assert (await read(users, maker, redis_client, email="b@x.io")).name == "New"


async def test_fastrdb_update_that_changes_nothing_in_an_old_snapshot(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """REPEATABLE READ (MariaDB's default): a session whose snapshot predates another session's
    commit calls update() with the values the row has now. The locked read finds them, no
    UPDATE is sent, and the write-through must not cache the snapshot's older row."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Ann")
    async with writer() as session:
        await session.execute(select(User.id))  # the snapshot starts here
        async with writer() as other:
            (await other.execute(select(User))).scalar_one().name = "Bob"
            await other.commit()
        await users.update(
            db=session, redis=redis_client, obj_in=UserUpdate(name="Bob"), email="a@x.io"
        )
    assert (await read(users, maker, redis_client, email="a@x.io")).name == "Bob"


# -- family 4: inserts and upserts --


def _upsert(
    database: Database,
    values: dict[str, Any],
    conflict: str = "email",
    sets: tuple[str, ...] = ("name",),
) -> Any:
    """The dialect's INSERT … ON CONFLICT (``conflict``) / ON DUPLICATE KEY that sets the
    inserted ``sets`` columns."""
    if database.name in ("postgresql", "sqlite"):
        if database.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        statement = dialect_insert(User).values(**values) if values else dialect_insert(User)
        return statement.on_conflict_do_update(
            index_elements=[conflict], set_={name: statement.excluded[name] for name in sets}
        )
    from sqlalchemy.dialects.mysql import insert as mysql_insert

    statement = mysql_insert(User).values(**values) if values else mysql_insert(User)
    return statement.on_duplicate_key_update(**{name: statement.inserted[name] for name in sets})


async def test_upsert_with_values_drops_the_existing_rows_keys(
    database: Database,
    maker: Maker,
    redis_client: Redis,
    writer: Maker,
    users_by_id: FastRDB[Any, Any, Any, Any],
) -> None:
    """An upsert hitting an existing row drops its keys by every pattern (email and id)."""
    async with maker() as db:
        user_id = (await add_user(db, redis_client, "a@x.io", "Ann")).id
    await cached(users, maker, redis_client, email="a@x.io")
    await cached(users_by_id, maker, redis_client, id=user_id)
    async with writer() as session:
        await session.execute(_upsert(database, {"email": "a@x.io", "name": "Upserted"}))
        await session.commit()
    assert (await read(users, maker, redis_client, email="a@x.io")).name == "Upserted"
    assert (await read(users_by_id, maker, redis_client, id=user_id)).name == "Upserted"


async def test_upsert_with_a_parameter_list(
    database: Database,
    maker: Maker,
    redis_client: Redis,
    writer: Maker,
    users_by_id: FastRDB[Any, Any, Any, Any],
) -> None:
    """An upsert run with a list of parameter sets drops every existing row's keys."""
    async with maker() as db:
        first = (await add_user(db, redis_client, "a@x.io", "Ann")).id
        second = (await add_user(db, redis_client, "b@x.io", "Bob")).id
    for user_id in (first, second):
        await cached(users_by_id, maker, redis_client, id=user_id)
    async with writer() as session:
        await session.execute(
            _upsert(database, {}),
            [{"email": "a@x.io", "name": "X"}, {"email": "b@x.io", "name": "Y"}],
        )
        await session.commit()
    assert (await read(users_by_id, maker, redis_client, id=first)).name == "X"
    assert (await read(users_by_id, maker, redis_client, id=second)).name == "Y"


async def test_upsert_that_moves_a_pattern_field_drops_the_old_values_key(
    database: Database, maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """An upsert on the primary key that sets a new email: the statement names only the new
    email, so the old one's key is known only from the row as the database held it."""
    async with maker() as db:
        user_id = (await add_user(db, redis_client, "a@x.io", "Ann")).id
    await cached(users, maker, redis_client, email="a@x.io")
    values = {"id": user_id, "email": "moved@x.io", "name": "Moved"}
    upsert = _upsert(database, values, conflict="id", sets=("email", "name"))
    async with writer() as session:
        await session.execute(upsert)
        await session.commit()
    with pytest.raises(NoResultFound):
        await read(users, maker, redis_client, email="a@x.io")
    assert (await read(users, maker, redis_client, email="moved@x.io")).name == "Moved"


async def test_insert_values_into_a_narrowed_page(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """insert(Model).values(...) drops the narrowed pages the new row enters."""
    await add(maker, Verse(chapter_id=3, verse_id=1, text="one"))
    async with maker() as db:
        assert len(await verses.get_multi(db=db, redis=redis_client, chapter_id=3)) == 1
    async with writer() as session:
        await session.execute(insert(Verse).values(chapter_id=3, verse_id=2, text="two"))
        await session.commit()
    async with maker() as db:
        assert len(await verses.get_multi(db=db, redis=redis_client, chapter_id=3)) == 2


# -- family 5: inheritance --


async def test_update_through_the_base_drops_the_subclass_key(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """update(Employee) on a row that is a Manager drops FastRDB(Manager)'s keys, including
    a pattern on a subclass column; no cartesian-product warning (warnings are errors)."""
    await add(maker, Manager(id=1, name="Mia", dept="ops"))
    await cached(managers, maker, redis_client, id=1)
    await cached(managers_by_dept, maker, redis_client, dept="ops")
    async with writer() as session:
        await session.execute(update(Employee).where(Employee.id == 1).values(name="Max"))
        await session.commit()
    assert (await read(managers, maker, redis_client, id=1)).name == "Max"
    assert (await read(managers_by_dept, maker, redis_client, dept="ops")).name == "Max"


async def test_orm_write_through_the_subclass_drops_the_base_key(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """An ORM change of a Manager drops FastRDB(Employee)'s key of the same row."""
    await add(maker, Manager(id=1, name="Mia", dept="ops"), Engineer(id=2, name="Eve"))
    await cached(employees, maker, redis_client, id=1)
    await cached(employees, maker, redis_client, id=2)
    async with writer() as session:
        (await session.get_one(Manager, 1)).name = "Max"
        (await session.get_one(Engineer, 2)).name = "Eli"
        await session.commit()
    assert (await read(employees, maker, redis_client, id=1)).name == "Max"
    assert (await read(employees, maker, redis_client, id=2)).name == "Eli"


# -- family 6: renamed columns --


async def test_core_table_update_of_a_renamed_column(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """update(Model.__table__) through the session names the column ``mail``; the pattern's
    ``email_addr`` still gets the old and new values."""
    await add(maker, Acct(id=1, email_addr="a@x.io", name="A"))
    await cached(accts, maker, redis_client, email_addr="a@x.io")
    table = Acct.__table__
    async with writer() as session:
        await session.execute(update(table).where(table.c.id == 1).values(mail="b@x.io"))
        await session.commit()
    with pytest.raises(NoResultFound):
        await read(accts, maker, redis_client, email_addr="a@x.io")


# -- family 10: delete-orphan --


async def test_delete_orphan_without_a_backref(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """A child removed from its parent's collection is deleted by the flush: its key drops."""
    await add(maker, Parent(id=1, kids=[Kid(id=1, name="k")]))
    await cached(kids, maker, redis_client, id=1)
    async with writer() as session:
        parent = (await session.execute(select(Parent).where(Parent.id == 1))).scalar_one()
        await session.refresh(parent, ["kids"])
        parent.kids.remove(parent.kids[0])
        await session.commit()
    with pytest.raises(NoResultFound):
        await read(kids, maker, redis_client, id=1)


# -- family 11 (write side): values as stored, not as assigned --


async def test_insert_enters_a_narrowed_page_in_its_stored_form(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """Decimal("9.5") into Numeric(10,2) is stored as 9.50: the page narrowed on 9.50 drops."""
    await add(maker, Priced(id=1, price=Decimal("9.50"), name="a"))
    async with maker() as db:
        page = await priced.get_multi(db=db, redis=redis_client, price=Decimal("9.50"))
        assert len(page) == 1
    async with writer() as session:
        session.add(Priced(id=2, price=Decimal("9.5"), name="b"))
        await session.commit()
    async with maker() as db:
        page = await priced.get_multi(db=db, redis=redis_client, price=Decimal("9.50"))
        assert len(page) == 2


# -- family 12: onupdate columns --


@pytest.mark.parametrize(("crud", "field"), [(stamps_by_rev, "rev"), (stamps_by_seq, "seq")])
async def test_pattern_on_an_onupdate_column(
    maker: Maker,
    redis_client: Redis,
    writer: Maker,
    crud: FastRDB[Any, Any, Any, Any],
    field: str,
) -> None:
    """A pattern on an ``onupdate`` column (Python callable, SQL expression): the old value's
    key drops although the column has no attribute history."""
    await add(maker, Stamped(id=1, name="a"))
    await cached(crud, maker, redis_client, **{field: 1})
    async with writer() as session:
        (await session.get_one(Stamped, 1)).name = "b"
        await session.commit()
    with pytest.raises(NoResultFound):
        await read(crud, maker, redis_client, **{field: 1})


# -- family 13: bulk UPDATE of a primary key --


async def test_bulk_update_moving_rows_to_another_primary_key(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """update() that changes a primary key column drops the pages the rows move into."""
    await add(
        maker,
        Verse(chapter_id=1, verse_id=5, text="moving"),
        Verse(chapter_id=2, verse_id=1, text="there"),
    )
    async with maker() as db:
        assert len(await verses.get_multi(db=db, redis=redis_client, chapter_id=2)) == 1
    async with writer() as session:
        await session.execute(
            update(Verse).where(Verse.chapter_id == 1).values(chapter_id=Verse.chapter_id + 1)
        )
        await session.commit()
    async with maker() as db:
        assert len(await verses.get_multi(db=db, redis=redis_client, chapter_id=2)) == 2


# -- family 14: listen() again, remove() then listen() --


@pytest.mark.parametrize("how", ["again", "after_remove"])
async def test_listen_again_covers_sessions_already_open(
    engine: Any, maker: Maker, redis_client: Redis, how: str
) -> None:
    """A session made after the first listen() keeps invalidating when the factory is
    listen()ed again (or removed and listened again) while it is open."""
    factory = async_sessionmaker(engine)
    first = listen(factory, redis_client)
    async with maker() as db:
        user_id = (await add_user(db, redis_client, "a@x.io", "Ann")).id
    async with factory() as session:
        if how == "after_remove":
            first.remove()
        second = listen(factory, redis_client)
        try:
            await cached(users, maker, redis_client, email="a@x.io")
            (await session.get_one(User, user_id)).name = "New"
            await session.commit()
        finally:
            second.remove()
    assert (await read(users, maker, redis_client, email="a@x.io")).name == "New"


async def test_removed_listener_leaves_open_sessions_silent(
    engine: Any, maker: Maker, redis_client: Redis
) -> None:
    """After remove(), sessions of the target, open ones included, invalidate nothing (as the
    README says); the entry keeps its old value until it expires."""
    factory = async_sessionmaker(engine)
    handle = listen(factory, redis_client)
    async with maker() as db:
        user_id = (await add_user(db, redis_client, "a@x.io", "Ann")).id
    async with factory() as session:
        handle.remove()
        await cached(users, maker, redis_client, email="a@x.io")
        (await session.get_one(User, user_id)).name = "New"
        await session.commit()
    assert (await read(users, maker, redis_client, email="a@x.io")).name == "Ann"


# -- family 15: published patterns checked by content --


async def test_pattern_set_rebuilt_after_flushdb_with_other_patterns(
    maker: Maker,
    redis_client: Redis,
    writer: Maker,
    users_by_name: FastRDB[Any, Any, Any, Any],
) -> None:
    """A process's cached copy of a table's patterns is checked by content: after FLUSHDB the
    set is rebuilt with another pattern of the same size, and the next commit uses it."""
    async with maker() as db:
        user_id = (await add_user(db, redis_client, "a@x.io", "Ann")).id
    async with writer() as session:  # this client now has the users patterns cached
        (await session.get_one(User, user_id)).bio = "x"
        await session.commit()
    await redis_client.flushdb()
    await cached(users_by_name, maker, redis_client, name="Ann")
    async with writer() as session:
        (await session.get_one(User, user_id)).name = "Bob"
        await session.commit()
    with pytest.raises(NoResultFound):
        await read(users_by_name, maker, redis_client, name="Ann")


# -- association rows the unit of work writes --


async def test_a_collection_change_through_an_association_table(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """book.tags.remove(tag) makes the flush delete an association row (no mapper event fires
    for it): entries that embed the association table are dropped."""
    from tests.models import Author, Book, Tag
    from tests.test_relations import books

    await add(maker, Author(id=1, name="A"), Tag(id=1, label="sf"))
    async with writer() as session:
        book = Book(id=1, title="Dune", author_id=1)
        session.add(book)
        await session.flush()
        await session.refresh(book, ["tags"])
        book.tags.append(await session.get_one(Tag, 1))
        await session.commit()
    async with maker() as db:
        assert [t.label for t in (await books.get(db=db, redis=redis_client, id=1)).tags] == ["sf"]
    async with writer() as session:
        book = await session.get_one(Book, 1)
        await session.refresh(book, ["tags"])
        book.tags.clear()
        await session.commit()
    async with maker() as db:
        assert (await books.get(db=db, redis=redis_client, id=1)).tags == []


# -- SQLite: the pre-image is read under the write lock --


async def test_sqlite_pre_image_is_read_under_the_write_lock(
    database: Database, engine: AsyncEngine, maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """SQLite has no FOR UPDATE, and its drivers begin a transaction only at the first write: a
    pre-image read before it could be followed by another connection's commit. Forced: right
    before the writer's UPDATE, another connection tries to move the row from a@x.io to b@x.io
    and a reader caches b@x.io. The writer then sets c@x.io. Either that connection waited for
    the writer's lock (a pre-image read after ``BEGIN IMMEDIATE``), or it committed and the
    writer's UPDATE, which reads the pre-image itself (``fastrdb_old`` in its WHERE), saw
    b@x.io: the key b@x.io must be dropped, not serve a row that now has c@x.io."""
    if database.name != "sqlite":
        pytest.skip("PostgreSQL and MariaDB lock the pre-image with SELECT … FOR UPDATE")
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Ann")
    other = create_engine(database.sync_url, connect_args={"timeout": 0.2})
    outcome: list[str] = []

    def commit_meanwhile(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.startswith("UPDATE users") or outcome:
            return
        try:
            with other.begin() as elsewhere:
                elsewhere.execute(update(User).where(User.email == "a@x.io").values(email="b@x.io"))
            outcome.append("committed")
        except OperationalError as exc:
            outcome.append("waited" if "locked" in str(exc) else str(exc))
        with contextlib.suppress(NoResultFound):
            await_in_greenlet(read(users, maker, redis_client, email="b@x.io"))

    event.listen(engine.sync_engine, "before_cursor_execute", commit_meanwhile)
    try:
        async with writer() as session:
            user = (await session.execute(select(User))).scalar_one()
            user.email = "c@x.io"
            await session.commit()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", commit_meanwhile)
        other.dispose()
    assert outcome in (["committed"], ["waited"]), outcome
    with pytest.raises(NoResultFound):
        await read(users, maker, redis_client, email="b@x.io")
    assert (await read(users, maker, redis_client, email="c@x.io")).name == "Ann"


_LOCK_WAITS = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'",
    "mariadb": "SELECT count(*) FROM information_schema.innodb_trx t "
    "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
    "WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()",
}


async def _until_waiting_for_a_lock(
    engine: AsyncEngine, database: Database, task: asyncio.Task[None]
) -> None:
    """Return once a statement of this database waits for a lock (``task`` is the one that
    should: its failure is raised)."""
    async with engine.connect() as connection:
        for _ in range(100):
            if task.done():
                await task
                raise AssertionError("the writer finished without waiting for the row's lock")
            if (await connection.exec_driver_sql(_LOCK_WAITS[database.name])).scalar():
                return
            await connection.rollback()
            await asyncio.sleep(0.2)  # MariaDB refreshes innodb_trx when unread for 0.1 s
    raise AssertionError("the writer's flush never waited for the row's lock")


@pytest.mark.parametrize("model", [User, Acct], ids=["with onupdate", "plain table"])
@pytest.mark.parametrize("rows", [1, 2], ids=["one row", "two rows in one statement"])
async def test_pre_image_waits_for_the_lock_of_an_uncommitted_change(
    database: Database,
    engine: AsyncEngine,
    maker: Maker,
    redis_client: Redis,
    writer: Maker,
    rows: int,
    model: type[User] | type[Acct],
) -> None:
    """PostgreSQL and MariaDB: the writer's copy says a@x.io while another transaction has
    moved the row to b@x.io and not committed yet. The writer's flush (it sets c@x.io) must
    wait for that lock and read the row as committed after it: forced, the other transaction
    commits while the writer waits, a reader caches b@x.io before the writer commits, and the
    writer's commit must drop b@x.io. (On PostgreSQL a plain table's one-row UPDATE reads the
    row itself; several rows in one statement, or a table with ``onupdate``, are read by a
    locked SELECT before it.)"""
    if database.name == "sqlite":
        pytest.skip("SQLite has no row locks: see the test above")
    field = "email" if model is User else "email_addr"
    people = [("a@x.io", "Ann"), ("d@x.io", "Dan")]
    crud: FastRDB[Any, Any, Any, Any] = users if model is User else accts
    if model is User:
        async with maker() as db:
            ids = [(await add_user(db, redis_client, e, n)).id for e, n in people]
    else:
        await add(maker, *(Acct(id=i, email_addr=e, name=n) for i, (e, n) in enumerate(people)))
        ids = [0, 1]
    flushed, proceed = asyncio.Event(), asyncio.Event()

    def hold(*args: Any) -> None:
        flushed.set()
        await_in_greenlet(proceed.wait())

    async def write() -> None:
        async with writer() as session:
            first, second = [await session.get_one(model, i) for i in ids]
            event.listen(session.sync_session, "after_flush_postexec", hold)
            setattr(first, field, "c@x.io")
            if rows == 2:
                setattr(second, field, "e@x.io")
            await session.commit()

    async with writer() as other:
        setattr(await other.get_one(model, ids[0]), field, "b@x.io")
        await other.flush()  # holds the row's lock
        task = asyncio.create_task(write())
        await _until_waiting_for_a_lock(engine, database, task)
        await other.commit()
    await flushed.wait()
    assert (await cached(crud, maker, redis_client, **{field: "b@x.io"})).name == "Ann"
    proceed.set()
    await task
    with pytest.raises(NoResultFound):
        await read(crud, maker, redis_client, **{field: "b@x.io"})
    assert (await read(crud, maker, redis_client, **{field: "c@x.io"})).name == "Ann"


async def test_a_row_written_again_by_a_post_update_in_the_same_flush(
    maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """The unit of work writes a ``post_update`` foreign key in a second UPDATE after the
    row's own: the post-image is the row after both (on PostgreSQL the first UPDATE returned
    it, and the second one makes it out of date), so the new value's negative entry drops."""
    await add(maker, Node(id=1, name="one"), Node(id=2, name="two"))
    with pytest.raises(NoResultFound):
        await read(nodes_by_buddy, maker, redis_client, buddy_id=2)  # a negative entry
    async with writer() as session:
        one, two = await session.get_one(Node, 1), await session.get_one(Node, 2)
        one.name = "One"
        one.buddy = two
        await session.commit()
    assert (await read(nodes_by_buddy, maker, redis_client, buddy_id=2)).name == "One"


async def test_an_update_the_engine_hook_did_not_see_drops_the_whole_table(
    database: Database, maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """PostgreSQL and SQLite leave a row's pre-image to its UPDATE, which FastRDB folds from
    the engine's ``before_execute``. Should that statement ever reach the database unseen
    (forced here by taking the hook out), the row's old values are unknown: every entry of its
    table goes, the old email's key with them, rather than none."""
    if database.name == "mariadb":
        pytest.skip("MariaDB reads the pre-image before the UPDATE")
    await add(maker, Acct(id=1, email_addr="a@x.io", name="Ann"))
    await cached(accts, maker, redis_client, email_addr="a@x.io")
    event.remove(Engine, "before_execute", folding.before_execute)
    try:
        async with writer() as session:
            (await session.get_one(Acct, 1)).email_addr = "b@x.io"
            await session.commit()
    finally:
        event.listen(Engine, "before_execute", folding.before_execute, retval=True)
    with pytest.raises(NoResultFound):
        await read(accts, maker, redis_client, email_addr="a@x.io")
    assert (await read(accts, maker, redis_client, email_addr="b@x.io")).name == "Ann"


# -- the post-image: computed where the values sent are exact, read back elsewhere --

_LOWERING_TRIGGER = {
    "postgresql": (
        [
            "CREATE FUNCTION fastrdb_lower_mail() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN NEW.mail := lower(NEW.mail); RETURN NEW; END $$",
            "CREATE TRIGGER fastrdb_lower_mail BEFORE UPDATE ON accts "
            "FOR EACH ROW EXECUTE FUNCTION fastrdb_lower_mail()",
        ],
        [
            "DROP TRIGGER IF EXISTS fastrdb_lower_mail ON accts",
            "DROP FUNCTION IF EXISTS fastrdb_lower_mail()",
        ],
    ),
    "sqlite": (
        [
            "CREATE TRIGGER fastrdb_lower_mail AFTER UPDATE OF mail ON accts "
            "BEGIN UPDATE accts SET mail = lower(NEW.mail) WHERE id = NEW.id; END"
        ],
        ["DROP TRIGGER IF EXISTS fastrdb_lower_mail"],
    ),
    "mariadb": (
        [
            "CREATE TRIGGER fastrdb_lower_mail BEFORE UPDATE ON accts "
            "FOR EACH ROW SET NEW.mail = lower(NEW.mail)"
        ],
        ["DROP TRIGGER IF EXISTS fastrdb_lower_mail"],
    ),
}


@pytest.fixture
async def lowering_trigger(database: Database, engine: AsyncEngine) -> AsyncIterator[None]:
    """A trigger that stores ``accts.mail`` in lower case whatever an UPDATE sent."""
    create, drop = _LOWERING_TRIGGER[database.name]
    async with engine.begin() as connection:
        for statement in drop + create:
            await connection.exec_driver_sql(statement)
    yield
    async with engine.begin() as connection:
        for statement in drop:
            await connection.exec_driver_sql(statement)


async def test_a_trigger_that_changes_a_pattern_field(
    maker: Maker, redis_client: Redis, writer: Maker, lowering_trigger: None
) -> None:
    """A trigger stores another value than the UPDATE sent: the key of the value stored drops
    (a negative entry cached for it before), since the post-image is read back."""
    await add(maker, Acct(id=1, email_addr="a@x.io", name="Ann"))
    with pytest.raises(NoResultFound):
        await read(accts, maker, redis_client, email_addr="b@x.io")  # a negative entry
    async with writer() as session:
        (await session.get_one(Acct, 1)).email_addr = "B@X.IO"
        await session.commit()
    assert (await read(accts, maker, redis_client, email_addr="b@x.io")).name == "Ann"


async def test_a_plain_update_reads_no_post_image(
    database: Database, engine: AsyncEngine, maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """An ORM UPDATE sending plain values to a table with no trigger, ``onupdate`` or
    generated column: on PostgreSQL and SQLite the row is not read (the UPDATE itself reads
    the row as it was under the lock, and returns it as written on PostgreSQL; SQLite's
    post-image is computed); MariaDB reads it once (its pre-image, under the lock; the
    post-image is computed under a strict ``sql_mode``, the server's default). The old value's
    key and the new value's negative entry both drop."""
    await add(maker, Acct(id=1, email_addr="a@x.io", name="Ann"))
    await cached(accts, maker, redis_client, email_addr="a@x.io")
    with pytest.raises(NoResultFound):
        await read(accts, maker, redis_client, email_addr="b@x.io")  # a negative entry
    selects: list[str] = []

    def count(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM accts" in statement:
            selects.append(statement)

    async with writer() as session:
        acct = await session.get_one(Acct, 1)
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        try:
            acct.email_addr = "b@x.io"
            await session.commit()
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert len(selects) == {"mariadb": 1, "postgresql": 0, "sqlite": 0}[database.name], selects
    with pytest.raises(NoResultFound):
        await read(accts, maker, redis_client, email_addr="a@x.io")
    assert (await read(accts, maker, redis_client, email_addr="b@x.io")).name == "Ann"


async def test_mariadb_without_a_strict_sql_mode_reads_the_post_image_back(
    database: Database, redis_client: Redis
) -> None:
    """Without a strict ``sql_mode`` MariaDB stores an integer too large for its ``INT``
    column as the column's largest value (a warning, not an error): the value sent is not the
    value stored, so the post-image is read back and the key of the stored value (a negative
    entry cached for it before) drops. Computed from the value sent, that key would be
    missed."""
    if database.name != "mariadb":
        pytest.skip("sql_mode is MariaDB's")
    engine = create_async_engine(
        database.async_url, connect_args={"init_command": "SET SESSION sql_mode = ''"}
    )
    try:
        maker = async_sessionmaker(engine, expire_on_commit=False)
        writer = async_sessionmaker(engine)
        handle = listen(writer, redis_client)
        await add(maker, Tally(id=1, n=1))
        stored = 2**31 - 1
        with pytest.raises(NoResultFound):
            await read(tallies, maker, redis_client, n=stored)  # a negative entry
        async with writer() as session:
            (await session.get_one(Tally, 1)).n = 2**40
            await session.commit()
        handle.remove()
        assert (await read(tallies, maker, redis_client, n=stored)).id == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("sql_mode", "trusted"),
    [
        ("STRICT_TRANS_TABLES", True),
        ("STRICT_ALL_TABLES", True),
        ("", False),
        ("STRICT_TRANS_TABLES,EMPTY_STRING_IS_NULL", False),
    ],
)
async def test_mariadb_values_sent_are_trusted_only_under_a_strict_sql_mode(
    database: Database, sql_mode: str, trusted: bool
) -> None:
    """The post-image is computed from the values sent only on a connection whose sql_mode
    makes a value the column cannot store as sent an error (strict), and keeps ``""`` as
    ``""`` (no ``EMPTY_STRING_IS_NULL``); read once per pooled connection."""
    if database.name != "mariadb":
        pytest.skip("sql_mode is MariaDB's")
    engine = create_async_engine(
        database.async_url,
        connect_args={"init_command": f"SET SESSION sql_mode = '{sql_mode}'"},
    )
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(exact._stores_as_sent) is trusted
            await connection.exec_driver_sql("SET SESSION sql_mode = 'STRICT_ALL_TABLES'")
            assert await connection.run_sync(exact._stores_as_sent) is trusted  # kept
    finally:
        await engine.dispose()


class _DdlBase(DeclarativeBase):
    """Tables whose DDL the test writes itself (what the model does not declare)."""


class Doubled(_DdlBase):
    __tablename__ = "doubled"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    n: Mapped[int]
    twice: Mapped[int]  # generated by the database; the model does not say so


class DoubledOut(BaseModel):
    id: int
    twice: int


doubled = FastRDB[Doubled, BaseModel, BaseModel, DoubledOut](
    Doubled, DoubledOut, pattern="doubled:{twice}"
)

_GENERATED = {
    "postgresql": "twice INTEGER GENERATED ALWAYS AS (n * 2) STORED",
    "sqlite": "twice INTEGER GENERATED ALWAYS AS (n * 2) STORED",
    "mariadb": "twice INTEGER AS (n * 2) PERSISTENT",
}


async def test_a_column_the_database_generates_but_the_model_does_not_declare(
    database: Database, engine: AsyncEngine, maker: Maker, redis_client: Redis, writer: Maker
) -> None:
    """A generated column the model maps as a plain one: an UPDATE of ``n`` changes ``twice``
    with nothing in the model to say so. The database's catalog does, so the post-image is read
    back and the key of the new ``twice`` (a negative entry cached for it before) drops."""
    async with engine.begin() as connection:
        await connection.exec_driver_sql("DROP TABLE IF EXISTS doubled")
        await connection.exec_driver_sql(
            f"CREATE TABLE doubled (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, "
            f"{_GENERATED[database.name]})"
        )
        await connection.exec_driver_sql("INSERT INTO doubled (id, n) VALUES (1, 1)")
    try:
        with pytest.raises(NoResultFound):
            await read(doubled, maker, redis_client, twice=10)  # a negative entry
        async with writer() as session:
            (await session.get_one(Doubled, 1)).n = 5
            await session.commit()
        assert (await read(doubled, maker, redis_client, twice=10)).id == 1
    finally:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("DROP TABLE IF EXISTS doubled")
