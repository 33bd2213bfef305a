"""Settings(wait_replicas=N): an invalidation counts only once N replicas have it, so a failover
cannot bring back an entry a commit dropped.

Replication is held back on purpose, never hoped for: on one Redis the replica follows its
master through a proxy the test pauses and cuts; on a cluster the replica is frozen (SIGSTOP)
and its link killed (CLIENT KILL TYPE replica), so the master has the drop and the replica
never will. Then the master dies and the replica takes over.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from sqlalchemy import create_engine, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from fastrdb import ConfigurationError, FastRDB, Settings
from fastrdb.cache.health import health_of
from fastrdb.events import listen
from tests.models import DataclassBase, User, UserCreate, UserResponse, UserUpdate
from tests.servers import Proxy, RedisClusterServers, RedisServer, valkey_server_binary
from tests.test_races import History

WAIT = Settings(
    wait_replicas=1,
    wait_timeout=1.0,
    redis_timeout=2.0,
    breaker_threshold=3,
    breaker_cooldown=0.2,
)
NO_WAIT = Settings(redis_timeout=2.0, breaker_threshold=3, breaker_cooldown=0.2)
KEY = "user:email:a@x.io"


def make_crud(settings: Settings) -> FastRDB[User, UserCreate, UserUpdate, UserResponse]:
    return FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:email:{email}", settings=settings
    )


async def eventually(check: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def rename(maker: async_sessionmaker[AsyncSession], email: str, name: str) -> None:
    """Plain ORM code in a listened session: the commit drops the row's keys."""
    async with maker() as session:
        user = (await session.execute(select(User).where(User.email == email))).scalar_one()
        user.name = name
        await session.commit()


async def served(
    crud: FastRDB[User, UserCreate, UserUpdate, UserResponse], db: AsyncSession, client: Any
) -> tuple[str, bool]:
    """The name ``get`` returns, and whether the cache served it."""
    hits = crud.stats()["hits"]
    got = await crud.get(db=db, redis=client, email="a@x.io")
    return got.name, crud.stats()["hits"] > hits


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wait_replicas", -1),
        ("wait_replicas", True),
        ("wait_replicas", 1.0),
        ("wait_timeout", 0),
        ("wait_timeout", 0.0005),
        ("wait_timeout", math.nan),
        ("wait_timeout", math.inf),
        ("wait_timeout", "1"),
    ],
)
def test_settings_refuse_bad_wait_values(field: str, value: object) -> None:
    """A wrong wait_replicas or wait_timeout is a ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError) as caught:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert caught.value.argument == field


async def test_a_socket_timeout_shorter_than_the_wait_is_refused() -> None:
    """A client whose socket_timeout would cut every WAIT short is refused when first bound,
    naming wait_timeout (every invalidation would fail and the cache stay bypassed)."""
    maker = async_sessionmaker()
    client = redis.asyncio.Redis(port=6379, socket_timeout=0.5)
    with pytest.raises(ConfigurationError) as caught:
        listen(maker, client, settings=WAIT)
    assert caught.value.argument == "wait_timeout"
    patient = redis.asyncio.Redis(port=6379, socket_timeout=5)
    listen(maker, patient, settings=WAIT).remove()
    await client.aclose()
    await patient.aclose()


# -- one Redis and its replica ---------------------------------------------------------------


class Pair:
    """A master and a replica that follows it through ``link`` (a proxy the test pauses and
    cuts); applications reach the master through ``fronts`` (a stand-in for the address a
    failover moves: DNS, a virtual IP, a proxy)."""

    def __init__(self, binary: str | None = None) -> None:
        self.master = RedisServer(binary=binary)
        self.replica = RedisServer(binary=binary)
        self.spare = RedisServer(binary=binary)
        self.link: Proxy | None = None
        self.fronts: list[Proxy] = []

    async def start(self, fronts: int) -> Pair:
        self.master.start()
        self.link = await Proxy(self.master.port).start()
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self.link.port)]
        self.replica.start()
        self.fronts = [await Proxy(self.master.port).start() for _ in range(fronts)]
        await synced(self.replica.port)
        return self

    def client(self, front: int = 0) -> redis.asyncio.Redis:
        return redis.asyncio.Redis(port=self.fronts[front].port, socket_timeout=5)

    async def lose_master(self) -> None:
        """What the replica has not got by now it never gets: its link is cut, the master
        killed, the replica promoted and the fronts moved to it."""
        assert self.link is not None
        await self.link.cut()
        self.master.kill()
        promoted = redis.asyncio.Redis(port=self.replica.port)
        await promoted.replicaof("NO", "ONE")
        await promoted.aclose()
        for front in self.fronts:
            await front.cut()
            front.upstream_port = self.replica.port
            await front.restore()

    async def caught_up(self) -> None:
        """Wait until the replica acknowledged everything the master took so far."""
        master = redis.asyncio.Redis(port=self.master.port, single_connection_client=True)
        await master.set("test:mark", 1)
        assert await master.wait(1, 10_000) == 1
        await master.aclose()

    async def add_replica(self) -> None:
        """Give the promoted replica a replica of its own."""
        self.spare.extra = ["--replicaof", "127.0.0.1", str(self.replica.port)]
        self.spare.start()
        await synced(self.spare.port)

    async def stop(self) -> None:
        for proxy in [*self.fronts, *([self.link] if self.link else [])]:
            await proxy.cut()
        for server in (self.master, self.replica, self.spare):
            server.kill()


async def synced(replica_port: int) -> None:
    """Wait until the replica on ``replica_port`` finished its sync with its master."""
    replica = redis.asyncio.Redis(port=replica_port)

    async def up() -> bool:
        info = await replica.info("replication")
        return bool(info.get("master_link_status") == "up")

    await eventually(up, what="the replica's sync")
    await replica.aclose()


async def replica_value(port: int, key: str) -> bytes | None:
    replica = redis.asyncio.Redis(port=port)
    try:
        value = await replica.get(key)
        return None if value is None else bytes(value)
    finally:
        await replica.aclose()


SERVERS = [
    pytest.param(None, id="redis"),
    pytest.param(
        valkey_server_binary(),
        id="valkey",
        marks=pytest.mark.skipif(valkey_server_binary() is None, reason="no valkey-server"),
    ),
]


@pytest.fixture(params=SERVERS)
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """A master and its replica: the machine's redis-server, and a valkey-server if there
    is one (newer servers let a connection's WAIT pass at once when it wrote nothing)."""
    servers = Pair(request.param)
    yield servers
    await servers.stop()


async def cached_everywhere(
    crud: FastRDB[User, UserCreate, UserUpdate, UserResponse],
    maker: async_sessionmaker[AsyncSession],
    client: Any,
    replica_port: int,
    name: str,
) -> None:
    """Create a@x.io named ``name`` and wait until its cached entry reached the replica."""
    async with maker() as db:
        await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name=name))
        assert await served(crud, db, client) == (name, True)

    async def replicated() -> bool:
        raw = await replica_value(replica_port, KEY)
        return raw is not None and f'"{name}"'.encode() in raw

    await eventually(replicated, what="the entry on the replica")


