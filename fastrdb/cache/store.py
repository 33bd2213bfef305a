"""Every Redis operation FastRDB performs, behind one narrow interface.

Read-side operations are coroutines that never raise for Redis trouble (any exception the client
raises counts, not only redis-py's own): they record it in the client's health and answer as if
the cache were empty. A full connection pool is back-pressure, not trouble: the call waits a
little for a connection, then answers as if the cache were empty without counting a failure.
The invalidation is synchronous in form (it runs inside SQLAlchemy's ``after_commit`` hook) and
does raise, so that its caller can keep what was not delivered.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Literal, TypeVar, cast, overload

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError

from fastrdb._compat import await_in_greenlet
from fastrdb._types import Raw
from fastrdb.cache import wire
from fastrdb.cache.deadline import watchdog, within
from fastrdb.cache.health import REDIS_ERRORS, ClientHealth
from fastrdb.cache.near import forget
from fastrdb.cache.replicas import Wait, run_then_wait, wait_on_masters
from fastrdb.cache.scripts import DRAIN, DROP, FILL, INVALIDATE, LEASE, RELEASE
from fastrdb.keys import Namespace, deps_key, dropping_key, families_key, lease_key, tables_index
from fastrdb.schemes import Scheme, parse_members

__all__ = [
    "MISS",
    "REDIS_ERRORS",
    "Caller",
    "InvalidationPlan",
    "Miss",
    "Republished",
    "Sweep",
    "acquire",
    "deliver_invalidation",
    "fill",
    "get",
    "is_cluster",
    "peek",
    "release",
]

_T = TypeVar("_T")


class Miss(enum.Enum):
    """The type of :data:`MISS`."""

    MISS = enum.auto()


MISS: Final = Miss.MISS
"""The cache had no usable value (absent, or Redis could not be asked)."""


_cluster_classes: dict[type, bool] = {}


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client (either kind). Remembered per class:
    redis-py's cluster classes are protocols, and ``isinstance`` against them takes ~3 µs
    (every miss asks, to lease)."""
    kind = type(client)
    known = _cluster_classes.get(kind)
    if known is None:
        known = _cluster_classes[kind] = isinstance(client, RedisCluster | AsyncRedisCluster)
    return known


async def _bounded(health: ClientHealth, call: Callable[[], Awaitable[_T]]) -> _T:
    """``call()``, within ``redis_timeout`` when the client does not bound its calls itself
    (past it: ``TimeoutError``, as ``asyncio.timeout`` would raise, but with no timer per call;
    see :mod:`fastrdb.cache.deadline`)."""
    if not health.own_timeout:
        return await call()
    return await within(call(), health.settings.redis_timeout)


async def _guarded(
    health: ClientHealth, operation: str, call: Callable[[], Awaitable[_T]], fallback: _T
) -> _T:
    if not health.allow():
        return fallback
    try:
        result = await _bounded(health, call)
    except MaxConnectionsError:
        return await _when_pool_frees(health, operation, call, fallback)
    except Exception as exc:  # every way a client fails is a Redis failure
        health.failed(exc, operation)
        return fallback
    health.succeeded()
    return result


async def _when_pool_frees(
    health: ClientHealth, operation: str, call: Callable[[], Awaitable[_T]], fallback: _T
) -> _T:
    """The client's pool has no free connection: retry within ``redis_timeout``, then give up
    with ``fallback``. Neither counts as a failure, so the breaker stays closed."""
    health.pool_waits += 1
    deadline = time.monotonic() + health.settings.redis_timeout
    pause = health.settings.lease_poll
    while time.monotonic() < deadline:
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)
        try:
            result = await _bounded(health, call)
        except MaxConnectionsError:
            continue
        except Exception as exc:
            health.failed(exc, operation)
            return fallback
        health.succeeded()
        return result
    health.overloads += 1
    return fallback


async def get(client: Any, health: ClientHealth, key: str) -> Raw | Miss:
    """The value under ``key``, or MISS. The hit path: one round trip.

    The same guard as :func:`_guarded` (and the bound of :func:`~fastrdb.cache.deadline.within`),
    written out so that a hit creates no closure and no coroutine of its own and, while no call
    has failed (``health.failures`` is 0: the breaker is closed), makes no call on ``health``."""
    if health.failures and not health.allow():
        return MISS
    raw: Raw | None
    try:
        if not health.own_timeout:
            raw = await client.get(key)
        else:  # what _bounded does
            dog = watchdog()
            task = dog.enter(health.settings.redis_timeout)
            try:
                raw = await (wire.command(client, "GET", key) if health.direct else client.get(key))
            except asyncio.CancelledError:
                if dog.expired(task):
                    raise TimeoutError from None
                raise
            finally:
                dog.leave(task)
    except MaxConnectionsError:
        raw = await _when_pool_frees(health, "get", partial(client.get, key), None)
        return MISS if raw is None else raw
    except Exception as exc:  # every way a client fails is a Redis failure
        health.failed(exc, "get")
        return MISS
    if health.failures:
        health.succeeded()
    return MISS if raw is None else raw


