"""The lease protocol: no stale fill after a commit, one database read per cold key."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from fastrdb import FastRDB, Settings
from fastrdb._compat import await_in_greenlet
from fastrdb.cache import store
from fastrdb.cache.health import health_of
from fastrdb.cache.scripts import DROP, INVALIDATE
from fastrdb.events import listen
from tests.conftest import Database, async_redis_client
from tests.interleave import CountSelects, HoldGetReply, PauseAfterSelect, Send, around_commands
from tests.models import Item, ItemSchema, ItemUpdate, User, UserCreate, UserResponse, UserUpdate
from tests.processes import finish, start_python
from tests.test_crud import add_user, users

Redis = redis.asyncio.Redis

items = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](Item, ItemSchema, pattern="item:{sku}")

# The single-flight tests count database reads, not speed: on a loaded machine the lease holder
# may need longer than the default lease_wait (0.2 s) or redis_timeout (0.25 s), and a waiter
# that gives up reads the database itself. These settings take time out of the assertion.
PATIENT = Settings(redis_timeout=10.0, lease_wait=60.0, lease_ttl=60.0, lease_poll=0.01)
patient_users = FastRDB[User, UserCreate, UserUpdate, UserResponse](
    User, UserResponse, pattern="user:email:{email}", settings=PATIENT
)


async def rename(maker: async_sessionmaker[AsyncSession], email: str, name: str) -> None:
    async with maker() as session:
        user = (await session.execute(select(User).where(User.email == email))).scalar_one()
        user.name = name
        await session.commit()


async def test_a_read_before_a_commit_cannot_fill_after_it(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """Reader selects the old row, writer commits, reader resumes and tries to fill: the fill
    is refused, Redis never holds the old row afterwards, and the next get sees the new one."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Old")
    await redis_client.delete("user:email:a@x.io")
    with PauseAfterSelect(engine, "users") as pause:

        async def read() -> str:
            async with maker() as db:
                return (await users.get(db=db, redis=redis_client, email="a@x.io")).name

        reader = asyncio.create_task(read())
        await pause.wait_selected()
        await rename(writer, "a@x.io", "New")
        pause.resume()
        assert await reader == "Old"  # it started before the commit: old is a fair answer
    raw = await redis_client.get("user:email:a@x.io")
    assert raw is None or b'"New"' in raw
    async with maker() as db:
        assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "New"