async def test_an_unreplicated_invalidation_is_kept_and_the_cache_bypassed(
    pair: Pair, maker: async_sessionmaker[AsyncSession], engine: Any
) -> None:
    """The replica takes nothing: commit() returns (after wait_timeout), the invalidation is
    kept, reads go to the database; once the replica is back, a replay it acknowledges
    settles it and caching resumes."""
    await pair.start(fronts=1)
    client = pair.client()
    crud = make_crud(WAIT)
    writer = async_sessionmaker(engine)
    handle = listen(writer, client, settings=WAIT)
    await cached_everywhere(crud, maker, client, pair.replica.port, "old")
    health = health_of(client)
    assert health.pending is None

    assert pair.link is not None
    await pair.caught_up()
    pair.link.pause()
    started = time.monotonic()
    await rename(writer, "a@x.io", "new")
    assert time.monotonic() - started >= WAIT.wait_timeout * 0.9
    assert health.pending is not None, "fewer replicas than asked: not delivered"
    async with maker() as db:
        for _ in range(3):
            assert await served(crud, db, client) == ("new", False)

    pair.link.resume()
    await asyncio.sleep(WAIT.breaker_cooldown)

    async def cached_again() -> bool:
        async with maker() as db:
            name, hit = await served(crud, db, client)
        assert name == "new"
        return hit

    await eventually(cached_again, what="caching to resume")
    assert health.pending is None
    handle.remove()
    await client.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("settings", [NO_WAIT, WAIT], ids=["without-wait", "with-wait"])
