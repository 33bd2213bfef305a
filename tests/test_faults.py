"""Faults that must not cost coherence: eviction, unconfirmed commits, second clients, any
client exception, cancellation, and an overloaded connection pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from sqlalchemy import event, make_url, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from fastrdb import FastRDB, Settings
from fastrdb._compat import await_in_greenlet
from fastrdb.cache.health import health_of
from fastrdb.events import listen
from tests.conftest import Database, async_redis_client
from tests.interleave import CountSelects, PauseAfterSelect
from tests.models import User, UserCreate, UserResponse, UserUpdate
from tests.servers import HoldingProxy, RedisServer, free_port

Redis = redis.asyncio.Redis
SETTINGS = Settings(redis_timeout=0.2, breaker_threshold=2, breaker_cooldown=0.3)
KEY = "user:email:a@x.io"


def make_crud(settings: Settings = SETTINGS) -> FastRDB[User, UserCreate, UserUpdate, UserResponse]:
    return FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User,
        UserResponse,
        pattern="user:email:{email}",
        list_pattern="user:page:{page}:limit:{limit}",
        settings=settings,
    )


def client_for(port: int, **kwargs: object) -> Redis:
    return Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5, **kwargs)  # type: ignore[arg-type]


async def user_id(maker: async_sessionmaker[AsyncSession], email: str = "a@x.io") -> int:
    async with maker() as db:
        return (await db.execute(select(User.id).where(User.email == email))).scalar_one()


async def rename(maker: async_sessionmaker[AsyncSession], ident: int, name: str) -> None:
    async with maker() as session:
        (await session.get_one(User, ident)).name = name
        await session.commit()


def lease_of(key: str) -> str:
    return f"{{{key}}}:lease"


async def cached_name(client: Redis, key: str = KEY) -> str | None:
    raw = await client.get(key)
    return None if raw is None else UserResponse.model_validate_json(raw).name


# -- a commit whose outcome is unknown --


@pytest.fixture
async def held_commits(database: Database) -> AsyncIterator[tuple[HoldingProxy, AsyncEngine]]:
    """An engine whose connections pass through a proxy that can hold back COMMIT's reply."""
    if database.name == "sqlite":
        pytest.skip("SQLite has no connection to lose")
    url = make_url(database.async_url)
    # The COMMIT statement as each driver sends it: asyncpg's simple query, asyncmy's COM_QUERY.
    marker = b"COMMIT;" if database.name == "postgresql" else b"\x03COMMIT"
    proxy = await HoldingProxy(url.port or 0, marker).start()
    engine = create_async_engine(url.set(port=proxy.port))
    yield proxy, engine
    proxy.release()
    await proxy.cut()
    await engine.dispose()


@pytest.mark.parametrize(
    ("write", "then"),
    [("orm", "release"), ("orm", "cut"), ("update", "cut"), ("delete", "release")],
)
async def test_a_commit_cancelled_while_its_reply_is_in_flight_still_invalidates(
    held_commits: tuple[HoldingProxy, AsyncEngine],
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    write: str,
    then: str,
) -> None:
    """The database commits, its reply is held back, a request timeout cancels commit() (plain
    ORM code, or FastRDB's update/delete): the timeout reaches the caller, the row's key is
    dropped anyway and no lease is left (the reply then arrives late, or the connection is
    lost)."""
    proxy, engine = held_commits
    crud = make_crud(Settings())
    writer = async_sessionmaker(engine, expire_on_commit=False)
    handle = listen(writer, redis_client)
    async with maker() as db:
        await crud.create(db=db, redis=redis_client, obj_in=UserCreate(email="a@x.io", name="Old"))
        assert (await crud.get(db=db, redis=redis_client, email="a@x.io")).name == "Old"
    ident = await user_id(maker)
    scopes: list[asyncio.Timeout] = []

    async def commit() -> None:
        async with asyncio.timeout(None) as scope:
            scopes.append(scope)
            if write == "orm":
                await rename(writer, ident, "New")
                return
            async with writer() as db:
                if write == "update":
                    changed = UserUpdate(name="New")
                    await crud.update(db=db, redis=redis_client, obj_in=changed, email="a@x.io")
                else:
                    await crud.delete(db=db, redis=redis_client, email="a@x.io")

    proxy.armed = True
    task = asyncio.create_task(commit())
    async with asyncio.timeout(10):
        await proxy.held.wait()  # the database committed; its reply waits in the proxy
    async with maker() as db:
        committed = await db.get(User, ident)
        assert committed is None if write == "delete" else committed.name == "New"
    scopes[0].reschedule(asyncio.get_running_loop().time())  # the request timeout fires
    await asyncio.sleep(0)
    if then == "release":
        proxy.release()
    else:
        await proxy.cut()
    with pytest.raises(TimeoutError):
        await task
    assert await cached_name(redis_client) is None, "the stale entry survived the commit"
    assert not await redis_client.exists(lease_of(KEY)), "a lease was left behind"
    async with maker() as db:
        if write == "delete":
            assert await crud.count(db=db) == 0
        else:
            assert (await crud.get(db=db, redis=redis_client, email="a@x.io")).name == "New"
    handle.remove()


