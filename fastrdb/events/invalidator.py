"""Session hooks that act on recorded changes once the root transaction ends.

``after_commit`` of the root transaction drops the stale keys before ``commit()`` returns
(an ``AsyncSession``'s commit awaits the asyncio client through SQLAlchemy's greenlet bridge);
the end of a root transaction that did not commit discards what was recorded. Savepoints change
nothing: what they recorded stays until the root transaction ends.

A root transaction whose ``commit()`` began but never confirmed (cancelled while COMMIT's reply
was in flight, connection lost during COMMIT) may have committed: its end invalidates anyway,
since dropping keys is always safe.

Nothing here raises for Redis trouble: the data is already durable, so an invalidation that
could not be delivered is kept on the client's health record and replayed, and until then that
process serves nothing from the cache.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from functools import partial
from typing import Any

from redis.exceptions import MaxConnectionsError
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from fastrdb._compat import greenlet_spawn, in_greenlet
from fastrdb._logging import log
from fastrdb.cache.health import ClientHealth
from fastrdb.cache.replicas import Wait
from fastrdb.cache.store import Caller, deliver_invalidation
from fastrdb.cache.wipe import list_tables, wipe_table
from fastrdb.events.bindings import CHANGES_KEY, Binding, binding_of, refreshers_of
from fastrdb.events.changes import Changes, Written
from fastrdb.keys import Namespace

__all__ = [
    "after_commit",
    "after_transaction_end",
    "before_commit",
    "delivered",
    "invalidate",
    "invalidate_now",
    "replay",
]

delivered: Counter[str] = Counter()
"""Invalidations delivered by this process, per table (read by ``FastRDB.stats()``)."""

_COMMITTING_KEY = "fastrdb.committing"


def before_commit(session: Session) -> None:
    if not session.in_nested_transaction():
        session.info[_COMMITTING_KEY] = True  # until after_commit says how it ended


def after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint was released: keep collecting until the root commits
    session.info.pop(_COMMITTING_KEY, None)
    changes: Changes | None = session.info.pop(CHANGES_KEY, None)
    if not changes:
        return
    binding = binding_of(session)
    if binding is not None:
        invalidate(binding, changes, session)


def after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return
    changes: Changes | None = session.info.pop(CHANGES_KEY, None)
    if not session.info.pop(_COMMITTING_KEY, False) or not changes:
        return  # rolled back: nothing became visible
    # commit() began and never confirmed: the database may hold the changes. (A flush that
    # failed inside commit() lands here too; dropping keys is always safe.)
    binding = binding_of(session)
    if binding is not None:
        log.info("cache_commit_unconfirmed", tables=sorted(changes.rows))
        changes.fills.clear()  # the values may never have committed: drop, never store
        invalidate(binding, changes, session, refresh=False)


def invalidate(
    binding: Binding, changes: Changes, session: Session, *, refresh: bool = True
) -> None:
    """Deliver ``changes``, and anything still pending, through ``binding``; then, in refresh
    mode, fill the written rows' keys again (unless ``refresh`` is False).

    Never raises for Redis trouble; a cancellation is re-raised once the changes are kept.
    """
    health = binding.health
    # Not gated by the breaker: Redis may be back for another process already (its breaker
    # closed first), serving what this commit made stale, and only this delivery stops it.
    # The breaker spares reads the timeout; a commit pays at most one bounded call.
    if binding.is_async and not in_greenlet():
        health.keep(changes)
        log.error("cache_invalidate_deferred", reason="async client outside the greenlet bridge")
        return
    kept = health.kept
    batch = changes
    if health.pending is not None:
        batch = _merged(health.pending, changes)
    if _deliver(binding.caller, binding.client, binding.namespace, health, batch):
        health.settle(kept)
        if refresh and binding.refresh and changes.written:
            _schedule_refresh(binding, session, changes.written)
    else:
        health.keep(changes)


def _schedule_refresh(binding: Binding, session: Session, written: list[Written]) -> None:
    """Fill the written rows' keys again, in a task of their own, through the lease protocol
    (each row is read in a new transaction after its lease is taken)."""
    bind = session.get_bind()
    sync_engine = bind.engine if isinstance(bind, Connection) else bind
    engine = AsyncEngine._retrieve_proxy_for_target(sync_engine)
    task = asyncio.get_running_loop().create_task(_refresh(engine, binding.client, written))
    binding.tasks.add(task)
    task.add_done_callback(binding.tasks.discard)


async def _refresh(engine: AsyncEngine, client: Any, written: list[Written]) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as db:
        for row in written:
            for refresher in refreshers_of(row.model):
                try:
                    await refresher.refresh_row(
                        db=db, redis=client, identity=row.identity, values=row.values
                    )
                except Exception:
                    log.exception("cache_refresh_error", model=row.model.__name__)


def _merged(pending: object, changes: Changes) -> Changes:
    assert isinstance(pending, Changes)
    batch = Changes()
    batch.merge(pending)
    batch.merge(changes)
    batch.own_tokens = changes.own_tokens
    batch.fills = changes.fills
    batch.filled = changes.filled  # the writer reads what became of its fills here
    return batch


def _deliver(
    call: Caller, client: Any, namespace: Namespace, health: ClientHealth, changes: Changes
) -> bool:
    tables = sorted(changes.rows)
    deadline = time.monotonic() + health.settings.redis_timeout
    pause = health.settings.lease_poll
    wait = Wait.of(health.settings)
    while True:
        try:
            dropped = deliver_invalidation(
                call,
                client,
                namespace,
                tables,
                partial(changes.plan, namespace=namespace),
                wait=wait,
            )
            dropped += _wipe(call, client, namespace, changes, wait)
            break
        except asyncio.CancelledError:
            health.keep(changes)
            raise
        except MaxConnectionsError:
            health.pool_waits += 1
            # The client's pool is full: back-pressure, not an outage. Wait a little for a
            # connection (dropping keys twice is harmless), then keep it for replay.
            if time.monotonic() >= deadline:
                health.overloads += 1
                log.warning("cache_invalidate_deferred", tables=tables, reason="pool full")
                return False
            call.pause(pause)
            pause = min(pause * 2, 0.05)
        except Exception as exc:  # whatever the client raised: keep, replay
            health.failed(exc, "invalidate")
            log.warning("cache_invalidate_failed", tables=tables, error=type(exc).__name__)
            return False
    health.succeeded()
    delivered.update(tables)
    log.debug("cache_invalidate", tables=tables, dropped=dropped)
    return True


def _wipe(
    call: Caller, client: Any, namespace: Namespace, changes: Changes, wait: Wait | None
) -> int:
    """Drop the tables kept whole (every table, for ``everything``): a scan of the keyspace
    restricted to their patterns, so a rare path, logged."""
    wiped = list_tables(call, client, namespace) if changes.everything else sorted(changes.whole)
    dropped = 0
    for table in wiped:
        result = wipe_table(call, client, namespace, table, wait=wait)
        log.info("cache_wipe", table=table, dropped=result.dropped, row_keys=result.row_keys)
        dropped += result.dropped
    return dropped


async def replay(client: Any, health: ClientHealth) -> None:
    """Try once more to deliver what ``client`` could not take before (asyncio clients)."""
    pending = health.pending
    if pending is None or not health.allow():
        return
    kept = health.kept
    batch = _merged(pending, Changes())
    if await _deliver_async(client, health, batch):
        health.settle(kept)
        log.info("cache_invalidate_replayed", tables=sorted(batch.rows))


async def invalidate_now(client: Any, health: ClientHealth, changes: Changes) -> bool:
    """Deliver ``changes``, and anything still pending, from asyncio code outside any commit
    (the invalidations an application asks for: ``FastRDB.invalidate``). Never raises for
    Redis trouble: what could not be delivered is kept and replayed, as after a commit, and
    until then this process serves nothing from that server's cache. True if delivered."""
    if not health.allow():
        health.keep(changes)
        return False
    kept = health.kept
    batch = changes if health.pending is None else _merged(health.pending, changes)
    if await _deliver_async(client, health, batch):
        health.settle(kept)
        return True
    health.keep(changes)
    return False


async def _deliver_async(client: Any, health: ClientHealth, changes: Changes) -> bool:
    call = Caller(True, health.settings.redis_timeout, health.direct)
    namespace = Namespace(health.settings.namespace)
    return bool(await greenlet_spawn(_deliver, call, client, namespace, health, changes))
