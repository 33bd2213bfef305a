"""Redis failures: CRUD keeps answering from the database, no invalidation is lost."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from fastrdb import FastRDB, Settings
from fastrdb.cache.health import health_of
from fastrdb.events import listen
from tests.conftest import Database
from tests.models import User, UserCreate, UserResponse, UserUpdate
from tests.processes import finish, start_python
from tests.servers import Proxy, RedisServer

SETTINGS = Settings(redis_timeout=0.2, breaker_threshold=2, breaker_cooldown=0.3)


def make_crud() -> FastRDB[User, UserCreate, UserUpdate, UserResponse]:
    return FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User,
        UserResponse,
        pattern="user:email:{email}",
        list_pattern="user:page:{page}:limit:{limit}",
        settings=SETTINGS,
    )


def client_for(port: int) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)


@pytest.mark.slow
async def test_every_method_works_while_redis_is_down(
    db: AsyncSession, server: RedisServer
) -> None:
    """Kill Redis: every CRUD method answers from the database; restart it: caching resumes."""
    crud = make_crud()
    client = client_for(server.port)
    await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A"))
    assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "A"
    server.kill()
    with capture_logs() as logs:
        assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "A"
        assert len(await crud.get_multi(db=db, redis=client)) == 1
        await crud.create(db=db, redis=client, obj_in=UserCreate(email="b@x.io", name="B"))
        updated = await crud.update(
            db=db, redis=client, obj_in=UserUpdate(name="A2"), email="a@x.io"
        )
        assert updated.name == "A2"
        assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "A2"
        await crud.delete(db=db, redis=client, email="b@x.io")
        assert await crud.count(db=db, redis=client) == 1
        await crud.create_multi(
            db=db, redis=client, instances=[UserCreate(email="c@x.io", name="C")]
        )
        for _ in range(20):
            await crud.get(db=db, redis=client, email="a@x.io")
    warnings = [entry for entry in logs if entry["event"] == "redis_unavailable"]
    assert len(warnings) == 1, "one warning per outage, not one per call"
    assert crud.stats()["redis_errors"] >= SETTINGS.breaker_threshold

    server.start()
    await asyncio.sleep(SETTINGS.breaker_cooldown + 0.05)
    assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "A2"
    assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "A2"
    assert await client.exists("user:email:a@x.io")
    assert crud.stats()["hits"] >= 1
    await client.aclose()


@pytest.mark.slow
async def test_a_commit_during_a_partition_is_invalidated_later(
    maker: async_sessionmaker[AsyncSession], server: RedisServer, proxy: Proxy
) -> None:
    """Cut the link to Redis, commit an ORM update (commit succeeds), restore the link: the next
    get returns the new value and the old one is never served again."""
    crud = make_crud()
    client = client_for(proxy.port)
    direct = client_for(server.port)
    writer = async_sessionmaker(maker.kw["bind"])
    handle = listen(writer, client, settings=SETTINGS)
    async with maker() as db:
        await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="Old"))
        assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "Old"
    await proxy.cut()
    async with writer() as session:
        user = await session.get_one(User, (await direct_id(maker)))
        user.name = "New"
        await session.commit()  # must not raise
    assert await direct.get("user:email:a@x.io") is not None, "the stale entry is still there"
    await proxy.restore()
    async with maker() as db:
        for _ in range(5):
            assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "New"
            await asyncio.sleep(0.1)
    raw = await direct.get("user:email:a@x.io")
    assert raw is None or b'"New"' in raw
    handle.remove()
    await client.aclose()
    await direct.aclose()


async def direct_id(maker: async_sessionmaker[AsyncSession]) -> int:
    from sqlalchemy import select

    async with maker() as db:
        return (await db.execute(select(User.id).where(User.email == "a@x.io"))).scalar_one()


@pytest.mark.slow
async def test_a_cancelled_commit_keeps_its_invalidation(
    maker: async_sessionmaker[AsyncSession], server: RedisServer
) -> None:
    """A task cancelled while its invalidation waits on Redis does not lose it."""
    patient = Settings(redis_timeout=10, breaker_threshold=2, breaker_cooldown=0.3)
    crud = make_crud()
    client = client_for(server.port)
    writer = async_sessionmaker(maker.kw["bind"])
    handle = listen(writer, client, settings=patient)  # first use: these settings apply
    async with maker() as db:
        await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="Old"))
        assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "Old"
    user_id = await direct_id(maker)
    pauser = client_for(server.port)
    await pauser.execute_command("CLIENT", "PAUSE", "10000", "WRITE")

    async def commit() -> None:
        async with writer() as session:
            (await session.get_one(User, user_id)).name = "New"
            await session.commit()

    task = asyncio.create_task(commit())
    # Wait until the row is committed: the invalidation is then stuck on paused Redis. (The
    # state is in the database, so it is polled; no in-process event can tell.)
    async with asyncio.timeout(5):
        while await committed_name(maker, user_id) != "New":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await pauser.execute_command("CLIENT", "UNPAUSE")
    async with maker() as db:
        assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "New"
        assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "New"
    assert health_of(client).pending is None, "the kept invalidation was replayed"
    handle.remove()
    for c in (client, pauser):
        await c.aclose()


async def committed_name(maker: async_sessionmaker[AsyncSession], user_id: int) -> str:
    from sqlalchemy import select

    async with maker() as db:
        return (await db.execute(select(User.name).where(User.id == user_id))).scalar_one()


def test_a_sync_worker_commits_while_redis_is_down(
    sync_engine: object, server: RedisServer
) -> None:
    """A sync Session's commit succeeds although its blocking client cannot reach Redis."""
    client = redis.Redis(port=server.port, socket_timeout=0.2, socket_connect_timeout=0.2)
    maker: sessionmaker[Session] = sessionmaker(sync_engine)  # type: ignore[call-overload]
    handle = listen(maker, client, settings=SETTINGS)
    server.kill()
    with maker() as session:
        session.add(
            User(id=None, email="w@x.io", name="W", bio=None, created_at=None, updated_at=None)
        )  # type: ignore[arg-type]
        session.commit()
    with maker() as session:
        assert session.query(User).count() == 1
    handle.remove()
    client.close()