# -- pending invalidations belong to the server, not to one client object --


async def test_a_pending_invalidation_gates_every_client_of_the_server(
    maker: async_sessionmaker[AsyncSession], server: RedisServer
) -> None:
    """Writes paused: a commit's invalidation through one client is kept; a second client
    object of the same server serves the database, not the stale entry, until the replay."""
    crud = make_crud()
    first, second, pauser = (client_for(server.port) for _ in range(3))
    writer = async_sessionmaker(maker.kw["bind"])
    handle = listen(writer, first, settings=SETTINGS)
    async with maker() as db:
        await crud.create(db=db, redis=second, obj_in=UserCreate(email="a@x.io", name="Old"))
        assert (await crud.get(db=db, redis=second, email="a@x.io")).name == "Old"
    ident = await user_id(maker)
    await pauser.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    await rename(writer, ident, "New")  # the invalidation times out and is kept
    assert health_of(first).pending is not None
    assert await cached_name(second) == "Old", "the stale entry is still in Redis"
    async with maker() as db:
        assert (await crud.get(db=db, redis=second, email="a@x.io")).name == "New"
    await pauser.execute_command("CLIENT", "UNPAUSE")
    async with maker() as db:
        assert (await crud.get(db=db, redis=second, email="a@x.io")).name == "New"
    assert health_of(first).pending is None, "the second client replayed it"
    assert await cached_name(second) in (None, "New")
    handle.remove()
    for client in (first, second, pauser):
        await client.aclose()


# -- every exception a client raises is a Redis failure --


async def test_a_cluster_client_with_no_reachable_node_serves_from_the_database(
    maker: async_sessionmaker[AsyncSession],
) -> None:
    """A cluster client whose startup node is unreachable raises RedisClusterException (not a
    RedisError): every CRUD call answers from the database; the failure is counted and its
    type logged once."""
    crud = make_crud(Settings(breaker_threshold=1000))  # keep calling the broken client
    client = AsyncRedisCluster(host="127.0.0.1", port=free_port())
    with capture_logs() as logs:
        async with maker() as db:
            await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A"))
            for _ in range(3):
                assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "A"
            assert len(await crud.get_multi(db=db, redis=client)) == 1
            updated = await crud.update(
                db=db, redis=client, obj_in=UserUpdate(name="B"), email="a@x.io"
            )
            assert updated.name == "B"
            await crud.delete(db=db, redis=client, email="a@x.io")
    assert crud.stats()["redis_errors"] >= 3
    logged = [entry for entry in logs if entry["event"] == "redis_client_error"]
    assert [entry["error"] for entry in logged] == ["RedisClusterException"]
    await client.aclose()


def test_a_client_reused_across_event_loops_serves_from_the_database(
    database: Database, server: RedisServer
) -> None:
    """A client whose connections belong to a closed event loop raises RuntimeError: the next
    asyncio.run's CRUD calls answer from the database."""
    crud = make_crud(Settings(breaker_threshold=1000))
    client = client_for(server.port)

    async def run(name: str) -> list[str]:
        engine = create_async_engine(database.async_url)
        maker = async_sessionmaker(engine, expire_on_commit=False)
        try:
            async with maker() as db:
                if name == "A":
                    await crud.create(
                        db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A")
                    )
                else:
                    await crud.update(
                        db=db, redis=client, obj_in=UserUpdate(name=name), email="a@x.io"
                    )
                return [
                    (await crud.get(db=db, redis=client, email="a@x.io")).name for _ in range(3)
                ]
        finally:
            await engine.dispose()

    assert asyncio.run(run("A")) == ["A"] * 3
    with capture_logs() as logs:
        assert asyncio.run(run("B")) == ["B"] * 3
    assert crud.stats()["redis_errors"] >= 1
    assert [entry["error"] for entry in logs if entry["event"] == "redis_client_error"] == [
        "RuntimeError"
    ]


# -- eviction: FastRDB's bookkeeping must not be evicted --


def evicting_server(policy: str) -> RedisServer:
    server = RedisServer()
    server.extra = ["--maxmemory", "64mb", "--maxmemory-policy", policy]
    return server.start()