async def peek(client: Any, health: ClientHealth, key: str) -> tuple[Raw | None, bool] | None:
    """The value under ``key`` and whether its lease is held; None when Redis can't answer."""

    async def call() -> tuple[Raw | None, bool] | None:
        value, lease = await client.mget(key, lease_key(key))
        return value, lease is not None

    return await _guarded(health, "peek", call, None)


@overload
async def acquire(
    client: Any,
    health: ClientHealth,
    key: str,
    token: str,
    *,
    schemes_key: str,
    schemes: Sequence[Scheme],
    registries: Sequence[str] = (),
    family: str = "",
    unless_filled: Literal[False] = False,
) -> bool | None: ...


@overload
async def acquire(
    client: Any,
    health: ClientHealth,
    key: str,
    token: str,
    *,
    schemes_key: str,
    schemes: Sequence[Scheme],
    registries: Sequence[str] = (),
    family: str = "",
    unless_filled: bool,
) -> bool | Raw | None: ...


async def acquire(
    client: Any,
    health: ClientHealth,
    key: str,
    token: str,
    *,
    schemes_key: str,
    schemes: Sequence[Scheme],
    registries: Sequence[str] = (),
    family: str = "",
    unless_filled: bool = False,
) -> bool | Raw | None:
    """Take the fill lease of ``key``: True if taken, False if held, None if Redis can't answer.

    Before the lease is taken the patterns behind ``key`` are published (and the table named
    in the namespace's index of tables, for ``fastrdb stats``; and ``family``, the model's
    inheritance hierarchy if it spans tables, in the namespace's set of them, for capture), so
    a listener that reads them after its commit knows to drop this lease. After it, ``key``
    joins the given registries, so an invalidation that reads a registry before the key joined
    deletes the lease this fill depends on.

    ``unless_filled`` (a reader after a miss): if ``key`` holds a value by now, return that
    value instead and take nothing: a reader whose GET came just before another reader's fill
    must not read the database again for it.
    """
    members = [member for scheme in schemes for member in scheme.members()]
    ttl_ms = int(health.settings.lease_ttl * 1000)
    index, table = tables_index(schemes_key)
    families = families_key(schemes_key)
    check = "1" if unless_filled else "0"

    async def sequential() -> bool | Raw:
        pipe = client.pipeline(transaction=False)  # one round trip to the nodes concerned
        pipe.sadd(index, table)
        if members:
            pipe.sadd(schemes_key, *members)
        if family:
            pipe.sadd(families, family)
        await pipe.execute()
        # The key and its lease share a slot: one script takes the lease or returns the value.
        reply = await LEASE.run_async(client, (key, lease_key(key)), (token, ttl_ms, check))
        if not isinstance(reply, int):
            return cast(Raw, reply)
        for registry in registries:
            await client.sadd(registry, key)
        return bool(reply)

    async def scripted() -> bool | Raw:
        keys = (key, lease_key(key), schemes_key, index, families, *registries)
        args: tuple[str | int, ...] = (token, ttl_ms, check, table, len(members), *members)
        args += (family,)
        reply = await LEASE.run_async(client, keys, args, health.direct)
        return bool(reply) if isinstance(reply, int) else cast(Raw, reply)

    # On a cluster the keys live in different slots: separate calls, in this order.
    return await _guarded(health, "acquire", sequential if is_cluster(client) else scripted, None)


async def fill(
    client: Any, health: ClientHealth, key: str, token: str, payload: str, exp: int
) -> bool:
    """Store ``payload`` under ``key`` if the lease ``token`` still holds; True if stored."""

    async def call() -> bool:
        reply = await FILL.run_async(
            client, (key, lease_key(key)), (token, payload, exp), health.direct
        )
        return bool(reply)

    return await _guarded(health, "fill", call, False)


async def release(client: Any, health: ClientHealth, key: str, token: str) -> None:
    """Give back the lease ``token`` on ``key`` without filling."""

    async def call() -> None:
        await RELEASE.run_async(client, (lease_key(key),), (token,), health.direct)

    await _guarded(health, "release", call, None)


