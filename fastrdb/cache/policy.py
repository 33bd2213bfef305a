"""The Redis server's memory policy, checked once per client: FastRDB's bookkeeping must stay.

Invalidation reads bookkeeping keys that carry no TTL: the patterns published per table
(``fastrdb:schemes:*``), the registries of list keys and ``{key}:deps``. Under an ``allkeys-*``
policy Redis may evict them while the entries they lead to survive, and a missing bookkeeping
key reads as "nothing to drop": a commit would leave those entries stale. So, at a client's
first use:

- ``noeviction``, or a ``volatile-*`` policy (only keys with a TTL are evicted: entries and
  leases, never the bookkeeping): the cache is used;
- an ``allkeys-*`` policy: an error is logged once and the cache is bypassed for that client
  (reads go to the database and fill nothing; invalidations are still sent);
- unknown (the ACL refuses both ``INFO`` and ``CONFIG GET``): a warning is logged once and the
  cache is used, on the operator's word that the policy is one of the supported ones.

A Redis failure during the check leaves it to be made again at the next call. Concurrent first
calls wait for one check.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ResponseError

from fastrdb._logging import log
from fastrdb.cache.health import ClientHealth

__all__ = ["SAFE_POLICIES", "check_memory_policy", "is_safe_policy"]

SAFE_POLICIES = frozenset(
    {"noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"}
)


def is_safe_policy(policy: str) -> bool:
    """Whether Redis keeps keys without a TTL under ``policy`` (``volatile-*`` or no eviction)."""
    return policy in SAFE_POLICIES or policy.startswith("volatile-")


_checking: weakref.WeakKeyDictionary[
    ClientHealth, tuple[asyncio.AbstractEventLoop, asyncio.Event]
] = weakref.WeakKeyDictionary()


async def check_memory_policy(client: Any, health: ClientHealth) -> None:
    """Read the server's ``maxmemory-policy`` and mark ``health`` unsafe under ``allkeys-*``;
    if this loop is checking already, wait for that check."""
    loop = asyncio.get_running_loop()
    running = _checking.get(health)
    if running is not None and running[0] is loop:
        await running[1].wait()
        return
    done = asyncio.Event()
    _checking[health] = (loop, done)
    try:
        await _check(client, health)
    finally:
        if _checking.get(health) == (loop, done):
            del _checking[health]
        done.set()


async def _check(client: Any, health: ClientHealth) -> None:
    if not health.allow():
        return
    try:
        async with asyncio.timeout(health.settings.redis_timeout):
            policies = await _read_policies(client)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # every way a client fails is a Redis failure
        health.failed(exc, "memory_policy")
        return
    health.succeeded()
    health.policy_checked = True
    if policies is None:
        log.warning(
            "redis_memory_policy_unknown",
            reason="INFO and CONFIG GET refused",
            required="noeviction or volatile-*",
        )
        return
    unsafe = sorted(policy for policy in policies if not is_safe_policy(policy))
    if unsafe:
        health.safe = False
        log.error(
            "redis_memory_policy_unsafe",
            policy=",".join(unsafe),
            required="noeviction or volatile-*",
            effect="cache bypassed: reads go to the database",
        )


async def _read_policies(client: Any) -> set[str] | None:
    """The memory policies of the server (of every node a cluster client asks), or None when
    the server refuses to tell."""
    try:
        return _values(await client.info("memory"), "maxmemory_policy")
    except ResponseError:  # NoPermissionError, or INFO renamed away
        pass
    try:
        return _values(await client.config_get("maxmemory-policy"), "maxmemory-policy")
    except ResponseError:
        return None


def _values(reply: Any, name: str) -> set[str] | None:
    """The values of ``name`` in a reply: one server's mapping, or a mapping per node."""
    found: set[str] = set()
    if isinstance(reply, Mapping):
        for key, value in reply.items():
            if _text(key) == name:
                found.add(_text(value))
            elif isinstance(value, Mapping):
                found |= _values(value, name) or set()
    return found or None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