async def test_failover_of_one_redis(
    pair: Pair, maker: async_sessionmaker[AsyncSession], engine: Any, settings: Settings
) -> None:
    """A commit's drop reaches the master but not its replica; the master dies and the replica
    is promoted behind the same address. Without wait_replicas, the old value comes back
    from the cache (the documented loss); with it, never, and caching resumes once the new
    master has a replica again."""
    await pair.start(fronts=1)
    client = pair.client()
    crud = make_crud(settings)
    writer = async_sessionmaker(engine)
    handle = listen(writer, client, settings=settings)
    await cached_everywhere(crud, maker, client, pair.replica.port, "old")

    assert pair.link is not None
    await pair.caught_up()
    pair.link.pause()
    await rename(writer, "a@x.io", "new")
    assert await replica_value(pair.master.port, KEY) is None
    await pair.lose_master()
    assert b'"old"' in (await replica_value(pair.replica.port, KEY) or b""), "the drop was lost"

    async with maker() as db:
        if not settings.wait_replicas:

            async def from_cache() -> bool:
                name, hit = await served(crud, db, client)
                if hit:
                    assert name == "old", "the promoted replica serves what the commit dropped"
                return hit

            await eventually(from_cache, what="a cached read")
        else:
            for _ in range(3):
                assert await served(crud, db, client) == ("new", False)
            await pair.add_replica()

            async def cached_again() -> bool:
                name, hit = await served(crud, db, client)
                assert name == "new"
                return hit

            await eventually(cached_again, what="caching to resume")
    handle.remove()
    await client.aclose()


@pytest.mark.slow
async def test_a_drop_that_found_nothing_waits_for_the_drops_before_it(
    pair: Pair, maker: async_sessionmaker[AsyncSession], engine: Any
) -> None:
    """Two processes (here: two clients at two addresses) commit the same row while the
    replica is behind. The second invalidation deletes nothing (the first one already did),
    yet its WAIT covers the first drop: it is not acknowledged either, so after the failover
    the second process serves nothing stale. (Redis 7.0 advances a connection's WAIT offset
    on every command; newer servers, e.g. Valkey 8, only on its own writes: there the marker
    written before each WAIT is what makes this hold.)"""
    await pair.start(fronts=2)
    first, second = pair.client(0), pair.client(1)
    crud = make_crud(WAIT)
    writer_1, writer_2 = async_sessionmaker(engine), async_sessionmaker(engine)
    handles = [listen(writer_1, first, settings=WAIT), listen(writer_2, second, settings=WAIT)]
    await cached_everywhere(crud, maker, first, pair.replica.port, "old")
    async with maker() as db:
        # `second` has a connection now, that wrote nothing: its WAIT alone would pass at once
        assert await served(crud, db, second) == ("old", True)

    assert pair.link is not None
    await pair.caught_up()
    pair.link.pause()  # the replica stays connected, and is sent nothing more
    await rename(writer_1, "a@x.io", "one")
    assert health_of(first).pending is not None
    await rename(writer_2, "a@x.io", "two")
    assert health_of(second).pending is not None, "the second drop waited for the first one"

    await pair.lose_master()
    async with maker() as db:
        for _ in range(3):
            assert await served(crud, db, second) == ("two", False)
    for handle in handles:
        handle.remove()
    await first.aclose()
    await second.aclose()


# -- Redis Cluster: 3 masters, 3 replicas ----------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(masters=3, replicas=1, node_timeout_ms=1000).start()
    yield servers
    servers.stop()


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A database of its own: the cluster tests are about Redis, one database is enough."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'replicas.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(DataclassBase.metadata.create_all)
    yield engine
    await engine.dispose()


def shard_of(
    cluster: RedisClusterServers, client: Any, key: str
) -> tuple[RedisServer, RedisServer]:
    """The master holding ``key`` and its replica."""
    port = client.get_node_from_key(key).port
    info = redis.Redis(port=port).info("replication")
    replica_port = info["slave0"]["port"]
    by_port = {server.port: server for server in cluster.servers}
    return by_port[port], by_port[replica_port]


async def replicated(replica: RedisServer, key: str, needle: bytes) -> None:
    """Wait until the cluster replica holds ``key`` with ``needle`` in its value."""
    reader = redis.asyncio.Redis(port=replica.port, single_connection_client=True)
    await reader.execute_command("READONLY")

    async def holds() -> bool:
        return needle in (await reader.get(key) or b"")

    await eventually(holds, what="the entry on the replica")
    await reader.aclose()


def isolate(master: RedisServer, replica: RedisServer) -> None:
    """From now on the replica gets nothing from its master: frozen, and its link killed
    (bytes already sent would still be read after a mere freeze)."""
    replica.pause()
    redis.Redis(port=master.port).client_kill_filter(_type="replica")


