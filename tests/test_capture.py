"""fastrdb capture: writes no session sees drop their keys, on PostgreSQL and MariaDB servers
that the tests start with logical decoding / the row binlog on. No ``listen()`` here unless a
test says so: every invalidation comes from the database's log."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import random
import signal
import textwrap
import time as clock
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, ClassVar

import pytest
import redis.asyncio
from pydantic import BaseModel
from sqlalchemy import Enum, ForeignKey, Numeric, String, create_engine, select, text, update
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastrdb import FastRDB, Settings
from fastrdb.capture import Capture, CaptureSetupError
from fastrdb.capture.source import Batch
from fastrdb.settings import DEFAULT_SETTINGS
from tests.conftest import DATABASES, REDIS_URL
from tests.dbservers import MariaDBServer, PostgresServer
from tests.interleave import PauseAfterSelect
from tests.processes import finish, start_interpreter, start_python
from tests.servers import RedisServer

Redis = redis.asyncio.Redis


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "cap_authors"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(100))
    books: Mapped[int] = mapped_column(default=0)
    active: Mapped[bool] = mapped_column(default=True)


class Book(Base):
    __tablename__ = "cap_books"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    author_id: Mapped[int] = mapped_column(ForeignKey("cap_authors.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(100))


class Employee(Base):
    """Joined-table inheritance: a Manager's row spans cap_employees and cap_managers."""

    __tablename__ = "cap_employees"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "employee",
    }


class Manager(Employee):
    __tablename__ = "cap_managers"

    manager_id: Mapped[int] = mapped_column(ForeignKey("cap_employees.id"), primary_key=True)
    level: Mapped[int]
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "manager"}


class Vehicle(Base):
    """A second hierarchy, first cached while capture plans a batch (see the test)."""

    __tablename__ = "cap_vehicles"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    plate: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "vehicle",
    }


class Car(Vehicle):
    __tablename__ = "cap_cars"

    car_id: Mapped[int] = mapped_column(ForeignKey("cap_vehicles.id"), primary_key=True)
    seats: Mapped[int]
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "car"}


class CarOut(BaseModel):
    id: int
    plate: str
    seats: int


class ManagerOut(BaseModel):
    id: int
    email: str
    name: str
    level: int


class Color(enum.Enum):
    RED = "r"
    GREEN = "g"


class Gadget(Base):
    """A row whose patterns hold every type the key encoder tags, and an attribute whose
    column has another name."""

    __tablename__ = "cap_gadgets"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    color: Mapped[Color] = mapped_column(Enum(Color))
    token: Mapped[uuid.UUID]
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    made: Mapped[datetime]
    day: Mapped[date]
    at: Mapped[time]
    ok: Mapped[bool]
    note: Mapped[str | None] = mapped_column(String(50))
    serial_code: Mapped[str] = mapped_column("serial", String(50))


class GadgetOut(BaseModel):
    id: int
    name: str


GADGET_PATTERNS = {
    "color": "gadget:{color}:{id}",
    "token": "gadget:token:{token}",
    "price": "gadget:price:{price}",
    "made": "gadget:made:{made}",
    "day": "gadget:day:{day}:{at}",
    "flags": "gadget:ok:{ok}:{note}:{id}",
    "serial": "gadget:serial:{serial_code}",
    "id": "gadget:{id}",
}
gadgets = {
    name: FastRDB[Gadget, GadgetOut, GadgetOut, GadgetOut](Gadget, GadgetOut, pattern=pattern)
    for name, pattern in GADGET_PATTERNS.items()
}


class AuthorOut(BaseModel):
    id: int
    name: str
    books: int
    active: bool = True


class BookOut(BaseModel):
    id: int
    author_id: int
    title: str


authors = FastRDB[Author, AuthorOut, AuthorOut, AuthorOut](
    Author, AuthorOut, pattern="author:{id}", list_pattern="authors:{page}:{limit}"
)
authors_by_flag = FastRDB[Author, AuthorOut, AuthorOut, AuthorOut](
    Author, AuthorOut, pattern="author:{active}:{id}"
)
books = FastRDB[Book, BookOut, BookOut, BookOut](
    Book, BookOut, pattern="book:{title}", list_pattern="books:{page}:{limit}"
)

KINDS = [kind for kind in ("postgresql", "mariadb") if kind in DATABASES]

TRIGGERS = {
    "postgresql": [
        "ALTER TABLE cap_authors REPLICA IDENTITY FULL",
        "ALTER TABLE cap_books REPLICA IDENTITY FULL",
        "ALTER TABLE cap_gadgets REPLICA IDENTITY FULL",
        "ALTER TABLE cap_employees REPLICA IDENTITY FULL",
        "ALTER TABLE cap_managers REPLICA IDENTITY FULL",
        "ALTER TABLE cap_vehicles REPLICA IDENTITY FULL",
        "ALTER TABLE cap_cars REPLICA IDENTITY FULL",
        "CREATE FUNCTION count_book() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " UPDATE cap_authors SET books = books + 1 WHERE id = NEW.author_id; RETURN NEW; END $$",
        "CREATE TRIGGER count_book AFTER INSERT ON cap_books FOR EACH ROW"
        " EXECUTE FUNCTION count_book()",
    ],
    "mariadb": [
        "CREATE TRIGGER count_book AFTER INSERT ON cap_books FOR EACH ROW"
        " UPDATE cap_authors SET books = books + 1 WHERE id = NEW.author_id",
    ],
}


@dataclass
class Served:
    """A database server set up for capture, and how each kind of client reaches it."""

    kind: str
    server: PostgresServer | MariaDBServer
    url: str
    async_url: str
    sync_url: str


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[Served]:
    server = PostgresServer().start()
    url = server.url
    served = Served(
        "postgresql",
        server,
        url,
        url.replace("postgresql://", "postgresql+asyncpg://"),
        url.replace("postgresql://", "postgresql+psycopg://"),
    )
    _create_schema(served)
    yield served
    server.stop()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[Served]:
    server = MariaDBServer().start()
    url = server.url
    served = Served(
        "mariadb",
        server,
        url,
        url.replace("mysql://", "mysql+asyncmy://"),
        url.replace("mysql://", "mysql+pymysql://"),
    )
    _create_schema(served)
    yield served
    server.stop()


def _create_schema(served: Served) -> None:
    engine = create_engine(served.sync_url)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        for statement in TRIGGERS[served.kind]:
            connection.execute(text(statement))
    engine.dispose()


@pytest.fixture(params=KINDS)
def served(request: pytest.FixtureRequest) -> Served:
    """One capture-ready database, its tables emptied and its slot dropped before each test."""
    served: Served = request.getfixturevalue(f"{request.param}_server")
    engine = create_engine(served.sync_url)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM cap_books"))
        connection.execute(text("DELETE FROM cap_gadgets"))
        connection.execute(text("DELETE FROM cap_authors"))
        connection.execute(text("DELETE FROM cap_managers"))
        connection.execute(text("DELETE FROM cap_employees"))
        connection.execute(text("DELETE FROM cap_cars"))
        connection.execute(text("DELETE FROM cap_vehicles"))
    if served.kind == "postgresql":
        _drop_slot(engine)
    engine.dispose()
    return served


