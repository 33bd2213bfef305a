"""Whether a read in a session may be cached — it cannot see the session's uncommitted writes
nor be older than the lease taken before it — and running it so, ending the transaction
FastRDB opened for it when its snapshot would outlive the read."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from fastrdb.events.bindings import CHANGES_KEY

__all__ = ["run_read", "statement_fresh"]

T = TypeVar("T")

_FRESH_ISOLATION = frozenset({"READ COMMITTED", "READ UNCOMMITTED", "AUTOCOMMIT"})
_POPULATE = {"populate_existing": True}


async def _before_read(db: AsyncSession) -> tuple[bool, bool, Mapping[str, Any]]:
    """(may the read about to run be cached, should FastRDB end the transaction after it,
    the execution options of its SELECT).

    A read may be cached when it cannot see uncommitted writes of its own session and
    cannot be older than the lease taken just before it: it opens the transaction itself,
    or the isolation level in force for this checkout reads the latest commit on every
    statement. Under REPEATABLE READ a transaction that FastRDB opened for its read is
    committed right after, so the next read of the session gets a new snapshot (and can be
    cached) too. A cacheable read refreshes the identity map (``populate_existing``): what
    it returns is what its SELECT read, never an object the session held from before.
    """
    session = db.sync_session
    if session.info.get(CHANGES_KEY) or session.new or session.dirty or session.deleted:
        return False, False, {}  # populate_existing would overwrite unflushed changes
    began = not session.in_transaction()
    fresh = await statement_fresh(await db.connection())
    return began or fresh, began and not fresh, _POPULATE


async def run_read(
    db: AsyncSession, read: Callable[[Mapping[str, Any]], Awaitable[T]]
) -> tuple[T, bool]:
    """Run ``read`` (given its SELECT's execution options); also return whether its result
    may be cached. ``read`` serializes what it loaded itself: the transaction FastRDB may
    end after it expires every instance (``expire_on_commit``)."""
    cacheable, end, options = await _before_read(db)
    try:
        result = await read(options)
    except BaseException:
        if end:
            # Roll back, not commit: the driver may have dropped the connection (a cancelled
            # read on MariaDB), and the read's own exception is the one to raise.
            with contextlib.suppress(Exception):
                await db.rollback()
        raise
    if end:
        await db.commit()
    return result, cacheable


async def statement_fresh(connection: AsyncConnection) -> bool:
    """Whether each statement on ``connection`` reads the latest commit even inside an open
    transaction. SQLite: only while the driver has no transaction open. Others: under READ
    COMMITTED, not under REPEATABLE READ or SERIALIZABLE.

    Decided for this checkout, from the level in force on it: the connection's (session's,
    engine's) ``isolation_level`` execution option, else the level every pooled connection
    is reset to. Never remembered on the pooled connection: the next checkout may run under
    another engine's options."""
    if connection.dialect.name == "sqlite":
        raw = await connection.get_raw_connection()
        return getattr(raw.driver_connection, "in_transaction", True) is False
    return str(_isolation_level(connection)).upper() in _FRESH_ISOLATION


def _isolation_level(connection: AsyncConnection) -> str | None:
    """The isolation level SQLAlchemy put in force for this checkout of ``connection``."""
    level = (
        connection.sync_connection.get_execution_options().get("isolation_level")
        if connection.sync_connection is not None
        else None
    )
    if level is None:
        dialect = connection.dialect
        level = getattr(dialect, "_on_connect_isolation_level", None)
        level = level or dialect.default_isolation_level
    return str(level) if level is not None else None