class Caller:
    """Turns what a client method returns into its reply, from synchronous code.

    For a blocking client that is the reply itself; for an asyncio client it is a coroutine,
    awaited through SQLAlchemy's greenlet bridge within the configured timeout.
    """

    __slots__ = ("_timeout", "direct", "is_async")

    def __init__(self, is_async: bool, timeout: float, direct: bool = False) -> None:
        self.is_async = is_async
        self._timeout = timeout
        self.direct = direct
        """Whether the client's commands go by :func:`fastrdb.cache.wire.command`."""

    def __call__(self, reply: Any, extra: float = 0.0) -> Any:
        """The reply; ``extra`` seconds are added to the bound (a call that waits on purpose)."""
        if not self.is_async:
            return reply
        return await_in_greenlet(within(reply, self._timeout + extra))

    def pause(self, seconds: float) -> None:
        """Sleep: through the event loop for an asyncio client, blocking otherwise."""
        if self.is_async:
            await_in_greenlet(asyncio.sleep(seconds))
        else:
            time.sleep(seconds)


@dataclass(slots=True)
class Sweep:
    """What of one table an invalidation could not name key by key and must find by a scan
    (:func:`fastrdb.cache.wipe.sweep`): the keys of these row patterns, and whether its
    narrowed pages too."""

    patterns: dict[str, None] = field(default_factory=dict)
    narrowed: bool = False


@dataclass(slots=True)
class InvalidationPlan:
    """The keys one invalidation drops."""

    row_keys: list[str] = field(default_factory=list)
    own_tokens: list[str] = field(default_factory=list)
    """Per row key, the token of a lease the committing writer holds itself, or ''."""
    registries: list[str] = field(default_factory=list)
    fills: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    """The committing writer's write-through: row key (one it holds the lease of) → value and
    expiry, stored in the same round trip as the drops, while that lease still holds."""
    filled: dict[str, bool] = field(default_factory=dict)
    """What became of each of ``fills`` the delivery tried (True: stored); a fill it did not
    try (a cluster, a failure) is absent."""
    sweeps: dict[str, Sweep] = field(default_factory=dict)
    """Per table, what :func:`deliver_invalidation` leaves to a sweep (its caller runs it
    after the drop)."""


SchemeCache = dict[str, tuple[list[Raw], list[Scheme]]]
"""Per table: the members of its published pattern set when read, and the patterns."""

_scheme_caches: weakref.WeakKeyDictionary[Any, SchemeCache] = weakref.WeakKeyDictionary()


def _read_schemes(
    call: Caller, client: Any, namespace: Namespace, tables: Sequence[str]
) -> SchemeCache:
    pipe = client.pipeline(transaction=False)
    for table in tables:
        pipe.smembers(namespace.schemes(table))
    read: SchemeCache = {}
    for table, members in zip(tables, call(pipe.execute()), strict=True):
        read[table] = (list(members), parse_members(members))
    return read


class Republished(Exception):
    """A set :func:`deliver_invalidation` was asked to ``verify`` no longer holds the members
    the caller planned with: nothing was dropped; read the set again and plan again."""