def _drop_slot(engine: Any) -> None:
    """Drop the slot, ending the walsender of a capture that stopped a moment ago (it may
    not have exited yet: the slot is active until it has)."""
    for _ in range(100):
        with engine.begin() as connection:
            active = connection.scalar(
                text(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                    " WHERE slot_name = 'fastrdb' AND active_pid IS NOT NULL"
                )
            )
            if active is None:
                connection.execute(
                    text(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                        " WHERE slot_name = 'fastrdb'"
                    )
                )
                return
        clock.sleep(0.05)
    raise AssertionError("the slot stayed active")


@pytest.fixture
async def cap_engine(served: Served) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(served.async_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(cap_engine: AsyncEngine) -> async_sessionmaker[Any]:
    """Plain sessions: nothing is listened in these tests."""
    return async_sessionmaker(cap_engine, expire_on_commit=False)


@contextlib.asynccontextmanager
async def capturing(
    served: Served, client: Any, settings: Settings = DEFAULT_SETTINGS
) -> AsyncIterator[Capture]:
    """A capture running as a task, as an app runs it in its lifespan."""
    capture = Capture(served.url, client, settings=settings, poll_interval=0.002, max_backoff=0.2)
    task = asyncio.create_task(capture.run())
    ready = asyncio.create_task(capture.sync())
    try:
        async with asyncio.timeout(30):
            await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()
        yield capture
    finally:
        capture.stop()
        async with asyncio.timeout(30):
            await task


@pytest.fixture
async def capture(served: Served, redis_client: Redis) -> AsyncIterator[Capture]:
    async with capturing(served, redis_client) as running:
        yield running


async def synced(capture: Capture) -> None:
    async with asyncio.timeout(30):
        await capture.sync()


async def seed(
    sessions: async_sessionmaker[Any], redis: Redis, capture: Capture | None, count: int = 2
) -> None:
    """Authors 1..count with a book each (``t1``…), every key and the first pages cached
    (after ``capture`` delivered the inserts, which would refuse fills racing them)."""
    async with sessions() as db:
        for n in range(1, count + 1):
            db.add(Author(id=n, name=f"a{n}", books=0))
        await db.flush()
        for n in range(1, count + 1):
            db.add(Book(id=n, author_id=n, title=f"t{n}"))
        await db.commit()
    if capture is not None:
        await synced(capture)
    async with sessions() as db:
        for n in range(1, count + 1):
            await authors.get(db=db, redis=redis, id=n)
            await books.get(db=db, redis=redis, title=f"t{n}")
        await authors.get_multi(db=db, redis=redis, limit=10, page=1)
        await books.get_multi(db=db, redis=redis, limit=10, page=1)
    assert await redis.exists("author:1", "book:t1", "authors:1:10", "books:1:10") == 4


async def cached(redis: Redis, *keys: str) -> list[str]:
    """Which of ``keys`` Redis still holds."""
    return [key for key in keys if await redis.exists(key)]


async def test_a_command_line_client_update_drops_keys_and_pages(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """An UPDATE typed into psql / mariadb drops the old and new keys and the pages."""
    await seed(sessions, redis_client, capture)
    await redis_client.set("book:T1", "stale")  # a key the new value names
    sql = "UPDATE cap_books SET title = 'T1' WHERE id = 1"
    database = served.url.rsplit("/", 1)[1]
    flag = "-c" if served.kind == "postgresql" else "-e"
    done = await asyncio.create_subprocess_exec(*served.server.client(), database, flag, sql)
    assert await done.wait() == 0
    await synced(capture)
    assert await cached(redis_client, "book:t1", "book:T1", "books:1:10") == []
    assert await cached(redis_client, "book:t2", "author:1") == ["book:t2", "author:1"]


async def test_a_text_update_in_a_session_drops_keys(
    sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """text() SQL in a plain session is seen through the log."""
    await seed(sessions, redis_client, capture)
    async with sessions() as db:
        await db.execute(text("UPDATE cap_authors SET name = 'renamed' WHERE id = 2"))
        await db.commit()
    await synced(capture)
    assert await cached(redis_client, "author:2", "authors:1:10", "author:1") == ["author:1"]
    async with sessions() as db:
        assert (await authors.get(db=db, redis=redis_client, id=2)).name == "renamed"


async def test_a_core_connection_drops_keys(
    cap_engine: AsyncEngine,
    sessions: async_sessionmaker[Any],
    redis_client: Redis,
    capture: Capture,
) -> None:
    """A Core update() on engine.begin(), outside any session."""
    await seed(sessions, redis_client, capture)
    async with cap_engine.begin() as connection:
        await connection.execute(update(Book).where(Book.id == 2).values(title="core"))
    await synced(capture)
    assert await cached(redis_client, "book:t2", "books:1:10", "book:t1") == ["book:t1"]


RAW_WRITER = {
    "postgresql": """
import sys, psycopg
with psycopg.connect(sys.argv[1]) as connection:
    connection.execute("UPDATE cap_authors SET name = 'raw' WHERE id = 1")
""",
    "mariadb": """
import sys, pymysql
from urllib.parse import urlsplit
url = urlsplit(sys.argv[1])
connection = pymysql.connect(host=url.hostname, port=url.port, user=url.username,
                             database=url.path.strip('/'))
with connection.cursor() as cursor:
    cursor.execute("UPDATE cap_authors SET name = 'raw' WHERE id = 1")
connection.commit()
connection.close()
""",
}


async def test_a_process_with_the_raw_driver_drops_keys(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """Another program (psycopg / PyMySQL, no SQLAlchemy) writes; its keys go."""
    await seed(sessions, redis_client, capture)
    done = await finish(await start_python(textwrap.dedent(RAW_WRITER[served.kind]), served.url))
    assert done.returncode == 0, done.stderr
    await synced(capture)
    assert await cached(redis_client, "author:1", "authors:1:10", "author:2") == ["author:2"]


async def test_on_delete_cascade_drops_the_children(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """Deleting an author deletes its books in the database; their pages and keys go
    (PostgreSQL logs the cascaded rows; InnoDB's cascades are not in the binlog: the child's
    own values are unknown, and capture sweeps the child's patterns)."""
    await seed(sessions, redis_client, capture)
    async with sessions() as db:
        await db.execute(text("DELETE FROM cap_authors WHERE id = 1"))
        await db.commit()
    await synced(capture)
    assert await cached(redis_client, "author:1", "books:1:10", "book:t1") == []
    assert await cached(redis_client, "author:2") == ["author:2"]
    if served.kind == "postgresql":  # exact: the other book's key stays
        assert await cached(redis_client, "book:t2") == ["book:t2"]


async def test_a_trigger_that_updates_a_cached_table_drops_its_keys(
    sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """Inserting a book bumps its author's count through a trigger; the author key goes."""
    await seed(sessions, redis_client, capture)
    async with sessions() as db:
        await db.execute(text("INSERT INTO cap_books (id, author_id, title) VALUES (9, 2, 'n')"))
        await db.commit()
    await synced(capture)
    assert await cached(redis_client, "author:2", "author:1") == ["author:1"]
    async with sessions() as db:
        assert (await authors.get(db=db, redis=redis_client, id=2)).books == 2


@pytest.mark.slow
async def test_an_update_of_10000_rows_drops_every_old_key(
    sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """UPDATE … SET title = upper(title) over 10,000 rows: every old key goes."""
    await seed(sessions, redis_client, capture, count=1)
    rows = 10_000
    async with sessions() as db:
        await db.execute(
            Book.__table__.insert(),
            [{"id": 100 + n, "author_id": 1, "title": f"bulk{n}"} for n in range(rows)],
        )
        await db.commit()
    await synced(capture)
    await redis_client.mset({f"book:bulk{n}": "stale" for n in range(rows)})
    async with sessions() as db:
        await db.execute(text("UPDATE cap_books SET title = upper(title)"))
        await db.commit()
    await synced(capture)
    left = await redis_client.exists(*(f"book:bulk{n}" for n in range(rows)))
    assert left == 0
    assert capture.stats.rows >= 2 * rows


@pytest.fixture
def sync_served_url(served: Served) -> str:
    return served.sync_url


WRITER_KILLED_AFTER_COMMIT = """
import sys, time
import redis
from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from fastrdb.events import listen

maker = sessionmaker(create_engine(sys.argv[1]))
handle = listen(maker, redis.Redis.from_url(sys.argv[2]))

def paused(session):  # runs before FastRDB's after_commit: the COMMIT is durable already
    print("committed", flush=True)
    time.sleep(600)

event.listen(Session, "after_commit", paused, insert=True)
with maker() as session:
    session.execute(text("UPDATE cap_authors SET name = 'killed' WHERE id = 1"))
    session.commit()
"""


@pytest.mark.slow
async def test_a_writer_killed_between_commit_and_after_commit_is_covered(
    served: Served,
    sessions: async_sessionmaker[Any],
    redis_client: Redis,
    capture: Capture,
) -> None:
    """A listened writer SIGKILLed after COMMIT, before its after_commit hook: capture still
    drops the key the writer never got to drop."""
    await seed(sessions, redis_client, capture)
    writer = await start_python(WRITER_KILLED_AFTER_COMMIT, served.sync_url, REDIS_URL)
    assert writer.stdout is not None
    async with asyncio.timeout(60):
        assert await writer.stdout.readline() == b"committed\n"
    writer.kill()
    await finish(writer)
    await synced(capture)
    assert await cached(redis_client, "author:1", "authors:1:10") == []
    async with sessions() as db:
        assert (await authors.get(db=db, redis=redis_client, id=1)).name == "killed"


async def wait_gone(redis: Redis, *keys: str) -> None:
    """Wait (bounded) until Redis holds none of ``keys``: for a capture in another process."""
    async with asyncio.timeout(30):
        while await redis.exists(*keys):  # noqa: ASYNC110 - another process: nothing to await
            await asyncio.sleep(0.01)


async def start_cli(served: Served, redis_url: str) -> asyncio.subprocess.Process:
    """``fastrdb capture`` in its own process, once it logged that it follows the log."""
    process = await start_interpreter(
        "-m", "fastrdb", "capture", "--database", served.url, "--redis", redis_url
    )
    assert process.stderr is not None
    async with asyncio.timeout(60):
        while b"capture_started" not in (line := await process.stderr.readline()):
            assert line, "fastrdb capture exited before it started"
    return process


@pytest.mark.slow
async def test_capture_killed_mid_stream_resumes_where_it_stopped(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis
) -> None:
    """The CLI is SIGKILLed while changes stream in; changes made while it is down are
    delivered after a restart, and SIGTERM stops it cleanly."""
    await seed(sessions, redis_client, None, count=1)
    cli = await start_cli(served, REDIS_URL)
    async with sessions() as db:
        await db.execute(text("UPDATE cap_authors SET name = 'first' WHERE id = 1"))
        await db.commit()
    await wait_gone(redis_client, "author:1")
    stream = [f"s{n}" for n in range(50)]
    await redis_client.mset({f"book:{title}": "stale" for title in stream})
    async with sessions() as db:
        for n, title in enumerate(stream):
            await db.execute(
                text("INSERT INTO cap_books (id, author_id, title) VALUES (:id, 1, :t)"),
                {"id": 1000 + n, "t": title},
            )
            await db.commit()
            if n == 10:
                cli.kill()  # mid-stream: some of these are delivered, some not
    await finish(cli)
    cli = await start_cli(served, REDIS_URL)
    await wait_gone(redis_client, *(f"book:{title}" for title in stream))
    cli.send_signal(signal.SIGTERM)
    done = await finish(cli)
    assert done.returncode == 0, done.stderr
    assert "capture_stopped" in done.stderr


@pytest.mark.slow
async def test_redis_down_holds_the_position_and_delivers_after_it_returns(
    served: Served, sessions: async_sessionmaker[Any]
) -> None:
    """Redis is killed while capture runs: nothing is confirmed, and the change is delivered
    once Redis is back (it keeps its data across the kill: appendfsync always)."""
    server = RedisServer()
    server.extra = ["--appendonly", "yes", "--appendfsync", "always"]
    server.start()
    client = redis.asyncio.Redis(port=server.port, socket_timeout=1, socket_connect_timeout=1)
    try:
        async with capturing(served, client) as running:
            await seed(sessions, client, running)
            delivered = running.stats.deliveries
            failed = running.stats.redis_failures  # a seed delivery may have been retried
            server.kill()
            await _commit_without_rows(served, sessions)
            async with sessions() as db:
                await db.execute(text("UPDATE cap_authors SET name = 'later' WHERE id = 1"))
                await db.commit()
                written = await _log_end(served, db)
            async with asyncio.timeout(30):
                while running.stats.redis_failures < failed + 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert running.stats.deliveries == delivered
            assert await _confirmed_before(served, written)  # the UPDATE is not confirmed
            server.start()
            await synced(running)
            assert await cached(client, "author:1", "author:2") == ["author:2"]
    finally:
        await client.aclose()
        server.kill()


@pytest.mark.slow
async def test_a_drop_no_replica_took_is_not_confirmed(
    served: Served, sessions: async_sessionmaker[Any]
) -> None:
    """With wait_replicas=1 and the replica cut off, capture drops the keys on the master but
    confirms nothing and retries; once the replica is back it acknowledges, and capture
    moves on."""
    from tests.test_replicas import WAIT, Pair, eventually

    pair = await Pair().start(fronts=1)
    client = pair.client()
    try:
        async with capturing(served, client, settings=WAIT) as running:
            await seed(sessions, client, running)
            await pair.caught_up()
            delivered = running.stats.deliveries
            failed = running.stats.redis_failures  # a seed delivery may have waited too long
            assert pair.link is not None
            pair.link.pause()
            await _commit_without_rows(served, sessions)
            async with sessions() as db:
                await db.execute(text("UPDATE cap_authors SET name = 'later' WHERE id = 1"))
                await db.commit()
                written = await _log_end(served, db)
            async with asyncio.timeout(30):
                while running.stats.redis_failures <= failed:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert running.stats.deliveries == delivered
            assert await cached(client, "author:1", "author:2") == ["author:2"]
            assert await _confirmed_before(served, written)  # the UPDATE is not confirmed
            pair.link.resume()
            await synced(running)
            assert running.stats.deliveries > delivered
            if served.kind == "postgresql":

                async def moved_on() -> bool:
                    return not await _confirmed_before(served, written)

                await eventually(moved_on, "the slot confirmed past the UPDATE")
            replica = redis.asyncio.Redis(port=pair.replica.port)
            assert await cached(replica, "author:1", "author:2") == ["author:2"]
            await replica.aclose()
    finally:
        await client.aclose()
        await pair.stop()


async def _commit_without_rows(served: Served, sessions: async_sessionmaker[Any]) -> None:
    """On PostgreSQL, a transaction the log holds without rows (an ``ANALYZE``, as autovacuum
    runs): capture may confirm it, and those before a change it cannot deliver."""
    if served.kind == "postgresql":
        async with sessions() as db:
            await db.execute(text("ANALYZE cap_authors"))
            await db.commit()


async def _log_end(served: Served, db: Any) -> str | None:
    """PostgreSQL's WAL insert position, asked right after ``db`` committed: the end of its
    commit record, unless another commit came in between (None on MariaDB)."""
    if served.kind != "postgresql":
        return None
    found: str = await db.scalar(text("SELECT pg_current_wal_insert_lsn()::text"))
    return found


async def _confirmed_before(served: Served, position: str | None) -> bool:
    """Whether the PostgreSQL slot's confirmed position is still before ``position`` (True
    on MariaDB: its position is kept in Redis). Not "unchanged since": the log also holds
    transactions without rows (an autovacuum ``ANALYZE``), which capture confirms as it
    reads them, and a confirmation sent before may reach the slot late."""
    if served.kind != "postgresql":
        return True
    engine = create_async_engine(served.async_url)
    async with engine.connect() as connection:
        before = await connection.scalar(
            text(
                "SELECT confirmed_flush_lsn < CAST(CAST(:position AS TEXT) AS pg_lsn)"
                " FROM pg_replication_slots WHERE slot_name = 'fastrdb'"
            ),
            {"position": position},
        )
    await engine.dispose()
    return bool(before)


async def test_sync_waits_for_a_commit_read_right_after_an_empty_round(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """sync() after a commit returns only once that commit is delivered. Forced: the log has
    not reached capture in the two rounds after sync() asked for the log's end (empty rounds,
    as when the walsender or binlog thread is slow on a loaded machine); the round right after
    reads the commit, and its delivery is held. sync() must still be waiting then: a round
    that ended before the commit was read says nothing about it."""
    await seed(sessions, redis_client, capture)
    runner = capture._runner
    source: Any = runner.source
    read, end, deliver = source.read, source.end, runner._deliver
    holding = asyncio.Event()
    asked = asyncio.Event()
    delivering = asyncio.Event()
    release = asyncio.Event()
    rounds_after_asked = 0

    async def slow_log() -> Batch:
        nonlocal rounds_after_asked
        holding.set()
        if asked.is_set():
            rounds_after_asked += 1
            if rounds_after_asked > 2:
                return await read()  # in the same step as the round before ended
        await asyncio.sleep(0.05)
        return Batch()

    async def end_then_mark() -> Any:
        found = await end()
        asked.set()
        return found

    async def held(changes: Any) -> Any:
        delivering.set()
        await release.wait()
        return await deliver(changes)

    source.read, source.end, runner._deliver = slow_log, end_then_mark, held
    try:
        async with asyncio.timeout(30):
            await holding.wait()  # a read of the log begun earlier has ended
        async with sessions() as db:
            await db.execute(text("UPDATE cap_authors SET name = 'later' WHERE id = 1"))
            await db.commit()
        syncing = asyncio.create_task(synced(capture))
        async with asyncio.timeout(30):
            await delivering.wait()
        await asyncio.sleep(0.1)  # room for a wrongly woken sync() to return
        assert not syncing.done(), "sync() returned before the commit was delivered"
        assert await cached(redis_client, "author:1") == ["author:1"]
        release.set()
        await syncing
        assert await cached(redis_client, "author:1", "author:2") == ["author:2"]
    finally:
        release.set()
        source.read, source.end, runner._deliver = read, end, deliver


async def test_a_slow_reader_cannot_fill_after_a_capture_only_write(
    cap_engine: AsyncEngine,
    sessions: async_sessionmaker[Any],
    redis_client: Redis,
    capture: Capture,
) -> None:
    """Reader leases and selects the old row; a text() UPDATE commits and capture delivers;
    the reader's fill is then refused and no stale value survives."""
    await seed(sessions, redis_client, capture)
    await redis_client.delete("author:1")
    with PauseAfterSelect(cap_engine, "cap_authors") as pause:

        async def read() -> str:
            async with sessions() as db:
                return (await authors.get(db=db, redis=redis_client, id=1)).name

        reader = asyncio.create_task(read())
        await pause.wait_selected()
        async with cap_engine.begin() as connection:
            await connection.execute(text("UPDATE cap_authors SET name = 'new' WHERE id = 1"))
        await synced(capture)
        pause.resume()
        assert await reader == "a1"  # it read before the commit: a fair answer
    raw = await redis_client.get("author:1")
    assert raw is None or b'"new"' in raw
    async with sessions() as db:
        assert (await authors.get(db=db, redis=redis_client, id=1)).name == "new"


async def test_a_database_without_the_log_settings_is_named() -> None:
    """Against the machine's servers (log settings off), capture refuses and names what to
    change; nothing is created on them."""
    db_name = os.environ.get("FASTRDB_TEST_DB", "test")
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        if "postgresql" in KINDS:
            with pytest.raises(CaptureSetupError) as raised:
                await Capture(f"postgresql://postgres@127.0.0.1:5432/{db_name}", client).run()
            assert raised.value.setting == "wal_level"
        if "mariadb" in KINDS:
            with pytest.raises(CaptureSetupError) as raised:
                await Capture(f"mysql+asyncmy://root@127.0.0.1:3306/{db_name}", client).run()
            assert raised.value.setting in ("log_bin", "binlog_format")
    finally:
        await client.aclose()


async def test_the_cli_exits_2_naming_the_setting() -> None:
    """`fastrdb capture` on a database without the log exits with status 2 and the setting."""
    done = await finish(
        await start_interpreter(
            "-m", "fastrdb", "capture", "--database", "sqlite:///x.db", "--redis", REDIS_URL
        )
    )
    assert done.returncode == 2
    assert "database:" in done.stderr and "SQLite" in done.stderr


async def test_the_example_app_runs_capture_in_its_lifespan(
    served: Served,
    sessions: async_sessionmaker[Any],
    redis_client: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """examples/capture_app.py: capture starts with the app, drops keys, stops with it."""
    from examples.capture_app import app

    monkeypatch.setenv("DATABASE_URL", served.url)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    async with app.router.lifespan_context(app):
        capture: Capture = app.state.capture
        await seed(sessions, redis_client, capture, count=1)
        async with sessions() as db:
            await db.execute(text("UPDATE cap_authors SET name = 'app' WHERE id = 1"))
            await db.commit()
        await synced(capture)
        assert await cached(redis_client, "author:1") == []


async def test_a_restart_resumes_at_the_confirmed_position(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis
) -> None:
    """A second run reads only what was committed after the first run's last confirmation."""
    async with capturing(served, redis_client) as first:
        await seed(sessions, redis_client, first, count=1)
        assert first.stats.transactions >= 1
    async with sessions() as db:
        await db.execute(text("UPDATE cap_authors SET name = 'between' WHERE id = 1"))
        await db.commit()
    async with capturing(served, redis_client) as second:
        await synced(second)
        # Rows, not transactions: PostgreSQL's log also holds transactions without rows
        # (an autovacuum ANALYZE commits one now and then: seen once, transactions=2 rows=1).
        assert second.stats.rows == 1
    assert await cached(redis_client, "author:1") == []


async def test_a_boolean_in_a_pattern_names_the_key_readers_use(
    sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """A BOOLEAN column (tinyint(1) on MariaDB) arrives as a bool, as SQLAlchemy reads it."""
    await seed(sessions, redis_client, capture, count=1)
    async with sessions() as db:
        await authors_by_flag.get(db=db, redis=redis_client, active=True, id=1)
    assert len(await redis_client.keys("author:*:1")) == 1
    async with sessions() as db:
        await db.execute(text("UPDATE cap_authors SET name = 'flagged' WHERE id = 1"))
        await db.commit()
    await synced(capture)
    assert await redis_client.keys("author:*:1") == []


@pytest.fixture(scope="module")
def cluster_port() -> Iterator[int]:
    """A 3-master Redis Cluster of the module's own."""
    from tests.servers import RedisClusterServers

    servers = RedisClusterServers().start()
    yield servers.ports[0]
    servers.stop()


@pytest.mark.slow
async def test_capture_delivers_to_a_redis_cluster(
    served: Served, sessions: async_sessionmaker[Any], cluster_port: int
) -> None:
    """A redis+cluster:// URL: keys, leases and pages on other slots are all dropped."""
    from fastrdb.capture.urls import redis_from_url

    client = redis_from_url(f"redis+cluster://127.0.0.1:{cluster_port}")
    try:
        async with capturing(served, client) as running:
            await seed(sessions, client, running)
            async with sessions() as db:
                await db.execute(text("UPDATE cap_authors SET name = 'c' WHERE id = 1"))
                await db.execute(text("UPDATE cap_books SET title = 'moved' WHERE id = 2"))
                await db.commit()
            await synced(running)
            assert await cached(
                client, "author:1", "book:t2", "authors:1:10", "books:1:10", "author:2"
            ) == ["author:2"]
            # a hierarchy published and read on a cluster; a partial old row swept there
            keys = await _seed_manager(sessions, client, running)
            async with sessions() as db:
                await db.execute(text("UPDATE cap_managers SET level = 2 WHERE manager_id = 1"))
                await db.execute(text("TRUNCATE TABLE cap_books"))
                await db.commit()
            await synced(running)
            assert await cached(client, *keys, "book:t1") == []
            assert running.stats.sweeps >= 1
    finally:
        await client.aclose()


async def test_without_full_replica_identity_old_keys_and_narrowed_pages_still_go(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis
) -> None:
    """PostgreSQL, REPLICA IDENTITY DEFAULT: an UPDATE logs no old values and a DELETE only
    the key, yet the old value's key (``book:t1``) and the narrowed page the row moves out of
    (``books:author:1:…``) go: capture sweeps the patterns the log cannot name."""
    if served.kind != "postgresql":
        pytest.skip("replica identity is PostgreSQL's")
    engine = create_engine(served.sync_url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE cap_books REPLICA IDENTITY DEFAULT"))
    try:
        async with capturing(served, redis_client) as running:
            await _partial_old_rows_still_drop(sessions, redis_client, running, [])
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE cap_books REPLICA IDENTITY FULL"))
        engine.dispose()


async def test_a_minimal_row_image_session_still_drops_old_keys_and_pages(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """MariaDB: capture refuses a server whose binlog_row_image is not FULL, but a writer's
    session may set MINIMAL for itself; its UPDATE and DELETE (old image: the key alone) still
    drop the old value's key and the narrowed page the row leaves (columns the image left out
    are unknown, not NULL)."""
    if served.kind != "mariadb":
        pytest.skip("binlog_row_image is MariaDB's")
    minimal = ["SET SESSION binlog_row_image = 'MINIMAL'"]
    await _partial_old_rows_still_drop(sessions, redis_client, capture, minimal)


books_unregistered = FastRDB[Book, BookOut, BookOut, BookOut](
    Book, BookOut, pattern="title:{title}", settings=Settings(negative_exp=0)
)
"""Without negative entries a key joins no registry (with them, ``get``'s keys join the
table's registry of possibly-negative keys, which a change of unknown values drains)."""


async def test_a_server_whose_row_image_is_not_full_is_refused(
    served: Served, redis_client: Redis
) -> None:
    """MariaDB with a global binlog_row_image of MINIMAL (set on the tests' own server, put
    back after): capture does not start, and the error names the setting."""
    if served.kind != "mariadb":
        pytest.skip("binlog_row_image is MariaDB's")
    engine = create_engine(served.sync_url)
    with engine.begin() as connection:
        connection.execute(text("SET GLOBAL binlog_row_image = 'MINIMAL'"))
    try:
        capture = Capture(served.url, redis_client, max_backoff=0.2)
        with pytest.raises(CaptureSetupError) as raised:
            async with asyncio.timeout(30):
                await capture.run()
        assert raised.value.setting == "binlog_row_image"
    finally:
        with engine.begin() as connection:
            connection.execute(text("SET GLOBAL binlog_row_image = 'FULL'"))
        engine.dispose()


async def _partial_old_rows_still_drop(
    sessions: async_sessionmaker[Any], redis: Redis, capture: Capture, setup: list[str]
) -> None:
    await seed(sessions, redis, capture, count=3)
    await redis.set("book:T1", "stale")
    async with sessions() as db:
        for n in (1, 2):
            await books_by_author.get_multi(db=db, redis=redis, limit=10, page=1, author_id=n)
            await books_unregistered.get(db=db, redis=redis, title=f"t{n}")
    pages = ["books:author:1:1:10", "books:author:2:1:10"]
    assert await cached(redis, *pages, "title:t1", "title:t2") == [*pages, "title:t1", "title:t2"]
    async with sessions() as db:  # book 1 moves from author 1 to author 2, and is renamed
        for statement in setup:
            await db.execute(text(statement))
        await db.execute(text("UPDATE cap_books SET title = 'T1', author_id = 2 WHERE id = 1"))
        await db.commit()
    await synced(capture)
    assert await cached(redis, "book:t1", "title:t1", "book:T1", "books:1:10", *pages) == []
    assert await cached(redis, "author:1") == ["author:1"]  # another table's keys stay
    async with sessions() as db:
        await books.get(db=db, redis=redis, title="t2")
        await books_unregistered.get(db=db, redis=redis, title="t2")
        await books_by_author.get_multi(db=db, redis=redis, limit=10, page=1, author_id=2)
        for statement in setup:
            await db.execute(text(statement))
        await db.execute(text("DELETE FROM cap_books WHERE id = 2"))
        await db.commit()
    await synced(capture)
    assert await cached(redis, "book:t2", "title:t2", pages[1]) == []
    assert await cached(redis, "author:1") == ["author:1"]


async def test_a_truncate_drops_the_single_row_keys_and_narrowed_pages(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """TRUNCATE logs no rows: capture sweeps the table's keys and narrowed pages."""
    await seed(sessions, redis_client, capture)
    async with sessions() as db:
        await books_by_author.get_multi(db=db, redis=redis_client, limit=10, page=1, author_id=1)
        await books_unregistered.get(db=db, redis=redis_client, title="t1")
    assert await cached(redis_client, "books:author:1:1:10", "title:t1") == [
        "books:author:1:1:10",
        "title:t1",
    ]
    async with sessions() as db:
        await db.execute(text("TRUNCATE TABLE cap_books"))
        await db.commit()
    await synced(capture)
    assert await cached(redis_client, "book:t1", "title:t1", "books:author:1:1:10") == []
    assert await cached(redis_client, "author:1") == ["author:1"]


async def test_keys_of_every_encoded_type_and_renamed_columns_are_named(
    sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """Patterns over an Enum, a UUID, a Decimal, date/time values, a boolean, a NULL and an
    attribute whose column has another name: a capture-only write drops each key the app
    filled (the published scheme says each placeholder's column and type)."""
    token = uuid.UUID("6e3c0a4e-8d6e-4b8e-9c39-1a4a1b7a0c11")
    row = {
        "id": 1,
        "color": Color.RED,
        "token": token,
        "price": Decimal("9.50"),
        "made": datetime(2026, 11, 29, 10, 0, 0),
        "day": date(2026, 11, 29),
        "at": time(10, 30),
        "ok": True,
        "note": None,
        "serial_code": "S-1/a",
    }
    async with sessions() as db:
        db.add(Gadget(name="g", **row))
        await db.commit()
    await synced(capture)
    async with sessions() as db:
        for crud in gadgets.values():
            fields = crud._plan.row.fields
            await crud.get(db=db, redis=redis_client, **{f: row[f] for f in fields})
    filled = sorted(
        key.decode() for key in await redis_client.keys("gadget:*") if b"lease" not in key
    )
    assert len(filled) == len(GADGET_PATTERNS), filled
    assert "gadget:%enum_RED:1" in filled and "gadget:serial:S-1%2Fa" in filled
    async with sessions() as db:
        await db.execute(text("UPDATE cap_gadgets SET name = 'renamed' WHERE id = 1"))
        await db.commit()
    await synced(capture)
    assert sorted(await cached(redis_client, *filled)) == [], filled


async def test_a_pattern_published_by_an_earlier_version_still_names_its_keys(
    sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """A scheme member without fields (``["row", text]``, as earlier versions publish it)
    is still read: its placeholders name columns, values as logged."""
    await seed(sessions, redis_client, capture, count=1)
    await redis_client.sadd("fastrdb:schemes:cap_authors", '["row","legacy:{name}"]')
    await redis_client.set("legacy:a1", "stale")
    async with sessions() as db:
        await db.execute(text("UPDATE cap_authors SET books = 5 WHERE id = 1"))
        await db.commit()
    await synced(capture)
    assert await cached(redis_client, "legacy:a1", "author:1") == []


books_by_author = FastRDB[Book, BookOut, BookOut, BookOut](
    Book,
    BookOut,
    pattern="bookid:{id}",
    list_pattern="books:author:{author_id}:{page}:{limit}",
    invalidate_pattern_prefix="books:author:{author_id}:*",
)


async def test_narrowed_pages_are_drained_by_capture_only_writes(
    sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """Pages kept in a narrowed registry (``invalidate_pattern_prefix``): a capture-only
    write drops the pages of the row's old and new values, and only those."""
    await seed(sessions, redis_client, capture, count=3)
    pages = [f"books:author:{n}:1:10" for n in (1, 2, 3)]

    async def fill_pages(*authors: int) -> None:
        async with sessions() as db:
            for n in authors:
                await books_by_author.get_multi(
                    db=db, redis=redis_client, limit=10, page=1, author_id=n
                )
        assert await cached(redis_client, *pages) == [pages[n - 1] for n in authors]

    await fill_pages(1, 2, 3)
    assert await redis_client.exists("fastrdb:lists:cap_books:books%3Aauthor%3A1%3A%2A")
    async with sessions() as db:  # moves book 1 from author 1 to author 2
        await db.execute(text("UPDATE cap_books SET author_id = 2 WHERE id = 1"))
        await db.commit()
    await synced(capture)
    assert await cached(redis_client, *pages) == [pages[2]]
    await fill_pages(2, 3)  # author 1 has no book left: an empty page is not stored
    async with sessions() as db:  # a book of author 3 changes in place
        await db.execute(text("UPDATE cap_books SET title = 'x' WHERE id = 3"))
        await db.commit()
    await synced(capture)
    assert await cached(redis_client, *pages) == [pages[1]]


async def test_a_null_old_value_names_its_key_and_the_row_counts_as_complete(
    sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """With full old rows (REPLICA IDENTITY FULL, MariaDB's full image), an old NULL names
    its key (``%none``), and the row is complete: the table's registry of possibly-negative
    keys is not drained as for a row whose old values are unknown. (PostgreSQL's
    test_decoding leaves NULL columns out of an old row: capture puts them back.)"""
    async with sessions() as db:
        db.add(
            Gadget(
                id=1,
                name="g",
                color=Color.RED,
                token=uuid.uuid4(),
                price=Decimal(1),
                made=datetime(2026, 1, 1),
                day=date(2026, 1, 1),
                at=time(1),
                ok=True,
                note=None,
                serial_code="s",
            )
        )
        await db.commit()
    await synced(capture)
    async with sessions() as db:
        await gadgets["flags"].get(db=db, redis=redis_client, ok=True, note=None, id=1)
        await gadgets["id"].get(db=db, redis=redis_client, id=1)  # joins the registry
    registry = "fastrdb:negatives:cap_gadgets"
    assert await cached(redis_client, "gadget:ok:%true:%none:1", registry) == [
        "gadget:ok:%true:%none:1",
        registry,
    ]
    async with sessions() as db:
        await db.execute(text("UPDATE cap_gadgets SET note = 'x' WHERE id = 1"))
        await db.commit()
    await synced(capture)
    assert await cached(redis_client, "gadget:ok:%true:%none:1", registry) == [registry]


select_managers = select(Manager)

managers = {
    name: FastRDB[Manager, ManagerOut, ManagerOut, ManagerOut](Manager, ManagerOut, pattern=pattern)
    for name, pattern in {
        "email": "manager:email:{email}",  # a base table column
        "level": "manager:level:{level}",  # a subclass table column
        "both": "manager:{email}:{level}",
    }.items()
}


async def _cache_manager(sessions: async_sessionmaker[Any], redis: Redis, **row: Any) -> None:
    async with sessions() as db:
        for crud in managers.values():
            fields = crud._plan.row.fields
            await crud.get(db=db, redis=redis, **{field: row[field] for field in fields})
        await managers["email"].get_multi(db=db, redis=redis, limit=10, page=1)


async def _seed_manager(
    sessions: async_sessionmaker[Any], redis: Redis, capture: Capture
) -> list[str]:
    """Manager 1 (a@x.io, level 1) and employee 2, Manager 1's keys and first page cached."""
    async with sessions() as db:
        db.add(Manager(id=1, email="a@x.io", name="m", level=1))
        db.add(Employee(id=2, email="e@x.io", name="e"))
        await db.commit()
    await synced(capture)
    await _cache_manager(sessions, redis, email="a@x.io", level=1)
    keys = [
        "manager:email:a@x.io",
        "manager:level:1",
        "manager:a@x.io:1",
        "cap_managers:page:1:limit:10",
    ]
    assert await cached(redis, *keys) == keys
    return keys


async def test_a_write_of_the_subclass_table_alone_drops_keys_of_base_columns(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """Joined-table inheritance: an UPDATE of cap_managers alone (from the command line
    client) logs no email, yet FastRDB(Manager)'s keys made of the base table's email go."""
    keys = await _seed_manager(sessions, redis_client, capture)
    database = served.url.rsplit("/", 1)[1]
    flag = "-c" if served.kind == "postgresql" else "-e"
    sql = "UPDATE cap_managers SET level = 2 WHERE manager_id = 1"
    done = await asyncio.create_subprocess_exec(*served.server.client(), database, flag, sql)
    assert await done.wait() == 0
    await synced(capture)
    assert await cached(redis_client, *keys) == []


async def test_a_write_of_the_base_table_alone_drops_keys_of_subclass_columns(
    sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """An UPDATE of cap_employees alone (a Core connection) logs no level, yet the keys of
    FastRDB(Manager) made of the subclass table's level go, and its pages."""
    keys = await _seed_manager(sessions, redis_client, capture)
    async with sessions() as db:
        await db.execute(text("UPDATE cap_employees SET name = 'renamed' WHERE id = 1"))
        await db.commit()
    await synced(capture)
    assert await cached(redis_client, *keys) == []


async def test_a_base_row_changed_after_the_logged_write_still_drops_the_older_key(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """X sets the level (cap_managers alone); Y, committed after X but before capture reads
    the row's base columns for X (forced: Y commits inside that read), changes the email.
    ``manager:a@x.io:1`` (X's and Y's old values together) must go: capture reads the log on
    up to where its read saw, so Y's old email is known when X is planned."""
    await _seed_manager(sessions, redis_client, capture)
    source: Any = capture._runner.source
    fetch = source.fetch
    moved = asyncio.Event()

    async def fetch_after_y(*args: Any) -> Any:
        if not moved.is_set():
            moved.set()
            async with sessions() as db:
                await db.execute(text("UPDATE cap_employees SET email = 'b@x.io' WHERE id = 1"))
                await db.commit()
        return await fetch(*args)

    source.fetch = fetch_after_y
    try:
        async with sessions() as db:
            await db.execute(text("UPDATE cap_managers SET level = 2 WHERE manager_id = 1"))
            await db.commit()
        await synced(capture)
    finally:
        source.fetch = fetch
    assert moved.is_set()
    assert await cached(redis_client, "manager:a@x.io:1", "manager:email:a@x.io") == []


async def test_a_table_changed_by_ddl_is_read_with_its_new_columns(
    served: Served, cap_engine: AsyncEngine, redis_client: Redis, capture: Capture
) -> None:
    """A column added in front of a cached table's columns while capture runs: the rows
    logged after it are read with the new columns (MariaDB's decoded table maps are kept
    between transactions, and dropped on DDL)."""
    async with cap_engine.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS cap_ddl"))
        await connection.execute(text("CREATE TABLE cap_ddl (id INTEGER PRIMARY KEY, n INTEGER)"))
        if served.kind == "postgresql":
            await connection.execute(text("ALTER TABLE cap_ddl REPLICA IDENTITY FULL"))
        await connection.execute(text("INSERT INTO cap_ddl (id, n) VALUES (1, 5)"))
    await redis_client.sadd("fastrdb:schemes:cap_ddl", '["row","ddl:{code}:{n}"]')
    await synced(capture)  # its table map is decoded and kept
    first = "FIRST" if served.kind == "mariadb" else ""  # PostgreSQL appends
    try:
        async with cap_engine.begin() as connection:
            await connection.execute(
                text(f"ALTER TABLE cap_ddl ADD COLUMN code VARCHAR(20) DEFAULT 'c' {first}")
            )
        await redis_client.set("ddl:c:5", "cached")
        await redis_client.set("ddl:c:6", "cached")
        async with cap_engine.begin() as connection:
            await connection.execute(text("UPDATE cap_ddl SET n = 6 WHERE id = 1"))
        await synced(capture)
        assert await cached(redis_client, "ddl:c:5", "ddl:c:6") == []
    finally:
        async with cap_engine.begin() as connection:
            await connection.execute(text("DROP TABLE cap_ddl"))


cars = FastRDB[Car, CarOut, CarOut, CarOut](Car, CarOut, pattern="car:plate:{plate}")


async def test_a_hierarchy_first_cached_while_a_batch_is_planned_is_known_to_it(
    sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """Capture reads the published hierarchies before planning a batch, reads rows, and reads
    the log on. Forced: while it reads Manager 1's row, a reader caches Car 1 (publishing the
    car hierarchy for the first time) and a write of cap_cars alone commits; that write joins
    the batch, and ``car:plate:P-1`` must go although the hierarchy was unknown when the
    batch began (the hierarchies are read again after the log is read on)."""
    await _seed_manager(sessions, redis_client, capture)
    async with sessions() as db:
        db.add(Car(id=1, plate="P-1", seats=4))
        await db.commit()
    await synced(capture)
    assert await redis_client.smembers("fastrdb:families") == {
        managers["email"]._plan.family.encode()
    }
    source: Any = capture._runner.source
    fetch = source.fetch
    moved = asyncio.Event()

    async def fetch_after_car(*args: Any) -> Any:
        if not moved.is_set():
            moved.set()
            async with sessions() as db:
                await cars.get(db=db, redis=redis_client, plate="P-1")
                await db.execute(text("UPDATE cap_cars SET seats = 5 WHERE car_id = 1"))
                await db.commit()
        return await fetch(*args)

    source.fetch = fetch_after_car
    try:
        async with sessions() as db:
            await db.execute(text("UPDATE cap_managers SET level = 2 WHERE manager_id = 1"))
            await db.commit()
        await synced(capture)
    finally:
        source.fetch = fetch
    assert moved.is_set()
    assert await cached(redis_client, "car:plate:P-1", "manager:email:a@x.io") == []


async def test_a_refused_read_of_a_hierarchy_table_sweeps_instead(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """Capture's role without SELECT on a hierarchy's table (forced: the read raises the
    driver's permission error): the write is still delivered, its hierarchy's keys swept,
    and capture goes on (a database error would restart it and never get past the write)."""
    keys = await _seed_manager(sessions, redis_client, capture)
    source: Any = capture._runner.source
    fetch = source.fetch

    async def refused(*args: Any) -> Any:
        if served.kind == "postgresql":
            import asyncpg

            raise asyncpg.InsufficientPrivilegeError("permission denied for table")
        import pymysql

        raise pymysql.err.OperationalError(1142, "SELECT command denied")

    source.fetch = refused
    try:
        async with sessions() as db:
            await db.execute(text("UPDATE cap_managers SET level = 2 WHERE manager_id = 1"))
            await db.commit()
        async with asyncio.timeout(10):
            await capture.sync()
    finally:
        source.fetch = fetch
    assert await cached(redis_client, *keys) == []
    assert capture.stats.refused_reads >= 1


@pytest.mark.parametrize("seed_", [1, 5, 6])
async def test_random_writes_of_either_table_leave_no_stale_manager_entry(
    seed_: int,
    served: Served,
    sessions: async_sessionmaker[Any],
    redis_client: Redis,
    capture: Capture,
) -> None:
    """A random history of capture-only writes to either table of the hierarchy (alone,
    both in one transaction, or a second write forced inside capture's read of the row),
    with readers caching Manager entries by every pattern in between: after each delivery,
    every entry Redis holds is what a read of the database gives now."""
    from fastrdb.negatives import NEGATIVE_PAYLOAD

    rng = random.Random(seed_)
    emails = ["a@x.io", "b@x.io", "c@x.io"]
    async with sessions() as db:
        db.add(Manager(id=1, email="a@x.io", name="m", level=1))
        db.add(Manager(id=2, email="b@x.io", name="n", level=1))
        await db.commit()
    await synced(capture)
    source: Any = capture._runner.source
    fetch = source.fetch
    inside: list[str] = []

    async def fetch_with_write(*args: Any) -> Any:
        while inside:
            async with sessions() as db:
                await db.execute(text(inside.pop()))
                await db.commit()
        return await fetch(*args)

    def write() -> str:
        row = rng.choice([1, 2])
        if rng.random() < 0.5:
            return f"UPDATE cap_employees SET email = '{rng.choice(emails)}x' WHERE id = {row}"
        return f"UPDATE cap_managers SET level = {rng.randint(1, 3)} WHERE manager_id = {row}"

    async def expected() -> dict[str, str | None]:
        """Every key the patterns could name, and what a read gives for it now."""
        found: dict[str, str | None] = {}
        async with sessions() as db:
            rows = (await db.execute(select_managers)).scalars().all()
            current = [ManagerOut.model_validate(r, from_attributes=True) for r in rows]

        def one(match: list[ManagerOut]) -> str | None:  # get() of several rows raises
            return match[0].model_dump_json() if len(match) == 1 else None

        for email in emails + [e + "x" for e in emails]:
            match = [m for m in current if m.email == email]
            found[f"manager:email:{email}"] = one(match)
            for level in (1, 2, 3):
                found[f"manager:{email}:{level}"] = one([m for m in match if m.level == level])
        for level in (1, 2, 3):
            found[f"manager:level:{level}"] = one([m for m in current if m.level == level])
        return found

    source.fetch = fetch_with_write
    try:
        for _ in range(12):
            truth = await expected()
            async with sessions() as db:  # readers fill some entries from the current rows
                for key in rng.sample(sorted(truth), 6):
                    pattern, _, rest = key.rpartition(":")
                    with contextlib.suppress(NoResultFound, MultipleResultsFound):
                        if key.startswith("manager:email:"):
                            await managers["email"].get(db=db, redis=redis_client, email=rest)
                        elif key.startswith("manager:level:"):
                            await managers["level"].get(db=db, redis=redis_client, level=int(rest))
                        else:
                            email = pattern.split(":", 1)[1]
                            await managers["both"].get(
                                db=db, redis=redis_client, email=email, level=int(rest)
                            )
            kind = rng.choice(["alone", "both", "inside"])
            statements = [write()] if kind != "both" else [write(), write()]
            if kind == "inside":
                inside.append(write())
            async with sessions() as db:
                for statement in statements:
                    await db.execute(text(statement))
                await db.commit()
            await synced(capture)
            await synced(capture)  # and a write made inside capture's read, after the first
            inside.clear()
            truth = await expected()
            for key, value in truth.items():
                held = await redis_client.get(key)
                if held is None or held == NEGATIVE_PAYLOAD.encode():
                    assert held is None or value is None, key
                    continue
                assert held.decode() == value, key
    finally:
        source.fetch = fetch


async def test_asking_for_the_binlog_end_opens_no_connection_each_time(
    served: Served, sessions: async_sessionmaker[Any], redis_client: Redis, capture: Capture
) -> None:
    """MariaDB: ``sync()`` (and the lag line every ``lag_interval``, which holds deliveries
    while it waits) asks for the binlog's end on a kept connection, not a new one each time
    (40-140 ms here)."""
    if served.kind != "mariadb":
        pytest.skip("the binlog end is MariaDB's")
    import pymysql

    server = served.server
    probe = pymysql.connect(host="127.0.0.1", port=server.port, user="root", autocommit=True)

    def connections() -> int:
        with probe.cursor() as cursor:
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
            return int(cursor.fetchone()[1])

    try:
        await synced(capture)  # the kept connection exists
        before = connections()
        for _ in range(5):
            await synced(capture)
        assert connections() - before <= 1
    finally:
        probe.close()


async def test_one_read_of_the_stream_takes_all_it_has_received(served: Served) -> None:
    """Capture pauses between deliveries under a fast stream: each read must take every
    message the server has sent by then, not one buffer of libpq's (16 KiB). With one buffer
    per read, a stream of 3,000 commits a second fell behind for good. (PostgreSQL: MariaDB's
    reader thread reads as the binlog arrives.)"""
    if served.kind != "postgresql":
        pytest.skip("the replication stream is PostgreSQL's")
    from psycopg.conninfo import make_conninfo

    from fastrdb.capture.postgresql import _OPTIONS
    from fastrdb.capture.walstream import WalStream

    commits = 250  # three messages each (BEGIN, INSERT, COMMIT): ~70 KB of them
    engine = create_engine(served.sync_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(
            text("SELECT pg_create_logical_replication_slot('fastrdb', 'test_decoding')")
        )
        for n in range(1, commits + 1):
            connection.execute(
                text("INSERT INTO cap_authors (id, name, books, active) VALUES (:n, 'a', 0, true)"),
                {"n": n},
            )
        end = connection.scalar(text("SELECT pg_current_wal_lsn()"))
    conninfo = make_conninfo(served.url, replication="database", application_name="fastrdb-test")
    stream = WalStream(conninfo, "fastrdb", _OPTIONS)
    await stream.start()
    try:
        async with asyncio.timeout(30):  # until the server has sent it all
            while True:
                with engine.connect() as connection:
                    sent = connection.scalar(
                        text(
                            "SELECT sent_lsn >= CAST(:end AS pg_lsn) FROM pg_stat_replication"
                            " WHERE application_name = 'fastrdb-test'"
                        ),
                        {"end": end},
                    )
                if sent:
                    break
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # and the loopback has carried it
        messages = await stream.receive(1.0, 100_000)
    finally:
        stream.close()
        engine.dispose()
    assert len(messages) == 3 * commits


async def test_a_delivery_goes_by_the_short_way_on_a_plain_client(
    sessions: async_sessionmaker[Any],
    redis_client: Redis,
    capture: Capture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Capture's invalidation script is sent by :func:`fastrdb.cache.wire.command` (a pooled
    connection, hiredis packing, capture's own time bound), not through ``execute_command``'s
    retry, metrics and socket-timeout machinery: about a third of capture's CPU per
    delivery."""
    from fastrdb.cache import wire

    if not wire.direct(redis_client):
        pytest.skip("a cluster client keeps its own path")
    await seed(sessions, redis_client, capture)
    sent: list[str] = []
    command = wire.command

    async def recorded(client: Any, *args: str | bytes | int) -> Any:
        sent.append(str(args[0]))
        return await command(client, *args)

    monkeypatch.setattr(wire, "command", recorded)
    async with sessions() as db:
        await db.execute(text("UPDATE cap_authors SET name = 'short' WHERE id = 1"))
        await db.commit()
    await synced(capture)
    assert "EVALSHA" in sent
    assert await cached(redis_client, "author:1", "author:2") == ["author:2"]
