"""fastrdb.health(): the breaker, pending invalidations and the last error, per client."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import fastrdb
from fastrdb import FastRDB, RedisHealth, Settings
from fastrdb.events import listen
from tests.conftest import DATABASES
from tests.models import User, UserCreate, UserResponse, UserUpdate
from tests.servers import Proxy, RedisServer

ONE_DATABASE = pytest.mark.parametrize("database", DATABASES[:1], indirect=True)
"""The health is about Redis: one database is enough."""

SETTINGS = Settings(redis_timeout=2.0, breaker_threshold=2, breaker_cooldown=2.0)


def make_crud() -> FastRDB[User, UserCreate, UserUpdate, UserResponse]:
    return FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:email:{email}", settings=SETTINGS
    )


def client_for(port: int) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(
        host="127.0.0.1", port=port, socket_timeout=2.0, socket_connect_timeout=2.0
    )


@ONE_DATABASE
async def test_a_healthy_client_reports_closed_and_serving(
    db: AsyncSession, server: RedisServer
) -> None:
    """A client in use: breaker closed, serving, nothing pending, no error; the report is JSON
    and the no-argument form lists it."""
    client = client_for(server.port)
    crud = make_crud()
    before = time.time()
    await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A"))
    await crud.get(db=db, redis=client, email="a@x.io")
    report = fastrdb.health(client)
    assert isinstance(report, RedisHealth)
    assert report.server == f"redis://127.0.0.1:{server.port}/0"
    assert report.namespace == "fastrdb"
    assert report.serving
    assert report.breaker == "closed"
    assert before <= report.breaker_since <= time.time(), "closed since first use"
    assert report.consecutive_failures == 0
    assert report.errors == 0
    assert not report.bypassed
    assert report.pending == 0
    assert report.pending_scope is None
    assert report.pending_tables == ()
    assert report.pending_oldest_age is None
    assert report.last_error is None
    assert report.last_error_message is None
    assert report.last_error_at is None
    data = report.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["pending_tables"] == []
    assert report in fastrdb.health()
    await client.aclose()


@ONE_DATABASE
async def test_the_breaker_opens_turns_half_open_and_closes(
    db: AsyncSession, server: RedisServer
) -> None:
    """Kill Redis: the breaker opens (since the outage, failures counted, last error named),
    is half-open once the cooldown has passed, and closes when Redis answers again."""
    client = client_for(server.port)
    crud = make_crud()
    await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A"))
    server.kill()
    killed = time.time()
    for _ in range(SETTINGS.breaker_threshold):
        await crud.get(db=db, redis=client, email="a@x.io")
    report = fastrdb.health(client)
    assert report.breaker == "open"
    assert not report.serving
    assert report.breaker_since >= killed
    assert report.consecutive_failures == SETTINGS.breaker_threshold
    assert report.errors == SETTINGS.breaker_threshold
    assert report.last_error in {"ConnectionError", "TimeoutError"}
    assert isinstance(report.last_error_message, str)
    assert "a@x.io" not in json.dumps(report.as_dict()), "no key or value in the report"
    assert report.last_error_at is not None
    assert killed <= report.last_error_at <= time.time()
    opened = report.breaker_since

    await asyncio.sleep(SETTINGS.breaker_cooldown + 0.1)
    report = fastrdb.health(client)
    assert report.breaker == "half-open"
    assert report.breaker_since == opened

    await crud.get(db=db, redis=client, email="a@x.io")  # the probe fails: open again
    report = fastrdb.health(client)
    assert report.breaker == "open"
    assert report.breaker_since == opened, "the outage started when the breaker first opened"
    assert report.consecutive_failures == SETTINGS.breaker_threshold + 1

    server.start()
    recovered = time.time()
    deadline = recovered + 60
    while fastrdb.health(client).breaker != "closed":  # reads alone probe, once per cooldown
        await crud.get(db=db, redis=client, email="a@x.io")
        assert time.time() < deadline, "the breaker never closed"
        await asyncio.sleep(0.05)
    report = fastrdb.health(client)
    assert report.breaker == "closed"
    assert report.serving
    assert report.breaker_since >= recovered
    assert report.consecutive_failures == 0
    assert report.last_error is not None, "the last error is kept after recovery"
    await client.aclose()


@ONE_DATABASE
async def test_pending_invalidations_are_counted_and_aged(
    maker: async_sessionmaker[AsyncSession], server: RedisServer, proxy: Proxy
) -> None:
    """A commit Redis could not take: pending counts its row versions, names the table, ages;
    every client of the server reports it; it clears once replayed."""
    client = client_for(proxy.port)
    other = client_for(proxy.port)
    crud = make_crud()
    writer = async_sessionmaker(maker.kw["bind"])
    handle = listen(writer, client, settings=SETTINGS)
    async with maker() as db:
        await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A"))
    await proxy.cut()
    kept = time.time()
    async with writer() as session:
        user = (await session.scalars(select(User))).one()
        user.name = "B"
        await session.commit()
    report = fastrdb.health(client)
    assert not report.serving
    assert report.pending == 2, "the row before and after the change"
    assert report.pending_scope == "rows"
    assert report.pending_tables == ("users",)
    assert report.pending_oldest_age is not None
    assert 0 <= report.pending_oldest_age <= time.time() - kept + 0.01
    assert fastrdb.health(other).pending == 2, "pending belongs to the server"
    await asyncio.sleep(0.2)
    assert (fastrdb.health(client).pending_oldest_age or 0) >= 0.2

    await proxy.restore()
    deadline = time.monotonic() + 60
    while fastrdb.health(client).pending:  # the next CRUD call replays (or the one after)
        async with maker() as db:
            assert (await crud.get(db=db, redis=client, email="a@x.io")).name == "B"
        assert time.monotonic() < deadline, "never replayed"
        await asyncio.sleep(0.05)
    report = fastrdb.health(client)
    assert report.pending == 0
    assert report.pending_scope is None
    assert report.pending_oldest_age is None
    assert report.serving
    handle.remove()
    await client.aclose()
    await other.aclose()


@ONE_DATABASE
async def test_an_unsafe_memory_policy_reports_bypassed(db: AsyncSession) -> None:
    """Under allkeys-lru the cache is bypassed, and the report says so."""
    server = RedisServer()
    server.extra = ["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]
    server.start()
    client = client_for(server.port)
    try:
        await make_crud().count(db=db, redis=client)
        report = fastrdb.health(client)
        assert report.bypassed
        assert not report.serving
        assert report.breaker == "closed"
    finally:
        await client.aclose()
        server.kill()


def test_a_client_never_used_reports_a_closed_breaker() -> None:
    """Asking about a client FastRDB never used makes no call and registers nothing."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=1, db=4)
    report = fastrdb.health(client)
    assert report.server == "redis://127.0.0.1:1/4"
    assert report.breaker == "closed"
    assert report.serving
    assert report.pending == 0
    assert all(listed.server != report.server for listed in fastrdb.health())
