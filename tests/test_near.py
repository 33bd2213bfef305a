"""The near cache: in-process hits kept coherent by Redis client-side caching invalidations."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
from sqlalchemy import update
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from fastrdb import ConfigurationError, FastRDB, Settings
from fastrdb.cache.near import NearCache
from fastrdb.events import listen
from tests.conftest import CLUSTER, REDIS_URL, Database
from tests.interleave import Send, around_commands
from tests.models import Book, BookCreate, BookOut, BookUpdate, Item, ItemSchema, ItemUpdate
from tests.processes import finish, start_python
from tests.servers import RedisServer
from tests.test_races import History
from tests.test_relations import rename as rename_author
from tests.test_relations import seed as seed_books

pytestmark = pytest.mark.skipif(CLUSTER, reason="the near cache refuses Redis Cluster clients")

Redis = redis.asyncio.Redis

# Patient Redis calls: a loaded machine must not turn a slow reply into a counted failure.
NEAR = Settings(near_cache_size=64, redis_timeout=5.0)
near_items = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](
    Item, ItemSchema, pattern="item:{sku}", settings=NEAR
)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (a bounded while, not a timed assertion) for ``condition``."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


async def tracked(crud: FastRDB[Any, Any, Any, Any], client: Redis) -> NearCache:
    """The near cache ``crud`` uses with ``client``, once its tracking is set up."""
    assert crud._near is not None
    near = crud._near.of(client)
    assert near is not None
    await eventually(lambda: near.tracker.up, "tracking set up")
    # The fixtures' FLUSHDB reaches the near cache as a message: wait for it (test isolation).
    await eventually(lambda: (near.tracker.drain(), len(near) == 0)[1], "flushed")
    return near


async def stored(near: NearCache, read: Callable[[], Awaitable[object]], *keys: str) -> None:
    """Read until ``keys`` are in the near cache: a store is refused while an invalidation
    of the key since the read began may be pending (the fill's own message, on a loaded
    machine), so it may take more than one Redis hit."""

    async def done() -> bool:
        await read()
        near.tracker.drain()
        return all(key in near._entries for key in keys)

    deadline = time.monotonic() + 10
    while not await done():
        assert time.monotonic() < deadline, f"never stored: {keys}"
        await asyncio.sleep(0.005)


@contextlib.contextmanager
def deaf(near: NearCache) -> Iterator[None]:
    """Redis' invalidation messages are not read meanwhile (neither before hits nor by the
    event loop): only this process' own bookkeeping can keep the near cache right."""
    tracker = near.tracker
    conn = tracker._conn
    assert conn is not None
    tracker.loop.remove_reader(conn.sock.fileno())
    tracker.drain = lambda: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del tracker.drain
        tracker.loop.add_reader(conn.sock.fileno(), tracker._read_ready)


async def add(maker: async_sessionmaker[AsyncSession], client: Redis, sku: str) -> None:
    async with maker() as db:
        await near_items.create(db=db, redis=client, obj_in=ItemSchema(sku=sku, name=sku, price=1))


async def get(maker: async_sessionmaker[AsyncSession], client: Redis, sku: str) -> ItemSchema:
    async with maker() as db:
        return await near_items.get(db=db, redis=client, sku=sku)


async def set_counter(
    maker: async_sessionmaker[AsyncSession], client: Redis, sku: str, value: int
) -> None:
    async with maker() as db:
        await near_items.update(db=db, redis=client, obj_in=ItemUpdate(counter=value), sku=sku)