async def rejoin(master: RedisServer, promoted: RedisServer) -> None:
    """Restart the dead master: it rejoins as a replica of the node that took its slots."""
    master.start()
    node = redis.asyncio.Redis(port=promoted.port)

    async def online() -> bool:
        info = await node.info("replication")
        return bool(info.get("connected_slaves")) and info["slave0"]["state"] == "online"

    await eventually(online, what="the old master to rejoin as a replica")
    await node.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("settings", [NO_WAIT, WAIT], ids=["without-wait", "with-wait"])
async def test_cluster_failover_after_an_unreplicated_drop(
    cluster: RedisClusterServers,
    sqlite_engine: AsyncEngine,
    settings: Settings,
) -> None:
    """The master holding a cached row's key takes a commit's drop that its replica never
    gets; the master is killed and the replica takes over. Without wait_replicas, the old
    value is served from the cache afterwards; with it, never, and caching resumes once the
    shard has a replica again."""
    maker = async_sessionmaker(sqlite_engine, expire_on_commit=False)
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    writer = async_sessionmaker(sqlite_engine)
    handle = listen(writer, client, settings=settings)
    crud = make_crud(settings)
    async with maker() as db:
        await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="old"))
        assert await served(crud, db, client) == ("old", True)
    master, replica = shard_of(cluster, client, KEY)
    await replicated(replica, KEY, b'"old"')

    isolate(master, replica)
    await rename(writer, "a@x.io", "new")
    assert await replica_value(master.port, KEY) is None
    assert (health_of(client).pending is not None) == bool(settings.wait_replicas)
    master.kill()
    replica.resume()
    await asyncio.to_thread(cluster.wait_failed_over, master.port)
    assert b'"old"' in (await replica_value(replica.port, KEY) or b""), "the drop was lost"

    async with maker() as db:
        if not settings.wait_replicas:

            async def from_cache() -> bool:
                name, hit = await served(crud, db, client)
                if hit:
                    assert name == "old", "the promoted replica serves what the commit dropped"
                return hit

            await eventually(from_cache, what="a cached read")
        else:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert await served(crud, db, client) == ("new", False)
            await rejoin(master, replica)

            async def cached_again() -> bool:
                name, hit = await served(crud, db, client)
                assert name == "new"
                return hit

            await eventually(cached_again, what="caching to resume")
    handle.remove()
    await client.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("settings", [NO_WAIT, WAIT], ids=["without-wait", "with-wait"])
async def test_cluster_run_across_a_lossy_failover(
    cluster: RedisClusterServers, sqlite_engine: AsyncEngine, settings: Settings
) -> None:
    """Writers (FastRDB update and plain ORM) and readers run while a shard's replica falls
    behind, its master is killed and the replica takes over, then the old master rejoins.
    Without wait_replicas the history shows stale reads after the failover (the documented
    loss); with it, no read that started after a commit returned sees an older value, and
    caching resumes at the end."""
    maker = async_sessionmaker(sqlite_engine, expire_on_commit=False)
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    writer = async_sessionmaker(sqlite_engine)
    handle = listen(writer, client, settings=settings)
    crud = make_crud(settings)
    emails = [f"u{i}@x.io" for i in range(8)]
    async with maker() as db:
        for email in emails:
            await crud.create(db=db, redis=client, obj_in=UserCreate(email=email, name="0"))
    watched = f"user:email:{emails[0]}"  # written only by chaos(), while the replica is cut off
    master, replica = shard_of(cluster, client, watched)
    history = History({email: [] for email in emails})
    rng = random.Random(16)
    writing = asyncio.Event()
    writing.set()
    stop = asyncio.Event()

    async def write(mine: list[str]) -> None:
        value = 0
        while not stop.is_set():
            await writing.wait()
            value += 1
            email = rng.choice(mine)
            if rng.random() < 0.5:
                async with maker() as db:
                    await crud.update(
                        db=db, redis=client, obj_in=UserUpdate(name=str(value)), email=email
                    )
            else:
                await rename(writer, email, str(value))
            history.committed[email].append((time.monotonic(), value))
            await asyncio.sleep(rng.random() * 0.02)

    async def read() -> None:
        while not stop.is_set():
            email = rng.choice(emails)
            started = time.monotonic()
            async with maker() as db:
                got = await crud.get(db=db, redis=client, email=email)
            history.reads.append((email, started, int(got.name)))

    async def chaos() -> None:
        await asyncio.sleep(1.0)
        async with maker() as db:
            await crud.get(db=db, redis=client, email=emails[0])
        await replicated(replica, watched, b'"0"')
        isolate(master, replica)
        await rename(writer, emails[0], "1")
        history.committed[emails[0]].append((time.monotonic(), 1))
        await asyncio.sleep(0.5)  # the writers' commits that the replica never gets either
        writing.clear()  # (commits during the failover would drop the lost keys again)
        master.kill()
        replica.resume()
        await asyncio.to_thread(cluster.wait_failed_over, master.port)
        await asyncio.sleep(1.0)
        writing.set()
        await rejoin(master, replica)
        await asyncio.sleep(1.0)
        stop.set()

    async with asyncio.TaskGroup() as group:
        group.create_task(write(emails[1::2]))
        group.create_task(write(emails[2::2]))
        for _ in range(6):
            group.create_task(read())
        group.create_task(chaos())

    assert sum(len(v) for v in history.committed.values()) > 20
    assert len(history.reads) > 100
    if not settings.wait_replicas:
        assert history.violations(), "the promoted replica served what a commit dropped"
        handle.remove()
        await client.aclose()
        return
    assert history.violations() == []
    await asyncio.sleep(WAIT.breaker_cooldown + 0.1)
    async with maker() as db:
        rows = {u.email: u.name for u in (await db.execute(select(User))).scalars()}

        async def cached_again() -> bool:
            hits = crud.stats()["hits"]
            for email in emails:
                assert (await crud.get(db=db, redis=client, email=email)).name == rows[email]
            return crud.stats()["hits"] - hits == len(emails)

        await eventually(cached_again, what="caching to resume")
    handle.remove()
    await client.aclose()