def deliver_invalidation(
    call: Caller,
    client: Any,
    namespace: Namespace,
    tables: Sequence[str],
    plan: Callable[[Mapping[str, list[Scheme]]], InvalidationPlan],
    *,
    wait: Wait | None = None,
    verify: Mapping[str, Collection[Raw]] | None = None,
) -> int:
    """Plan with the patterns published for ``tables`` and drop the keys. Raises what Redis
    raises, and :class:`~fastrdb.cache.replicas.NotReplicated` when ``wait`` asks for more
    replicas than took the drop in time (the keys are gone from the master all the same).

    On one Redis this is a single round trip: the patterns are cached per client, and the
    script refuses to run (and the patterns are read again) unless each pattern set holds
    exactly the members they were planned from (checked by content, so a set emptied by
    FLUSHDB or a restart and rebuilt with other patterns is read again). The plan's ``fills``
    go in the same script, after the drops (recorded in its ``filled``); a cluster leaves them
    to the writer. With ``wait``, the same pipeline then waits for the replicas (see
    :mod:`fastrdb.cache.replicas`).

    ``verify`` (one Redis only): other sets, key → the members the caller planned with,
    checked by content in the same script; if one differs (or a pattern set changed) nothing
    is dropped and :class:`Republished` is raised, for the caller to read and plan again.
    """
    if is_cluster(client):
        schemes = _read_schemes(call, client, namespace, tables)
        todo = plan({t: s for t, (_, s) in schemes.items()})
        dropped, written = _deliver_per_slot(call, client, todo)
        forget(tables, todo.row_keys)
        if wait is not None:
            wait_on_masters(call, client, written, wait)
        return dropped
    cache = _scheme_caches.get(client)
    if cache is None:
        cache = _scheme_caches[client] = {}
    for _ in range(5):
        missing = [table for table in tables if table not in cache]
        if missing:
            cache.update(_read_schemes(call, client, namespace, missing))
        todo = plan({table: cache[table][1] for table in tables})
        checked = dict(verify or {})
        keys = [namespace.schemes(t) for t in tables] + list(checked)
        keys += todo.row_keys + todo.registries
        args: list[Raw | int | str] = [len(tables) + len(checked), len(todo.row_keys)]
        for table in tables:
            members = cache[table][0]
            args += [len(members), *members]
        for expected in checked.values():
            args += [len(expected), *expected]
        args += todo.own_tokens
        own = zip(todo.row_keys, todo.own_tokens, strict=True)
        fills = [
            (index, *todo.fills[key])
            for index, (key, token) in enumerate(own, 1)
            if token and key in todo.fills
        ]
        args.append(len(fills))
        for fill in fills:
            args += fill
        if wait is None:
            reply, acked = INVALIDATE.run(call, client, keys, args, call.direct), 0
        else:
            reply, acked = run_then_wait(
                call, client, INVALIDATE, keys, args, wait, namespace.wait()
            )
        dropped = int(reply[0])
        if dropped >= 0:
            for (index, _, _), landed in zip(fills, reply[1:], strict=True):
                todo.filled[todo.row_keys[index - 1]] = bool(landed)
            forget(tables, todo.row_keys)  # this process' near entries, before commit() returns
            if wait is not None:
                wait.require(acked, "redis")
            return dropped
        for table in tables:
            cache.pop(table, None)  # the published patterns changed meanwhile: read them again
        if checked:
            raise Republished(", ".join(checked))
    raise RuntimeError("the published key patterns kept changing during the invalidation")


def _deliver_per_slot(call: Caller, client: Any, todo: InvalidationPlan) -> tuple[int, list[str]]:
    """The same invalidation on a Redis Cluster, where one command touches one slot: how many
    keys it dropped, and the keys it wrote to (whose masters a wait for replicas covers).

    Registries are drained first, then every key is dropped with its lease. Draining takes the
    members out of a registry (so a key that joins it later, leased after this commit and
    reading fresh data, is kept for the next invalidation) and notes them, in the registry's
    slot, as being dropped by this invalidation until it has dropped them. An invalidation that
    drains meanwhile drops those too: otherwise it would find the registry empty and its commit
    could return while a page it made stale is still served, before the first one drops it.
    Whatever an invalidation dropped is no longer noted afterwards, its own members and those
    it found noted by another (dropped now, key and lease: nothing read before can land), so
    the members of one that died before dropping them are not dropped again by every later one.
    """
    token = secrets.token_hex(8)
    drained = [deps_key(key) for key in todo.row_keys] + todo.registries
    taken: list[list[str]] = []
    noted: list[list[Raw]] = []  # per registry, every 'token|member' it had noted
    doomed: dict[str, None] = {}  # every member to drop, in order, once
    for registry in drained:
        mine, dropping = DRAIN.run(call, client, (registry, dropping_key(registry)), (token,))
        taken.append([decode_text(member) for member in mine])
        noted.append(dropping)
        for entry in dropping:
            doomed[decode_text(entry).partition("|")[2]] = None
    dropped = 0
    written = [registry for registry, mine in zip(drained, taken, strict=True) if mine]
    for key, own in zip(todo.row_keys, todo.own_tokens, strict=True):
        dropped += int(DROP.run(call, client, (key, lease_key(key)), (own,)))
        written.append(key)
    for name in doomed:
        dropped += int(DROP.run(call, client, (name, lease_key(name)), ("",)))
        written.append(name)
    pipe = client.pipeline(transaction=False)
    for registry, entries in zip(drained, noted, strict=True):
        if entries:  # dropped: no longer being dropped, by this invalidation or another
            pipe.srem(dropping_key(registry), *entries)
    call(pipe.execute())
    return dropped, written


def decode_text(raw: Raw) -> str:
    """A Redis reply as text, whatever the client's ``decode_responses``."""
    return raw.decode() if isinstance(raw, bytes) else raw
