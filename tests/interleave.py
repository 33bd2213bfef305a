"""Force interleavings between a reader and a writer instead of hoping a race shows up.

``PauseAfterSelect`` hooks an async engine's ``after_cursor_execute``: the first SELECT from a
given table that runs while it is armed has its rows already read from the database, then it
waits (inside SQLAlchemy's greenlet, so other tasks run) until the test calls ``resume()``.
It can start disarmed and be armed from another hook (e.g. a session's ``after_commit``) to
pause a later statement. Await the paused task before leaving the ``with`` block.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from fastrdb._compat import await_in_greenlet
from fastrdb.cache import wire

Send = Callable[..., Awaitable[Any]]


@contextlib.contextmanager
def around_commands(client: Any, wrap: Callable[..., Awaitable[Any]]) -> Iterator[None]:
    """Route every command sent on the asyncio ``client`` through ``await wrap(send, *args)``
    (``args`` as sent: ``"GET", key``; ``send(*args)`` sends them), whichever way FastRDB
    sends it: the client's ``execute_command`` (every client method goes through it) or
    :func:`fastrdb.cache.wire.command`."""
    execute = client.execute_command
    shadowed = "execute_command" in vars(client)
    command = wire.command

    async def executed(*args: Any, **options: Any) -> Any:
        return await wrap(lambda *sent: execute(*sent, **options), *args)

    async def commanded(target: Any, *args: str | bytes | int) -> Any:
        if target is not client:
            return await command(target, *args)
        return await wrap(lambda *sent: command(target, *sent), *args)

    client.execute_command = executed
    wire.command = commanded  # type: ignore[assignment]
    try:
        yield
    finally:
        if shadowed:
            client.execute_command = execute
        else:
            del client.execute_command
        wire.command = command


class PauseAfterSelect:
    def __init__(self, engine: AsyncEngine, table: str, *, armed: bool = True) -> None:
        self._engine = engine.sync_engine
        self._table = table
        self._armed = armed
        self.selected = asyncio.Event()
        self._resume = asyncio.Event()
        self.selects = 0

    def __enter__(self) -> PauseAfterSelect:
        event.listen(self._engine, "after_cursor_execute", self._after_cursor_execute)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._resume.set()
        event.remove(self._engine, "after_cursor_execute", self._after_cursor_execute)

    def _after_cursor_execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = statement.lstrip().upper()
        if not text.startswith("SELECT") or self._table.upper() not in text:
            return
        self.selects += 1
        if self._armed:
            self._armed = False
            self.selected.set()
            await_in_greenlet(self._resume.wait())

    def arm(self) -> None:
        """Pause the next matching SELECT (for a pause that starts disarmed)."""
        self._armed = True

    async def wait_selected(self) -> None:
        async with asyncio.timeout(10):
            await self.selected.wait()

    def resume(self) -> None:
        self._resume.set()


class CountSelects:
    """Count SELECTs from a table on an engine (sync or async)."""

    def __init__(self, engine: Any, table: str) -> None:
        self._engine = getattr(engine, "sync_engine", engine)
        self._table = table.upper()
        self.count = 0

    def __enter__(self) -> CountSelects:
        event.listen(self._engine, "after_cursor_execute", self._after_cursor_execute)
        return self

    def __exit__(self, *exc_info: object) -> None:
        event.remove(self._engine, "after_cursor_execute", self._after_cursor_execute)

    def _after_cursor_execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = statement.lstrip().upper()
        if text.startswith("SELECT") and self._table in text:
            self.count += 1


class HoldGetReply:
    """Hold back, until ``release()``, the reply to the next GET of ``key`` on ``client``: Redis
    has answered (a miss, say), the reader has not seen it yet, and the test lets something
    happen in between (another reader's fill). ``held`` is set once Redis has answered."""

    def __init__(self, client: Any, key: str) -> None:
        self._client = client
        self._key = key
        self._armed = True
        self.held = asyncio.Event()
        self._released = asyncio.Event()

    def __enter__(self) -> HoldGetReply:
        async def get(send: Send, *args: Any) -> Any:
            reply = await send(*args)
            if self._armed and args[0] == "GET" and args[1] in (self._key, self._key.encode()):
                self._armed = False
                self.held.set()
                await self._released.wait()
            return reply

        self._routed = around_commands(self._client, get)
        self._routed.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._released.set()
        self._routed.__exit__(None, None, None)

    async def wait_held(self) -> None:
        async with asyncio.timeout(10):
            await self.held.wait()

    def release(self) -> None:
        self._released.set()
