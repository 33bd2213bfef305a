"""Time limits on Redis calls for clients without socket timeouts (``Redis.from_url(url)``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import weakref
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio
from sqlalchemy.ext.asyncio import AsyncSession

from fastrdb import FastRDB, Settings
from fastrdb.cache import store, wire
from fastrdb.cache.deadline import Watchdog, watchdog
from fastrdb.cache.health import ClientHealth
from tests.conftest import REDIS_URL
from tests.models import User, UserCreate, UserResponse, UserUpdate
from tests.servers import free_port
from tests.test_crud import add_user


class Freezer:
    """A TCP proxy to the test Redis that can stop answering: after ``freeze()`` it keeps
    reading what the client sends and forwards no reply, like a server that hangs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if not (replies and self.frozen):
                    writer.write(data)
                    await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = urlsplit(REDIS_URL)
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        self._writers += [writer, up_writer]
        self._tasks += [
            asyncio.create_task(self._pipe(reader, up_writer, False)),
            asyncio.create_task(self._pipe(up_reader, writer, True)),
        ]

    async def __aenter__(self) -> Freezer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def hung() -> AsyncIterator[redis.asyncio.Redis]:
    """A client as users usually make it (no socket timeouts), connected, whose server then
    stops answering."""
    async with Freezer() as proxy:
        database = urlsplit(REDIS_URL).path.strip("/") or "0"
        client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/{database}")
        await client.get("fastrdb-test:warm")
        proxy.frozen = True
        yield client
        await client.aclose()


async def test_a_call_past_the_limit_is_a_miss_and_a_failure(
    hung: redis.asyncio.Redis,
) -> None:
    """A GET that gets no answer ends as MISS after the limit; the task is not left cancelled."""
    health = ClientHealth(Settings(redis_timeout=0.05))
    assert health.own_timeout
    raw = await asyncio.wait_for(store.get(hung, health, "k"), 30)  # a hang guard only
    assert raw is store.MISS
    assert health.errors == 1
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_a_stalled_event_loop_is_not_charged_to_the_call_in_flight() -> None:
    """The event loop is held up past a call's limit (as by a long garbage collection) while
    the reply is on its way: the call returns the reply; it is neither a miss nor a failure.
    With asyncio.timeout, or a watchdog that cancels whatever is past its deadline when it
    runs again, the reply is there but the call is cancelled."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    # The hit path as FastRDB takes it on this client: its GET sent by cache.wire.
    health = ClientHealth(Settings(redis_timeout=0.1), direct=wire.direct(client))
    assert health.own_timeout and health.direct
    try:
        await client.set("fastrdb-test:stall", "v")  # connected: the GET below is sent at once
        call = asyncio.create_task(store.get(client, health, "fastrdb-test:stall"))
        await asyncio.sleep(0)  # it sent its GET, and waits for the reply under the watchdog
        assert call in watchdog()._calls
        time.sleep(0.5)  # noqa: ASYNC251  # the loop is held up; the reply arrives meanwhile
        assert await call == b"v"
        assert health.errors == 0
    finally:
        await client.aclose()


async def test_a_call_gets_one_grace_however_often_the_loop_stalls(
    hung: redis.asyncio.Redis,
) -> None:
    """A loop held up again and again (blocking code in every turn) does not keep a call to a
    hung server waiting for ever: past its limit it gets one more tick, then it is a miss."""
    # By cache.wire, which lifts the client's own socket timeout: only the watchdog bounds it.
    health = ClientHealth(Settings(redis_timeout=0.05), direct=wire.direct(hung))
    assert health.direct
    stop = asyncio.Event()

    async def block() -> None:
        while not stop.is_set():
            time.sleep(0.06)  # noqa: ASYNC251  # past a tick, every turn of the loop
            await asyncio.sleep(0)

    blocker = asyncio.create_task(block())
    try:
        raw = await asyncio.wait_for(store.get(hung, health, "k"), 10)  # a hang guard only
    finally:
        stop.set()
        await blocker
    assert raw is store.MISS
    assert health.errors == 1


async def test_a_cancel_from_outside_propagates(hung: redis.asyncio.Redis) -> None:
    """Cancelling the caller during a watched call raises CancelledError, not a miss."""
    health = ClientHealth(Settings(redis_timeout=30))
    call = asyncio.create_task(store.get(hung, health, "k"))
    await asyncio.sleep(0.01)  # the GET is sent and waits for its reply
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert health.errors == 0


async def test_a_cancel_at_the_same_time_as_the_deadline_propagates() -> None:
    """When the watchdog and someone else both cancel, the cancellation is not swallowed."""
    dog = Watchdog(asyncio.get_running_loop())
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    outcome: list[str] = []

    async def watched() -> None:
        task = dog.enter(0.0)
        try:
            await never
        except asyncio.CancelledError:
            outcome.append("timeout" if dog.expired(task) else "cancelled")
            raise
        finally:
            dog.leave(task)

    call = asyncio.create_task(watched())
    await asyncio.sleep(0)  # it is waiting now
    dog._check()  # the deadline (0 s) has passed
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert outcome == ["cancelled"]


def test_a_closed_event_loop_is_not_kept_alive_by_its_watchdog() -> None:
    """The watchdog of a loop (one per asyncio.run, per test) goes with the loop."""

    async def watched_call() -> None:
        dog = watchdog()
        dog.leave(dog.enter(1.0))

    loop = asyncio.new_event_loop()
    loop.run_until_complete(watched_call())
    loop.close()
    dropped = weakref.ref(loop)
    del loop
    gc.collect()
    assert dropped() is None


async def test_get_answers_from_the_database_when_redis_hangs(
    db: AsyncSession, redis_client: redis.asyncio.Redis, hung: redis.asyncio.Redis
) -> None:
    """A hit path through a client without timeouts is bounded: a silent Redis means a read."""
    crud = FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:email:{email}", settings=Settings(redis_timeout=0.05)
    )
    await add_user(db, redis_client, "h@x.io", "H")  # default settings for the real Redis
    got = await asyncio.wait_for(crud.get(db=db, redis=hung, email="h@x.io"), 30)
    assert got.name == "H"
    assert crud.stats()["redis_errors"] >= 1
