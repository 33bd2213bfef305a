"""Read-through with fill leases: hit, or lease → load → fill, with single-flight waiting.

It takes callables for decoding and loading and knows nothing of databases. The protocol:

- a hit is one GET (:func:`fastrdb.cache.store.get`) and a validation (a value that fails it
  is :func:`corrupt`: a miss), or a near-cache lookup (:func:`near_hit`); the caller runs them
  in its own coroutine, the only one a hit runs besides the GET's;
- on a miss the reader takes the key's lease (a token, with a TTL) and loads, unless the key
  holds a value by then (another reader's fill landed since its GET): then it serves that, so a
  storm of misses costs one load. The fill lands only while that same token still holds the
  lease, and every invalidation deletes the lease, so a load that began before a commit can
  never be cached after that commit's invalidation;
- readers that find the lease held wait a little for the holder's fill; past ``lease_wait``
  they load for themselves and do not fill;
- while Redis can't be used (breaker open, invalidations pending), concurrent misses of one key
  in this process share one load (:func:`coalesced`).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from fastrdb._logging import log
from fastrdb._types import Raw
from fastrdb.cache import store
from fastrdb.cache.health import ClientHealth
from fastrdb.cache.near import NearCache
from fastrdb.schemes import Scheme

__all__ = [
    "Entry",
    "Loaded",
    "Stats",
    "coalesced",
    "corrupt",
    "key_ref",
    "near_hit",
    "read_through",
]

T = TypeVar("T")


@dataclass(slots=True)
class Stats:
    """Counts of what a cache did, readable in-process."""

    hits: int = 0
    misses: int = 0
    fills: int = 0
    fills_refused: int = 0
    """Fills that lost their lease (an invalidation came first) or were not attempted because
    the read could be older than the lease."""
    lease_waits: int = 0
    bypasses: int = 0
    """Reads served from the database without the cache (unflushed writes, Redis down,
    invalidations waiting to be replayed)."""
    corrupt: int = 0
    """Cached values that failed validation and were treated as a miss."""
    negative_hits: int = 0
    """Hits on a negative entry: a ``get`` answered "no row" without the database."""
    near_hits: int = 0
    """Reads served from the near cache, without Redis."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Loaded(Generic[T]):
    """What a load produced: the value to return, the text to cache (None: don't cache), and
    its lifetime when it differs from the entry's (a negative entry)."""

    value: T
    payload: str | None
    exp: int | None = None


@dataclass(slots=True)
class Entry:
    """A cache key and what must be published and registered before it is filled."""

    key: str
    schemes_key: str
    schemes: Sequence[Scheme]
    registries: Sequence[str] = ()
    family: str = ""
    """The model's inheritance hierarchy as published for capture ('' for one table)."""


def key_ref(key: str) -> str:
    """A short, stable reference to a key for logs (keys may hold personal data)."""
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


def near_hit(near: NearCache, key: str, decode: Callable[[Raw], T], stats: Stats) -> T | store.Miss:
    """``key`` served from the ``near`` cache, or MISS (absent, or corrupt: then dropped)."""
    raw = near.lookup(key)
    if raw is None:
        return store.MISS
    try:
        value = decode(raw)
    except ValueError:
        near.discard(key)
        return store.MISS
    stats.near_hits += 1
    return value


def corrupt(key: str, stats: Stats, context: dict[str, str]) -> None:
    """Note that the value a ``GET`` of ``key`` returned failed validation: a miss (it will be
    leased and replaced), counted and logged."""
    stats.corrupt += 1
    log.warning("cache_corrupt", key=key_ref(key), **context)