async def test_an_allkeys_eviction_policy_bypasses_the_cache(
    maker: async_sessionmaker[AsyncSession],
) -> None:
    """Under allkeys-lru Redis may evict the bookkeeping invalidation reads: the cache is not
    used (nothing filled, reads from the database), and one error says why."""
    server = evicting_server("allkeys-lru")
    client = client_for(server.port)
    crud = make_crud()
    try:
        with capture_logs() as logs:
            async with maker() as db:
                await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A"))
                for _ in range(3):
                    assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "A"
        assert await client.get(KEY) is None, "nothing is cached"
        assert crud.stats()["hits"] == 0
        unsafe = [entry for entry in logs if entry["event"] == "redis_memory_policy_unsafe"]
        assert [(entry["log_level"], entry["policy"]) for entry in unsafe] == [
            ("error", "allkeys-lru")
        ]
    finally:
        await client.aclose()
        server.kill()


@pytest.mark.parametrize("policy", ["volatile-lru", "noeviction"])
async def test_a_policy_that_keeps_keys_without_ttl_caches(
    maker: async_sessionmaker[AsyncSession], policy: str
) -> None:
    """noeviction and volatile-* never evict the bookkeeping (it has no TTL): caching works."""
    server = evicting_server(policy)
    client = client_for(server.port)
    crud = make_crud()
    try:
        async with maker() as db:
            await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A"))
            assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "A"
        assert await cached_name(client) == "A"
        assert crud.stats()["hits"] == 1
    finally:
        await client.aclose()
        server.kill()


async def test_an_unknown_policy_is_trusted_with_a_warning(
    maker: async_sessionmaker[AsyncSession], server: RedisServer
) -> None:
    """An ACL that refuses INFO and CONFIG: one warning names the requirement; caching works."""
    admin = client_for(server.port)
    await admin.execute_command(
        "ACL", "SETUSER", "app", "on", ">secret", "~*", "&*", "+@all", "-info", "-config"
    )
    client = client_for(server.port, username="app", password="secret")
    crud = make_crud()
    with capture_logs() as logs:
        async with maker() as db:
            await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A"))
            assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "A"
    assert [entry["log_level"] for entry in logs if "policy" in entry["event"]] == ["warning"]
    assert crud.stats()["hits"] == 1
    for c in (admin, client):
        await c.aclose()


# -- cancellation propagates, and leaves no lease behind --