async def test_a_hit_is_served_in_process_as_a_fresh_object(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A second get is served without Redis; mutating what it returned changes nothing."""
    near = await tracked(near_items, redis_client)
    await add(maker, redis_client, "a")
    await stored(near, lambda: get(maker, redis_client, "a"), "item:a")
    before = near_items.stats()["near_hits"]
    got = await get(maker, redis_client, "a")
    assert near_items.stats()["near_hits"] == before + 1
    got.name = "mutated"
    again = await get(maker, redis_client, "a")
    assert again.name == "a"
    assert again is not got


async def test_a_write_by_another_client_drops_the_entry(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A key changed in Redis by anyone else is invalidated by the tracking message."""
    near = await tracked(near_items, redis_client)
    await add(maker, redis_client, "a")
    await stored(near, lambda: get(maker, redis_client, "a"), "item:a")
    other = Redis.from_url(REDIS_URL)
    try:
        changed = ItemSchema(sku="a", name="elsewhere", price=1, counter=0)
        await other.set("item:a", changed.model_dump_json())
    finally:
        await other.aclose()
    await eventually(lambda: (near.tracker.drain(), "item:a" not in near._entries)[1], "dropped")
    assert (await get(maker, redis_client, "a")).name == "elsewhere"


async def test_delivered_invalidations_are_applied_before_a_hit(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A message that reached the socket while the event loop did not run is applied before
    the next hit is served."""
    near = await tracked(near_items, redis_client)
    await add(maker, redis_client, "a")
    await stored(near, lambda: get(maker, redis_client, "a"), "item:a")
    other = redis.Redis.from_url(REDIS_URL)
    try:
        other.set("item:a", ItemSchema(sku="a", name="elsewhere", price=1).model_dump_json())
    finally:
        other.close()
    conn = near.tracker._conn
    assert conn is not None
    assert conn.poller.poll(10_000)  # blocks the loop: only the hit path can read it now
    assert (await get(maker, redis_client, "a")).name == "elsewhere"


async def test_own_commits_clear_near_entries_before_commit_returns(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """An update, then a page change, by this process: the next reads see them at once."""
    near = await tracked(near_items, redis_client)
    await add(maker, redis_client, "a")
    await stored(near, lambda: get(maker, redis_client, "a"), "item:a")
    async with maker() as db:
        await stored(
            near, lambda: near_items.get_multi(db=db, redis=redis_client), "items:page:1:limit:10"
        )
    with deaf(near):
        await set_counter(maker, redis_client, "a", 7)
        assert (await get(maker, redis_client, "a")).counter == 7
        await add(maker, redis_client, "b")
        async with maker() as db:
            page = await near_items.get_multi(db=db, redis=redis_client)
        assert [row.sku for row in page] == ["a", "b"]


near_books = FastRDB[Book, BookCreate, BookUpdate, BookOut](
    Book, BookOut, pattern="book:{id}", list_pattern="books:{page}:{limit}", settings=NEAR
)


async def test_an_own_commit_drops_near_entries_that_embed_its_rows(
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> None:
    """A listened session of this process renames an author: the near book and page of books
    that embed it are dropped before commit() returns."""
    near = await tracked(near_books, redis_client)
    await seed_books(maker)
    async with maker() as db:
        await stored(near, lambda: near_books.get(db=db, redis=redis_client, id=1), "book:1")
        await stored(near, lambda: near_books.get_multi(db=db, redis=redis_client), "books:1:10")
    with deaf(near):
        await rename_author(writer, "New")
        async with maker() as db:
            assert (await near_books.get(db=db, redis=redis_client, id=1)).author.name == "New"
            page = await near_books.get_multi(db=db, redis=redis_client)
            assert [book.author.name for book in page] == ["New"]


def hold_get(client: Redis, meanwhile: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Make ``client``'s next GET run ``meanwhile()`` after Redis answered, before FastRDB
    sees the answer; returns the undo."""
    armed = True

    async def held(send: Send, *args: Any) -> Any:
        nonlocal armed
        reply = await send(*args)
        if armed and args[0] == "GET":
            armed = False
            await asyncio.ensure_future(meanwhile())  # its own task: its own Redis call deadlines
        return reply

    routed = around_commands(client, held)
    routed.__enter__()

    def undo() -> None:
        routed.__exit__(None, None, None)

    return undo


async def test_a_read_that_raced_a_foreign_invalidation_is_not_stored(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """GET answers the old value; another client's change is applied before the store: the
    old value is returned (the read began first) but not stored."""
    near = await tracked(near_items, redis_client)
    await add(maker, redis_client, "a")
    other = Redis.from_url(REDIS_URL)

    async def change_elsewhere() -> None:
        seq = near.tracker.seq
        changed = ItemSchema(sku="a", name="elsewhere", price=1, counter=0)
        await other.set("item:a", changed.model_dump_json())
        await eventually(lambda: (near.tracker.drain(), near.tracker.seq > seq)[1], "message")

    undo = hold_get(redis_client, change_elsewhere)
    try:
        assert (await get(maker, redis_client, "a")).name == "a"
    finally:
        undo()
        await other.aclose()
    assert (await get(maker, redis_client, "a")).name == "elsewhere"


async def test_a_read_that_raced_an_own_commit_is_not_stored(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """GET answers the old value; this process commits a change before the store: the next
    read sees the commit, without waiting for Redis' message."""
    near = await tracked(near_items, redis_client)
    await add(maker, redis_client, "a")
    undo = hold_get(redis_client, lambda: set_counter(maker, redis_client, "a", 5))
    try:
        with deaf(near):
            assert (await get(maker, redis_client, "a")).counter == 0
            assert (await get(maker, redis_client, "a")).counter == 5
    finally:
        undo()


async def test_entries_are_bounded_least_recently_used_first(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """With room for two entries, a third evicts the one read longest ago."""
    small = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](
        Item, ItemSchema, pattern="item:{sku}", settings=Settings(near_cache_size=2)
    )
    near = await tracked(small, redis_client)
    for sku in "abc":
        await add(maker, redis_client, sku)
    async with maker() as db:
        for sku in "ab":
            read = functools.partial(small.get, db=db, redis=redis_client, sku=sku)
            await stored(near, read, f"item:{sku}")
        hits = small.stats()["near_hits"]
        await small.get(db=db, redis=redis_client, sku="a")  # a near hit: now the most recent
        assert small.stats()["near_hits"] == hits + 1
        await stored(near, lambda: small.get(db=db, redis=redis_client, sku="c"), "item:c")
    assert list(near._entries) == ["item:a", "item:c"]


def test_a_negative_size_is_refused() -> None:
    """near_cache_size below 0 is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError) as caught:
        Settings(near_cache_size=-1)
    assert caught.value.argument == "near_cache_size"


async def test_a_cluster_client_is_refused(db: AsyncSession) -> None:
    """A Redis Cluster client with the near cache on: ConfigurationError naming
    near_cache_size."""
    cluster = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=1)
    with pytest.raises(ConfigurationError) as caught:
        await near_items.get(db=db, redis=cluster, sku="a")  # type: ignore[arg-type]
    assert caught.value.argument == "near_cache_size"


# -- tracking lost ---------------------------------------------------------------------------


@pytest.fixture
async def own_redis() -> AsyncIterator[tuple[RedisServer, Redis]]:
    server = RedisServer().start()
    client = Redis.from_url(server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        yield server, client
    finally:
        await client.aclose()
        server.kill()


async def test_a_killed_tracking_connection_empties_and_bypasses_until_back(
    maker: async_sessionmaker[AsyncSession], own_redis: tuple[RedisServer, Redis]
) -> None:
    """CLIENT KILL of the tracking connection, then a change it can't hear of: the next read
    sees the change; near hits resume once tracking is set up again."""
    _, client = own_redis
    near = await tracked(near_items, client)
    await add(maker, client, "a")
    await stored(near, lambda: get(maker, client, "a"), "item:a")
    await client.client_kill_filter(_id=near.tracker.client_id)
    await client.set("item:a", ItemSchema(sku="a", name="unheard", price=1).model_dump_json())
    assert (await get(maker, client, "a")).name == "unheard"
    await eventually(lambda: near.tracker.up, "tracking set up again")
    await stored(near, lambda: get(maker, client, "a"), "item:a")
    hits = near_items.stats()["near_hits"]
    assert (await get(maker, client, "a")).name == "unheard"
    assert near_items.stats()["near_hits"] == hits + 1


async def test_a_tracker_no_near_cache_uses_stops_tracking(
    own_redis: tuple[RedisServer, Redis],
) -> None:
    """Once the FastRDB instances whose near caches a tracker served are gone, the next message
    ends its tracking (Redis would otherwise send this process a message for every write under
    their prefixes for as long as the loop runs); a near cache made later tracks anew."""
    _, client = own_redis

    def instance() -> FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema]:
        return FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](
            Item, ItemSchema, pattern="item:{sku}", settings=NEAR
        )

    crud = instance()
    tracker = (await tracked(crud, client)).tracker
    tracking = tracker.client_id
    await client.set("item:a", "x")
    await eventually(lambda: tracker.seq > 0, "a message while in use")
    del crud
    gc.collect()
    await client.set("item:a", "y")
    await eventually(lambda: tracker._conn is None, "tracking stopped")
    listed = await client.client_list()
    assert tracking not in {int(entry["id"]) for entry in listed}
    later = instance()
    assert (await tracked(later, client)).tracker is not tracker


async def test_a_redis_restart_empties_the_near_cache(
    maker: async_sessionmaker[AsyncSession], own_redis: tuple[RedisServer, Redis]
) -> None:
    """Redis restarts while the row changes without any invalidation: the next read after
    the restart sees the database's row, not the near entry."""
    server, client = own_redis
    near = await tracked(near_items, client)
    await add(maker, client, "a")
    await stored(near, lambda: get(maker, client, "a"), "item:a")
    server.kill()
    async with maker() as session:  # not listened: only the restart can tell
        await session.execute(update(Item).where(Item.sku == "a").values(name="while down"))
        await session.commit()
    server.start()
    assert (await get(maker, client, "a")).name == "while down"
    await eventually(lambda: near.tracker.up, "tracking set up again")


# -- histories -------------------------------------------------------------------------------

WRITER = """
import sys, time
from sqlalchemy import create_engine, update
from sqlalchemy.orm import sessionmaker
import redis
from fastrdb.events import listen
from tests.models import Item

maker = sessionmaker(create_engine(sys.argv[1]))
listen(maker, redis.Redis.from_url(sys.argv[2], socket_timeout=1))
deadline = time.monotonic() + float(sys.argv[3])
value = 0
while time.monotonic() < deadline:
    value += 1
    with maker() as session:
        session.execute(update(Item).where(Item.sku == "h").values(counter=value))
        session.commit()
    print("committed", time.monotonic(), value, flush=True)
    time.sleep(0.003)
"""


async def read_history(
    maker: async_sessionmaker[AsyncSession], client: Redis, history: History, until: float
) -> None:
    while time.monotonic() < until:
        started = time.monotonic()
        got = await get(maker, client, "h")
        history.reads.append(("h", started, got.counter))
        # A pause between reads: four readers spinning on near hits would starve the writer's
        # Redis calls of the loop on a loaded two-core machine (its timeouts are the default).
        await asyncio.sleep(0.001)


@pytest.mark.slow
async def test_history_with_a_writer_in_another_process(
    database: Database, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A listened sync session in another process bumps a counter; readers with the near cache
    never see an older value than one committed 1 ms or more before their read began."""
    await tracked(near_items, redis_client)
    await add(maker, redis_client, "h")
    url = REDIS_URL
    process = await start_python(WRITER, database.sync_url, url, "2.0")
    history = History({"h": []})
    hits = near_items.stats()["near_hits"]
    until = time.monotonic() + 3.0
    async with asyncio.TaskGroup() as group:
        for _ in range(4):
            group.create_task(read_history(maker, redis_client, history, until))
    result = await finish(process)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("committed")]
    history.committed["h"] = [(float(t) + 0.001, int(v)) for _, t, v in lines]
    assert len(lines) > 20
    assert near_items.stats()["near_hits"] > hits + 100
    assert history.violations() == []


@pytest.mark.slow
async def test_history_with_a_writer_in_this_process(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """Writers in this process (FastRDB update and a listened ORM session): no read that began
    after a commit returned sees an older value, with no margin at all."""
    writer = async_sessionmaker(engine)
    handle = listen(writer, redis_client, settings=NEAR)  # patient Redis calls, as the reads
    await tracked(near_items, redis_client)
    await add(maker, redis_client, "h")
    history = History({"h": []})
    hits = near_items.stats()["near_hits"]
    until = time.monotonic() + 2.0

    async def write() -> None:
        value = 0
        while time.monotonic() < until:
            value += 1
            if value % 2:
                await set_counter(maker, redis_client, "h", value)
            else:
                async with writer() as session:
                    (await session.get_one(Item, "h")).counter = value
                    await session.commit()
            history.committed["h"].append((time.monotonic(), value))
            await asyncio.sleep(0.01)  # room for near hits between two writes

    async with asyncio.TaskGroup() as group:
        group.create_task(write())
        for _ in range(4):
            group.create_task(read_history(maker, redis_client, history, until))
    handle.remove()
    assert len(history.committed["h"]) > 5
    assert near_items.stats()["near_hits"] > hits + 20
    assert history.violations() == []


def test_a_closed_event_loop_is_let_go(database: Database) -> None:
    """A near cache's tracker is kept per event loop (weakly, by the loop) and must not keep
    its loop alive: a process that runs several loops one after another (``asyncio.run`` per
    job, a test runner) would keep every loop, its tracking connection and its tasks. Once
    another loop used the near cache, nothing holds the first (its tracker held it, directly,
    by its finished set-up task, and by the client pool's keyword arguments, which reach the
    pool's connections and their loop)."""

    async def use(sku: str) -> weakref.ref[asyncio.AbstractEventLoop]:
        engine = create_async_engine(database.async_url)
        client = Redis.from_url(REDIS_URL)
        try:
            await tracked(near_items, client)
            maker = async_sessionmaker(engine, expire_on_commit=False)
            await add(maker, client, sku)
            await get(maker, client, sku)
        finally:
            await client.aclose()
            await engine.dispose()
        return weakref.ref(asyncio.get_running_loop())

    first = asyncio.run(use("a"))
    asyncio.run(use("b"))  # the instance remembers its last loop (the hit path's shortcut)
    gc.collect()
    assert first() is None