async def test_a_list_read_before_a_commit_cannot_fill_after_it(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """The same forced interleaving for a get_multi page."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Old")
    with PauseAfterSelect(engine, "users") as pause:

        async def read() -> list[str]:
            async with maker() as db:
                return [u.name for u in await users.get_multi(db=db, redis=redis_client)]

        reader = asyncio.create_task(read())
        await pause.wait_selected()
        await rename(writer, "a@x.io", "New")
        pause.resume()
        assert await reader == ["Old"]
    raw = await redis_client.get("user:page:1:limit:10")
    assert raw is None or b'"Old"' not in raw
    async with maker() as db:
        assert [u.name for u in await users.get_multi(db=db, redis=redis_client)] == ["New"]


async def test_a_writer_racing_a_write_through(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """Writer A (FastRDB update) commits and pauses before its write-through; writer B (plain
    ORM) commits a newer value; A resumes. The cache ends up with B's value or nothing, never
    A's older one."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Zero")
    committed, resume = asyncio.Event(), asyncio.Event()

    def hold(session: Session) -> None:
        committed.set()
        await_in_greenlet(resume.wait())  # inside A's commit(), after the database commit

    async def update_a() -> str:
        async with maker() as db:
            event.listen(db.sync_session, "after_commit", hold)
            updated = await users.update(
                db=db, redis=redis_client, obj_in=UserUpdate(name="A"), email="a@x.io"
            )
            return updated.name

    task = asyncio.create_task(update_a())
    async with asyncio.timeout(10):
        await committed.wait()
    await rename(writer, "a@x.io", "B")
    resume.set()
    assert await task == "A"
    raw = await redis_client.get("user:email:a@x.io")
    assert raw is None or b'"B"' in raw
    async with maker() as db:
        assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "B"


async def test_a_commit_before_the_writers_invalidation_refuses_its_write_through(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """Writer A's write-through rides with its commit's invalidation (one script). A's
    database commit is done and its script held back; writer B commits a newer value and B's
    invalidation runs first; A's script then finds its lease gone: it drops, stores nothing,
    and the cache ends up with B's value or nothing."""
    if store.is_cluster(redis_client):
        pytest.skip("on a cluster the write-through follows the invalidation (test above)")
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Zero")
    a_client = async_redis_client()  # A's own client, patient while the test holds it
    a_sessions = async_sessionmaker(engine, expire_on_commit=False)
    handle = listen(a_sessions, a_client, settings=Settings(redis_timeout=30))
    arrived, resume = asyncio.Event(), asyncio.Event()

    async def held(send: Send, *args: Any) -> Any:
        if args[:2] == ("EVALSHA", INVALIDATE.sha) and not arrived.is_set():
            arrived.set()
            await resume.wait()
        return await send(*args)

    async def update_a() -> str:
        async with a_sessions() as db:
            updated = await patient_users.update(
                db=db, redis=a_client, obj_in=UserUpdate(name="A"), email="a@x.io"
            )
            return updated.name

    refused = patient_users.stats()["fills_refused"]
    try:
        with around_commands(a_client, held):
            task = asyncio.create_task(update_a())
            async with asyncio.timeout(10):
                await arrived.wait()  # A's database commit is done; its invalidation waits
            await rename(writer, "a@x.io", "B")  # commits and drops the key and A's lease
            resume.set()
            assert await task == "A"
    finally:
        resume.set()
        handle.remove()
        await a_client.aclose()
    raw = await redis_client.get("user:email:a@x.io")
    assert raw is None or b'"B"' in raw
    assert patient_users.stats()["fills_refused"] == refused + 1
    async with maker() as db:
        assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "B"


async def test_a_page_another_invalidation_took_is_dropped_before_the_commit_returns(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """Redis Cluster: writer A's invalidation has taken a cached page out of the list registry
    and is held before it drops anything; writer B commits a change to another row of that
    page. When B's commit returns, the page no longer holds B's old row: B drops it too."""
    if not store.is_cluster(redis_client):
        pytest.skip("on one Redis the registry drain and the drops are one script")
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "A0")
        await add_user(db, redis_client, "b@x.io", "B0")
        assert [u.name for u in await users.get_multi(db=db, redis=redis_client)] == ["A0", "B0"]
    assert await redis_client.get("user:page:1:limit:10") is not None
    a_client = async_redis_client()  # A's own client, patient while the test holds it
    a_sessions = async_sessionmaker(engine)
    handle = listen(a_sessions, a_client, settings=Settings(redis_timeout=30))
    arrived, resume = asyncio.Event(), asyncio.Event()
    evalsha = a_client.evalsha

    async def held_evalsha(sha: str, numkeys: int, *args: Any) -> Any:
        if sha == DROP.sha and not arrived.is_set():
            arrived.set()
            await resume.wait()
        return await evalsha(sha, numkeys, *args)

    a_client.evalsha = held_evalsha  # type: ignore[method-assign]
    try:
        task = asyncio.create_task(rename(a_sessions, "a@x.io", "A1"))
        async with asyncio.timeout(10):
            await arrived.wait()  # A's registries are drained; its first drop waits
        await rename(writer, "b@x.io", "B1")
        raw = await redis_client.get("user:page:1:limit:10")
        assert raw is None or b'"B0"' not in raw
        resume.set()
        await task
    finally:
        resume.set()
        handle.remove()
        await a_client.aclose()
    async with maker() as db:
        assert [u.name for u in await users.get_multi(db=db, redis=redis_client)] == ["A1", "B1"]


async def test_concurrent_misses_cost_one_database_read(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """100 concurrent gets of one cold key, each with its own session: one SELECT."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Ann")
    await redis_client.delete("user:email:a@x.io")
    client = async_redis_client()  # its health takes PATIENT's timeouts

    async def read() -> str:
        async with maker() as db:
            return (await patient_users.get(db=db, redis=client, email="a@x.io")).name

    with CountSelects(engine, "users") as counted:
        names = await asyncio.gather(*(read() for _ in range(100)))
    await client.aclose()
    assert names == ["Ann"] * 100
    assert counted.count == 1, counted.count


async def test_a_reader_whose_miss_came_before_another_readers_fill_takes_that_fill(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """Reader B's GET misses; before B asks for the lease, reader A misses, leases, reads and
    fills (and its fill drops its lease); B then finds A's value, not a free lease: one SELECT."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Ann")
    await redis_client.delete("user:email:a@x.io")
    client = async_redis_client()  # B's, with PATIENT's timeouts: its GET reply is held a while

    async def read(redis: Any) -> str:
        async with maker() as db:
            return (await patient_users.get(db=db, redis=redis, email="a@x.io")).name

    with (
        CountSelects(engine, "users") as counted,
        HoldGetReply(client, "user:email:a@x.io") as held,
    ):
        reader_b = asyncio.create_task(read(client))
        await held.wait_held()
        assert await read(redis_client) == "Ann"
        held.release()
        assert await reader_b == "Ann"
    await client.aclose()
    assert counted.count == 1, counted.count


MISSES = """
import asyncio, sys
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from tests.conftest import async_redis_client
from tests.interleave import CountSelects
from tests.test_races import patient_users as users

async def main(url):
    engine = create_async_engine(url)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    client = async_redis_client()
    while not await client.exists("test:go"):
        await asyncio.sleep(0.001)

    async def read():
        async with maker() as db:
            return (await users.get(db=db, redis=client, email="a@x.io")).name

    with CountSelects(engine, "users") as counted:
        names = await asyncio.gather(*(read() for _ in range(50)))
    assert set(names) == {"Ann"}, names
    print("selects", counted.count)
    await client.aclose()
    await engine.dispose()

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
async def test_concurrent_misses_across_processes(
    database: Database, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """Two OS processes missing the same key at once cause one SELECT in total."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Ann")
    await redis_client.delete("user:email:a@x.io")
    processes = [await start_python(MISSES, database.async_url) for _ in range(2)]
    await asyncio.sleep(1.5)  # both interpreters are up and polling for the start signal
    await redis_client.set("test:go", 1)
    results = [await finish(process) for process in processes]
    for result in results:
        assert result.returncode == 0, result.stderr
    total = sum(int(r.stdout.split("selects")[1]) for r in results)
    assert total == 1, total


# -- a randomized history check --------------------------------------------------------------


@dataclass
class History:
    committed: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    """sku → (time commit() returned, counter value committed), in commit order."""
    reads: list[tuple[str, float, int]] = field(default_factory=list)
    """(sku, time the read started, counter value it returned)."""

    def violations(self) -> list[str]:
        found = []
        for sku, started, value in self.reads:
            floor = max(
                (v for returned, v in self.committed.get(sku, []) if returned < started),
                default=0,
            )
            if value < floor:
                found.append(f"{sku}: read {value} after {floor} was committed")
        return found


async def run_history(
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    *,
    seconds: float,
    seed: int,
) -> History:
    rng = random.Random(seed)
    skus = [f"row-{i}" for i in range(4)]
    async with maker() as db:
        for sku in skus:
            await items.create(
                db=db, redis=redis_client, obj_in=ItemSchema(sku=sku, name=sku, price=1)
            )
    history = History({sku: [] for sku in skus})
    deadline = time.monotonic() + seconds
    writing = len(skus)

    async def write(sku: str) -> None:
        nonlocal writing
        value = 0
        # At least `seconds`, and at least 6 commits per row however slow the machine is.
        while time.monotonic() < deadline or value < 6:
            value += 1
            how = rng.choice(["fastrdb", "orm", "bulk"])
            if how == "fastrdb":
                async with maker() as db:
                    await items.update(
                        db=db, redis=redis_client, obj_in=ItemUpdate(counter=value), sku=sku
                    )
            elif how == "orm":
                async with writer() as session:
                    (await session.get_one(Item, sku)).counter = value
                    await session.commit()
            else:
                async with writer() as session:
                    await session.execute(update(Item).where(Item.sku == sku).values(counter=value))
                    await session.commit()
            history.committed[sku].append((time.monotonic(), value))
            await asyncio.sleep(rng.random() * 0.01)
        writing -= 1

    async def read() -> None:
        while time.monotonic() < deadline or writing or len(history.reads) <= 100:
            sku = rng.choice(skus)
            started = time.monotonic()
            async with maker() as db:
                if rng.random() < 0.2:  # a cached page holds every row's counter
                    page = await items.get_multi(db=db, redis=redis_client, limit=10)
                    history.reads.extend((row.sku, started, row.counter) for row in page)
                else:
                    got = await items.get(db=db, redis=redis_client, sku=sku)
                    history.reads.append((sku, started, got.counter))

    async with asyncio.TaskGroup() as group:
        for sku in skus:
            group.create_task(write(sku))
        for _ in range(12):
            group.create_task(read())
    return history


@pytest.fixture
def patient_redis(redis_client: Redis) -> Redis:
    """``redis_client`` with PATIENT's timeouts, set before any other fixture uses the client
    (the first user configures its health). Stale reads are the subject of the tests that take
    it, not speed: on a loaded machine a call may outlast the default redis_timeout, which is
    harmless there (the read bypasses the cache) but fails the fixture's health check."""
    health_of(redis_client, PATIENT)
    return redis_client


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
async def test_randomized_history_has_no_stale_reads(
    maker: async_sessionmaker[AsyncSession],
    patient_redis: Redis,
    writer: async_sessionmaker[AsyncSession],
    seed: int,
) -> None:
    """Writers bump counters through FastRDB update, ORM changes and bulk update() while a
    dozen readers get rows and pages in a loop: no read that started after a commit returned
    sees an older value."""
    history = await run_history(maker, writer, patient_redis, seconds=2.0, seed=seed)
    assert len(history.reads) > 100
    assert sum(len(v) for v in history.committed.values()) > 4
    assert history.violations() == []


# -- on_write="refresh" ----------------------------------------------------------------------


async def test_refresh_mode_fills_written_rows_again(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """With on_write="refresh", a committed change leaves the row's key filled with the new
    value (old key of a changed email gone), so the next get is a hit."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Old")
    refreshing = async_sessionmaker(engine)
    handle = listen(refreshing, redis_client, on_write="refresh")
    await rename(refreshing, "a@x.io", "New")
    await handle.refreshed()
    raw = await redis_client.get("user:email:a@x.io")
    assert raw is not None
    assert b'"New"' in raw
    async with refreshing() as session:
        user = (await session.execute(select(User).where(User.email == "a@x.io"))).scalar_one()
        user.email = "b@x.io"
        await session.commit()
    await handle.refreshed()
    assert await redis_client.get("user:email:a@x.io") is None
    assert await redis_client.get("user:email:b@x.io") is not None
    misses = users.stats()["misses"]
    async with maker() as db:
        assert (await users.get(db=db, redis=redis_client, email="b@x.io")).name == "New"
    assert users.stats()["misses"] == misses
    handle.remove()


async def test_a_refresh_cannot_fill_an_older_value(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    writer: async_sessionmaker[AsyncSession],
) -> None:
    """A's refresh reads its row and pauses; B commits a newer value; A's refresh resumes:
    its fill is refused."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Zero")
    refreshing = async_sessionmaker(engine)
    handle = listen(refreshing, redis_client, on_write="refresh")
    with PauseAfterSelect(engine, "users", armed=False) as pause:
        async with refreshing() as session:
            # The next SELECT of users after this commit is the refresh's.
            event.listen(session.sync_session, "after_commit", lambda _: pause.arm())
            user = (await session.execute(select(User).where(User.email == "a@x.io"))).scalar_one()
            user.name = "A"
            await session.commit()
        await pause.wait_selected()
        await rename(writer, "a@x.io", "B")
        pause.resume()
        await handle.refreshed()
    raw = await redis_client.get("user:email:a@x.io")
    assert raw is None or b'"B"' in raw
    async with maker() as db:
        assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "B"
    handle.remove()


def test_refresh_mode_needs_an_asyncio_target(sync_maker: object, sync_redis: object) -> None:
    """on_write="refresh" is refused for sync targets and unknown modes, naming the argument."""
    from fastrdb import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        listen(sync_maker, sync_redis, on_write="refresh")
    assert caught.value.argument == "on_write"
    with pytest.raises(ConfigurationError):
        listen(sync_maker, sync_redis, on_write="nope")  # type: ignore[arg-type]