WRITER = """
import sys

import redis
from sqlalchemy import create_engine, update
from sqlalchemy.orm import sessionmaker

from fastrdb import Settings
from fastrdb.events import listen
from tests.models import User

sessions = sessionmaker(create_engine(sys.argv[1]))
client = redis.Redis(port=int(sys.argv[2]), socket_timeout=0.5, socket_connect_timeout=0.5)
listen(sessions, client, settings=Settings(breaker_threshold=1, breaker_cooldown=600))
print("ready", flush=True)
for line in sys.stdin:
    with sessions() as session:
        session.execute(update(User).where(User.email == "a@x.io").values(name=line.strip()))
        session.commit()
    print("committed", flush=True)
"""


@pytest.mark.slow
async def test_a_commit_while_the_breaker_is_open_still_invalidates_for_other_processes(
    maker: async_sessionmaker[AsyncSession], database: Database, server: RedisServer
) -> None:
    """Redis is back, but a worker's breaker is still open: its next commit must still drop
    the key, or another process (whose breaker closed) serves the pre-commit value."""
    crud = make_crud()
    client = client_for(server.port)
    writer = await start_python(
        WRITER, database.sync_url, str(server.port), stdin=asyncio.subprocess.PIPE
    )
    assert writer.stdin is not None and writer.stdout is not None

    async def commit(name: str) -> None:
        assert writer.stdin is not None and writer.stdout is not None
        writer.stdin.write(f"{name}\n".encode())
        await writer.stdin.drain()
        async with asyncio.timeout(60):
            assert await writer.stdout.readline() == b"committed\n"

    async def name() -> str:
        async with maker() as db:
            return (await crud.get(db=db, redis=client, email="a@x.io")).name

    try:
        async with asyncio.timeout(60):
            assert await writer.stdout.readline() == b"ready\n"
        async with maker() as db:
            await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="Old"))
        server.kill()
        await commit("During")  # not delivered: the worker's breaker opens (for 10 minutes)
        server.start()  # empty, on the same port
        assert await name() == "During"  # this process never saw Redis fail: it fills again
        await commit("New")  # commit() returned
        assert await name() == "New"
    finally:
        writer.stdin.close()
        await finish(writer)
        await client.aclose()
