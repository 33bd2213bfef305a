"""The short way FastRDB sends its hot commands (fastrdb.cache.wire): the same replies and
errors as the client's own methods, and a pooled connection left as it was found, even when
the call is cut off."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio
from redis.exceptions import MaxConnectionsError, NoScriptError, ResponseError

from fastrdb import Settings
from fastrdb.cache import wire
from fastrdb.cache.deadline import within
from fastrdb.cache.health import health_of
from fastrdb.cache.scripts import LuaScript
from tests.conftest import REDIS_URL
from tests.servers import RedisServer


def test_only_a_plain_pooled_resp2_utf8_asyncio_client_goes_direct() -> None:
    assert wire.direct(redis.asyncio.Redis.from_url(REDIS_URL))
    assert wire.direct(redis.asyncio.Redis(decode_responses=True))
    assert not wire.direct(redis.asyncio.Redis(single_connection_client=True))
    assert not wire.direct(redis.asyncio.Redis(protocol=3))
    assert not wire.direct(redis.asyncio.Redis(encoding="latin-1"))
    assert not wire.direct(redis.Redis())
    assert not wire.direct(redis.asyncio.RedisCluster(host="127.0.0.1", port=1))


def test_a_client_that_bounds_its_own_calls_keeps_its_own_path() -> None:
    """Its socket timeouts are the bound FastRDB relies on: they are not lifted."""
    bounded = redis.asyncio.Redis(socket_timeout=0.1, socket_connect_timeout=0.1)
    assert not health_of(bounded, Settings(redis_timeout=0.25)).direct
    assert health_of(redis.asyncio.Redis.from_url(REDIS_URL)).direct


async def test_replies_and_errors_are_the_clients() -> None:
    for client in (
        redis.asyncio.Redis.from_url(REDIS_URL),
        redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True),
    ):
        await client.set("wire:k", "é")
        await client.delete("wire:absent")
        assert await wire.command(client, "GET", "wire:k") == await client.get("wire:k")
        assert await wire.command(client, "GET", "wire:absent") is None
        await client.lpush("wire:list", "x")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await wire.command(client, "GET", "wire:list")
        with pytest.raises(NoScriptError):
            await wire.command(client, "EVALSHA", "0" * 40, 0)
        # a script the server has not seen: EVALSHA's NOSCRIPT, then EVAL
        unseen = LuaScript("release")
        unseen.__dict__["source"] = f"return 7 -- {uuid.uuid4()}"
        assert await unseen.run_async(client, ("wire:lease",), ("t",), direct=True) == 7
        await client.delete("wire:k", "wire:list")
        pool = client.connection_pool
        assert len(pool._in_use_connections) == 0  # every connection went back
        assert all(c.socket_timeout == 5 for c in pool._available_connections)
        await client.aclose()


async def test_a_full_pool_raises_as_the_client_does() -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL, max_connections=1)
    held = await client.connection_pool.get_connection()
    try:
        with pytest.raises(MaxConnectionsError):
            await wire.command(client, "GET", "wire:k")
    finally:
        await client.connection_pool.release(held)
    assert await wire.command(client, "GET", "wire:k") is None
    await client.aclose()


async def test_a_call_cut_off_before_its_reply_leaves_no_reply_behind(
    server: RedisServer,
) -> None:
    """The watchdog cancels a GET that Redis has not answered; the connection it was sent
    on goes back to the pool closed, so the next command on it cannot read the late reply
    as its own (one connection: the next command must reuse it)."""
    client = redis.asyncio.Redis(port=server.port, max_connections=1, socket_timeout=5)
    pauser = redis.asyncio.Redis(port=server.port)
    await client.set("wire:a", "A")
    await client.set("wire:b", "B")
    await pauser.execute_command("CLIENT", "PAUSE", "10000", "ALL")
    try:
        with pytest.raises(TimeoutError):
            await within(wire.command(client, "GET", "wire:a"), 0.2)
    finally:
        await pauser.execute_command("CLIENT", "UNPAUSE")
    (connection,) = client.connection_pool._available_connections
    assert connection.socket_timeout == 5
    assert await wire.command(client, "GET", "wire:b") == b"B"
    assert await wire.command(client, "GET", "wire:a") == b"A"
    await asyncio.gather(client.aclose(), pauser.aclose())
