"""Force interleavings between a reader and a writer instead of hoping a race shows up.

``PauseAfterSelect`` hooks an async engine's ``after_cursor_execute``: the first SELECT from a
given table that runs while it is armed has its rows already read from the database, then it
waits (inside SQLAlchemy's greenlet, so other tasks run) until the test calls ``resume()``.
It can start disarmed and be armed from another hook (e.g. a session's ``after_commit``) to
pause a later statement. Await the paused task before leaving the ``with`` block.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from fastrdb._compat import await_in_greenlet


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
        original = self._client.get

        async def get(name: Any, *args: Any, **kwargs: Any) -> Any:
            reply = await original(name, *args, **kwargs)
            if self._armed and name in (self._key, self._key.encode()):
                self._armed = False
                self.held.set()
                await self._released.wait()
            return reply

        self._client.get = get
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._released.set()
        del self._client.get

    async def wait_held(self) -> None:
        async with asyncio.timeout(10):
            await self.held.wait()

    def release(self) -> None:
        self._released.set()
