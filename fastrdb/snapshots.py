"""Whether a read in a session may be cached — it cannot see the session's uncommitted writes
nor be older than the lease taken before it — and running it so, ending the transaction
FastRDB opened for it when its snapshot would outlive the read."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, TypeVar

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastrdb.events.bindings import CHANGES_KEY

__all__ = ["Read", "run_read", "statement_fresh"]

T = TypeVar("T")

Read: TypeAlias = Callable[[Session, Mapping[str, Any]], T]
"""A read in the session (synchronous: it runs in SQLAlchemy's greenlet, where the driver's
I/O is awaited for it), given its SELECT's execution options."""

_FRESH_ISOLATION = frozenset({"READ COMMITTED", "READ UNCOMMITTED", "AUTOCOMMIT"})
_POPULATE = {"populate_existing": True}


def _before_read(session: Session) -> tuple[bool, bool, Mapping[str, Any]]:
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
    if session.info.get(CHANGES_KEY) or session.new or session.dirty or session.deleted:
        return False, False, {}  # populate_existing would overwrite unflushed changes
    began = not session.in_transaction()
    fresh = statement_fresh(session.connection())
    return began or fresh, began and not fresh, _POPULATE


def _read_in(session: Session, read: Read[T]) -> tuple[T, bool, bool]:
    """``read`` with what :func:`_before_read` decided: (its result, cacheable, end)."""
    cacheable, end, options = _before_read(session)
    try:
        return read(session, options), cacheable, end
    except BaseException:
        if end:
            # Roll back, not commit: the driver may have dropped the connection (a cancelled
            # read on MariaDB), and the read's own exception is the one to raise.
            with contextlib.suppress(Exception):
                session.rollback()
        raise


async def run_read(db: AsyncSession, read: Read[T]) -> tuple[T, bool]:
    """Run ``read``; also return whether its result may be cached. The checks and the read
    take one pass through SQLAlchemy's greenlet bridge. ``read`` serializes what it loaded
    itself: the transaction FastRDB may end after it expires every instance
    (``expire_on_commit``)."""
    result, cacheable, end = await db.run_sync(_read_in, read)
    if end:
        await db.commit()
    return result, cacheable


def statement_fresh(connection: Connection) -> bool:
    """Whether each statement on ``connection`` reads the latest commit even inside an open
    transaction. SQLite: only while the driver has no transaction open. Others: under READ
    COMMITTED, not under REPEATABLE READ or SERIALIZABLE.

    Decided for this checkout, from the level in force on it: the connection's (session's,
    engine's) ``isolation_level`` execution option, else the level every pooled connection
    is reset to. Never remembered on the pooled connection: the next checkout may run under
    another engine's options."""
    dialect = connection.dialect
    if dialect.name == "sqlite":
        raw = connection.connection.driver_connection
        return getattr(raw, "in_transaction", True) is False
    level = connection.get_execution_options().get("isolation_level")
    if level is None:
        level = getattr(dialect, "_on_connect_isolation_level", None)
        level = level or dialect.default_isolation_level
    return str(level).upper() in _FRESH_ISOLATION