async def test_a_get_cancelled_during_its_read_raises_cancellation(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """get() cancelled while its own read transaction runs raises CancelledError (MariaDB
    raised PendingRollbackError) and gives its lease back."""
    crud = make_crud(Settings())
    async with maker() as db:
        await crud.create(db=db, redis=redis_client, obj_in=UserCreate(email="a@x.io", name="A"))
    await redis_client.delete(KEY)
    with PauseAfterSelect(engine, "users") as pause:

        async def read() -> None:
            async with maker() as db:
                await crud.get(db=db, redis=redis_client, email="a@x.io")

        task = asyncio.create_task(read())
        await pause.wait_selected()
        assert await redis_client.exists(lease_of(KEY))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not await redis_client.exists(lease_of(KEY)), "the lease was left behind"
    async with maker() as db:
        assert (await crud.get(db=db, redis=redis_client, email="a@x.io")).name == "A"
    assert await cached_name(redis_client) == "A"


async def test_an_update_cancelled_before_its_write_through_leaves_no_lease(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """update() cancelled after the database committed, before its write-through (here in
    its commit's after_commit hooks; the session's invalidations go to another client, so the
    value does not ride with them), raises CancelledError and gives back the write-through
    lease it took before the commit."""
    crud = make_crud(Settings())
    async with maker() as db:
        await crud.create(db=db, redis=redis_client, obj_in=UserCreate(email="a@x.io", name="A"))
    committed = asyncio.Event()
    other_client = async_redis_client()
    listened = async_sessionmaker(engine, expire_on_commit=False)
    handle = listen(listened, other_client)

    def hold(session: Session) -> None:
        committed.set()
        await_in_greenlet(asyncio.Event().wait())  # until cancelled

    async def write() -> None:
        async with listened() as db:
            event.listen(db.sync_session, "after_commit", hold)
            await crud.update(
                db=db, redis=redis_client, obj_in=UserUpdate(name="B"), email="a@x.io"
            )

    task = asyncio.create_task(write())
    async with asyncio.timeout(10):
        await committed.wait()
    assert await redis_client.exists(lease_of(KEY))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await redis_client.exists(lease_of(KEY)), "the lease was left behind"
    handle.remove()
    await other_client.aclose()
    async with maker() as db:
        assert (await crud.get(db=db, redis=redis_client, email="a@x.io")).name == "B"
    assert await cached_name(redis_client) == "B"


async def test_a_refresh_cancelled_at_shutdown_leaves_no_lease(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A refresh task (on_write="refresh") cancelled during its read, as the loop's shutdown
    cancels it, gives its lease back."""
    crud = make_crud(Settings())
    async with maker() as db:
        await crud.create(db=db, redis=redis_client, obj_in=UserCreate(email="a@x.io", name="A"))
    ident = await user_id(maker)
    writer = async_sessionmaker(engine)
    handle = listen(writer, redis_client, on_write="refresh")
    with PauseAfterSelect(engine, "users", armed=False) as pause:

        def arm(session: Session) -> None:
            if session.info.get("fastrdb.binding") is not None:
                pause.arm()

        event.listen(Session, "after_commit", arm)
        try:
            await rename(writer, ident, "B")
        finally:
            event.remove(Session, "after_commit", arm)
        await pause.wait_selected()
        assert await redis_client.exists(lease_of(KEY))
        refreshes = list(handle._binding.tasks)
        for task in refreshes:
            task.cancel()
        await asyncio.gather(*refreshes, return_exceptions=True)
    assert not await redis_client.exists(lease_of(KEY)), "the lease was left behind"
    async with maker() as db:
        assert (await crud.get(db=db, redis=redis_client, email="a@x.io")).name == "B"
    handle.remove()


# -- overload: a full pool is back-pressure, not an outage --


@pytest.mark.slow
async def test_256_concurrent_requests_through_default_pools_see_no_error(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], server: RedisServer
) -> None:
    """256 tasks, each with its own session, through redis-py's default pool (100
    connections) and SQLAlchemy's default pool (5 + 10): every call answers, and a full Redis
    pool neither counts as a failure nor opens the breaker."""
    crud = make_crud(Settings())
    client = Redis(port=server.port)  # as users make it: default pool, no socket timeouts
    emails = [f"u{i}@x.io" for i in range(16)]
    async with maker() as db:
        for email in emails:
            await crud.create(db=db, redis=client, obj_in=UserCreate(email=email, name=email))

    async def request(i: int) -> str:
        async with maker() as db:
            email = emails[i % len(emails)]
            if i % 20 == 0:
                await crud.update(db=db, redis=client, obj_in=UserUpdate(bio="b"), email=email)
            return (await crud.get(db=db, redis=client, email=email)).name

    with capture_logs() as logs:
        for _ in range(3):
            names = await asyncio.gather(*(request(i) for i in range(256)))
            assert names == [emails[i % len(emails)] for i in range(256)]
    # (A slow event loop may still time calls out: that is a real failure, not asserted on.)
    assert not [entry for entry in logs if entry.get("error") == "MaxConnectionsError"]
    assert health_of(client).pending is None
    assert health_of(client).pool_waits > 0, "the pool never ran full: nothing was tested"
    assert crud.stats()["hits"] > 0
    await client.aclose()


async def test_misses_while_the_breaker_is_open_cost_one_read(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession]
) -> None:
    """Redis unreachable, breaker open: 50 concurrent gets of one key in the process cost one
    database read, and each caller gets its own object."""
    crud = make_crud(Settings(breaker_threshold=1, breaker_cooldown=60))
    client = client_for(free_port())
    async with maker() as db:
        await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A"))

    async def read() -> UserResponse:
        async with maker() as db:
            return await crud.get(db=db, redis=client, email="a@x.io")

    await read()  # the breaker is open from here on
    with CountSelects(engine, "users") as counted:
        got = await asyncio.gather(*(read() for _ in range(50)))
    assert {user.name for user in got} == {"A"}
    assert len({id(user) for user in got}) == 50
    assert counted.count == 1
    await client.aclose()


async def test_a_miss_after_a_commit_does_not_join_an_older_read(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession]
) -> None:
    """Breaker open: a get that starts after a commit returned does not share a read that
    began before it; it waits for that read and reads again."""
    crud = make_crud(Settings(breaker_threshold=1, breaker_cooldown=60))
    client = client_for(free_port())
    async with maker() as db:
        await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="Old"))
    ident = await user_id(maker)

    async def read() -> str:
        async with maker() as db:
            return (await crud.get(db=db, redis=client, email="a@x.io")).name

    await read()  # the breaker is open from here on
    with PauseAfterSelect(engine, "users") as pause:
        first = asyncio.create_task(read())
        await pause.wait_selected()
        await rename(maker, ident, "New")
        second = asyncio.create_task(read())
        await asyncio.sleep(0)  # let it reach the single flight while the first read waits
        pause.resume()
        assert await first == "Old"  # it began before the commit
        assert await second == "New"
    await client.aclose()