# -- blocking clients (a worker's sync Session) ----------------------------------------------


def sync_rename(maker: sessionmaker[Session], email: str, name: str) -> None:
    with maker() as session:
        user = session.execute(select(User).where(User.email == email)).scalar_one()
        user.name = name
        session.commit()


async def test_a_sync_worker_waits_for_the_replica(
    pair: Pair,
    maker: async_sessionmaker[AsyncSession],
    sync_maker: sessionmaker[Session],
) -> None:
    """A worker's sync Session with a blocking client: delivered once the replica acknowledged,
    kept while it cannot."""
    await pair.start(fronts=1)
    reader = pair.client()
    await cached_everywhere(make_crud(WAIT), maker, reader, pair.replica.port, "old")
    client = redis.Redis(port=pair.fronts[0].port, socket_timeout=5)
    handle = listen(sync_maker, client, settings=WAIT)
    health = health_of(client)
    # in a thread: the replica's link is a proxy running on this event loop
    await asyncio.to_thread(sync_rename, sync_maker, "a@x.io", "one")
    assert (health.pending, health.errors) == (None, 0)
    assert await replica_value(pair.replica.port, KEY) is None

    await pair.caught_up()
    assert pair.link is not None
    pair.link.pause()
    await asyncio.to_thread(sync_rename, sync_maker, "a@x.io", "two")
    assert health.pending is not None
    handle.remove()
    client.close()
    await reader.aclose()


@pytest.mark.slow
async def test_a_sync_worker_waits_on_every_master_of_a_cluster(
    cluster: RedisClusterServers, sqlite_engine: AsyncEngine
) -> None:
    """The blocking cluster client waits on the master holding each dropped key, on that
    master's own connection: acknowledged while the replica follows, kept once it cannot."""
    maker = async_sessionmaker(sqlite_engine, expire_on_commit=False)
    reader = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    async with maker() as db:
        await make_crud(WAIT).create(
            db=db, redis=reader, obj_in=UserCreate(email="a@x.io", name="old")
        )
    sync_engine = create_engine(str(sqlite_engine.url).replace("+aiosqlite", ""))
    worker = sessionmaker(sync_engine)
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    handle = listen(worker, client, settings=WAIT)
    health = health_of(client)
    await asyncio.to_thread(sync_rename, worker, "a@x.io", "one")
    assert (health.pending, health.errors) == (None, 0)

    master, replica = shard_of(cluster, client, KEY)
    isolate(master, replica)
    await asyncio.to_thread(sync_rename, worker, "a@x.io", "two")
    assert health.pending is not None
    replica.resume()
    handle.remove()
    client.close()
    sync_engine.dispose()
    await reader.aclose()