async def read_through(
    client: Any,
    health: ClientHealth,
    entry: Entry,
    *,
    decode: Callable[[Raw], T],
    load: Callable[[], Awaitable[Loaded[T]]],
    exp: int,
    stats: Stats,
    context: dict[str, str],
) -> T:
    """The miss path, after a ``GET`` found nothing: lease, load, fill — or wait for the
    reader that holds the lease."""
    stats.misses += 1
    log.debug("cache_miss", key=key_ref(entry.key), **context)
    settings = health.settings
    deadline: float | None = None
    unless_filled = True
    while True:
        token = secrets.token_hex(8)
        taken = await store.acquire(
            client,
            health,
            entry.key,
            token,
            schemes_key=entry.schemes_key,
            schemes=entry.schemes,
            registries=entry.registries,
            family=entry.family,
            unless_filled=unless_filled,
        )
        if taken is None:
            stats.bypasses += 1
            return (await load()).value
        if not isinstance(taken, bool):
            # Another reader's fill landed since this reader's GET: serve it.
            try:
                value = decode(taken)
            except ValueError:
                unless_filled = False  # a corrupt entry: lease it, to replace it
                continue
            stats.hits += 1
            return value
        if taken:
            return await _load_and_fill(client, health, entry, token, load, exp, stats, context)
        stats.lease_waits += 1
        if deadline is None:
            deadline = time.monotonic() + settings.lease_wait
        while True:
            await asyncio.sleep(settings.lease_poll)
            seen = await store.peek(client, health, entry.key)
            if seen is None:
                stats.bypasses += 1
                return (await load()).value
            value_raw, held = seen
            if value_raw is not None:
                try:
                    value = decode(value_raw)
                except ValueError:
                    break
                stats.hits += 1
                return value
            if not held or time.monotonic() >= deadline:
                break
        if time.monotonic() >= deadline:
            # The holder is slow or gone: answer from the database, leave the fill to it.
            stats.fills_refused += 1
            return (await load()).value


async def _load_and_fill(
    client: Any,
    health: ClientHealth,
    entry: Entry,
    token: str,
    load: Callable[[], Awaitable[Loaded[T]]],
    exp: int,
    stats: Stats,
    context: dict[str, str],
) -> T:
    try:
        loaded = await load()
    except BaseException:
        await store.release(client, health, entry.key, token)
        raise
    if loaded.payload is None:
        stats.fills_refused += 1
        await store.release(client, health, entry.key, token)
        return loaded.value
    if await store.fill(client, health, entry.key, token, loaded.payload, loaded.exp or exp):
        stats.fills += 1
        log.debug("cache_fill", key=key_ref(entry.key), **context)
    else:
        stats.fills_refused += 1
        log.debug("cache_fill_refused", key=key_ref(entry.key), **context)
    return loaded.value


class _Flight:
    """One load of a key that callers share."""

    __slots__ = ("done", "payload")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.payload: str | None = None


class _Flights:
    """Per event loop: per key, the load that callers may still join (it has not started) and
    the one under way."""

    __slots__ = ("open", "running")

    def __init__(self) -> None:
        self.open: dict[str, _Flight] = {}
        self.running: dict[str, _Flight] = {}


_flights: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flights] = (
    weakref.WeakKeyDictionary()
)


async def coalesced(
    key: str, decode: Callable[[Raw], T], load: Callable[[], Awaitable[Loaded[T]]]
) -> T:
    """Load ``key`` once for every caller of this process that asks while no load of it has
    started yet (per-process single flight, for when Redis can't coordinate readers).

    A caller only joins a load that starts after it asked, so what it gets is never older than
    its call; loads of one key run one at a time. A load whose result may not be cached
    (``payload`` None: the read could be older than its start, or saw uncommitted writes) is not
    shared: its joiners load for themselves, as do they when it fails. Joiners get their own
    object, decoded from the payload.
    """
    loop = asyncio.get_running_loop()
    flights = _flights.get(loop)
    if flights is None:
        flights = _flights[loop] = _Flights()
    flight = flights.open.get(key)
    if flight is not None:
        await flight.done.wait()
        if flight.payload is not None:
            try:
                return decode(flight.payload)
            except ValueError:
                pass
        return (await load()).value
    flight = flights.open[key] = _Flight()
    try:
        previous = flights.running.get(key)
        if previous is not None:
            await previous.done.wait()
        else:
            await asyncio.sleep(0)  # callers asking at the same moment join
        del flights.open[key]
        flights.running[key] = flight
        loaded = await load()
        flight.payload = loaded.payload
        return loaded.value
    finally:
        if flights.open.get(key) is flight:
            del flights.open[key]
        if flights.running.get(key) is flight:
            del flights.running[key]
        flight.done.set()
