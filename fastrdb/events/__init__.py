"""Keep the cache coherent with every ORM write: ``listen(target, redis)``.

After ``listen()``, every session made from ``target`` records what its flushes and bulk ORM
statements change, and drops the matching cache keys once its root transaction commits, before
``commit()`` returns. It works in processes that never construct a ``FastRDB`` instance: the
key patterns in use are read from Redis, where ``FastRDB`` publishes them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from fastrdb._types import AnyRedis
from fastrdb.errors import ConfigurationError
from fastrdb.events.bindings import (
    BINDING_KEY,
    Binding,
    Slot,
    bind_class,
    unbind_class,
)
from fastrdb.events.hooks import install_hooks
from fastrdb.settings import Settings

__all__ = ["ListenHandle", "listen"]

_ASYNC_CLIENTS = (redis.asyncio.Redis, AsyncRedisCluster)
_SYNC_CLIENTS = (redis.Redis, RedisCluster)


class ListenHandle:
    """What :func:`listen` returns; :meth:`remove` stops the invalidation for its target."""

    __slots__ = ("_binding", "_slot", "_target")

    def __init__(self, target: Any, binding: Binding, slot: Slot | None) -> None:
        self._target = target
        self._binding = binding
        self._slot = slot

    @property
    def active(self) -> bool:
        return self._binding.active

    async def refreshed(self) -> None:
        """Wait for the refreshes started by commits so far (``on_write="refresh"``)."""
        while self._binding.tasks:
            await asyncio.gather(*self._binding.tasks)

    def remove(self) -> None:
        """Stop watching the target's sessions (those already open stop too, until a later
        ``listen()`` on the same target covers them again). Idempotent."""
        binding = self._binding
        binding.active = False
        if isinstance(self._target, type):
            unbind_class(self._target, binding)
        elif self._slot is not None and self._slot.binding is binding:
            self._slot.binding = None


def _is_async_target(target: Any) -> bool:
    if isinstance(target, async_sessionmaker | AsyncSession):
        return True
    if isinstance(target, sessionmaker | Session):
        return False
    if isinstance(target, type) and issubclass(target, AsyncSession):
        return True
    if isinstance(target, type) and issubclass(target, Session):
        return False
    raise TypeError(
        "listen() takes an async_sessionmaker, a sessionmaker, an AsyncSession or Session "
        f"(class or instance), not {target!r}"
    )


def _info_of(target: Any) -> dict[str, Any]:
    """The info dict that sessions of ``target`` start with (or the session's own)."""
    if isinstance(target, sessionmaker | async_sessionmaker):
        info: dict[str, Any] = dict(target.kw.get("info") or {})
        target.kw["info"] = info
        return info
    if isinstance(target, AsyncSession):
        return target.sync_session.info
    assert isinstance(target, Session)
    return target.info


def listen(
    target: Any,
    redis: AnyRedis,
    *,
    settings: Settings | None = None,
    on_write: Literal["invalidate", "refresh"] = "invalidate",
) -> ListenHandle:
    """Invalidate the cache after every commit of a session made from ``target``.

    ``target``: an ``async_sessionmaker`` or ``AsyncSession`` (class or instance) with a
    ``redis.asyncio`` client, or a ``sessionmaker`` or ``Session`` (class or instance) with a
    blocking ``redis.Redis`` client; cluster clients of the matching kind work too. Sessions that
    a sessionmaker made before its first ``listen()`` are not covered. Calling it again for the
    same target (also after ``remove()``) replaces its client, for the sessions already open
    too: a target never has two listeners, and no session of it goes silent while one is in
    place.

    ``on_write="refresh"`` (asyncio targets): after the invalidation, each inserted or updated
    row is read again in a new transaction and its single-row keys filled through the lease
    protocol, by the ``FastRDB`` instances of this process, so hot rows never go cold.
    """
    if on_write not in ("invalidate", "refresh"):
        raise ConfigurationError("on_write", f"must be 'invalidate' or 'refresh', not {on_write!r}")
    is_async = _is_async_target(target)
    if on_write == "refresh" and not is_async:
        raise ConfigurationError("on_write", "'refresh' needs an asyncio target (AsyncSession)")
    expected = _ASYNC_CLIENTS if is_async else _SYNC_CLIENTS
    if not isinstance(redis, expected):
        kind = "a redis.asyncio client" if is_async else "a blocking redis.Redis client"
        raise TypeError(
            f"listen(): {type(target).__name__} sessions need {kind}, "
            f"got {type(redis).__module__}.{type(redis).__name__}"
        )
    install_hooks()
    binding = Binding(
        redis, is_async=is_async, settings=settings or Settings(), refresh=on_write == "refresh"
    )
    slot: Slot | None = None
    if isinstance(target, type):
        previous = bind_class(target, binding)
    else:
        info = _info_of(target)
        held = info.get(BINDING_KEY)
        if isinstance(held, Slot):
            slot = held  # sessions made since the first listen() share it: they follow
            previous = slot.binding
            slot.binding = binding
        else:
            previous = held
            slot = info[BINDING_KEY] = Slot(binding)
    if previous is not None:
        previous.active = False
    return ListenHandle(target, binding, slot)
