"""Per-client health: a circuit breaker, and the invalidations Redis has not taken yet."""

from __future__ import annotations

import time
import weakref
from typing import Any, Protocol

import structlog

from fastrdb.settings import DEFAULT_SETTINGS, Settings

__all__ = ["ClientHealth", "Mergeable", "health_of"]

log = structlog.get_logger("fastrdb")


class Mergeable(Protocol):
    """Undelivered invalidations: whatever the events package collects, merged in order."""

    def merge(self, other: Any) -> None: ...


class ClientHealth:
    """What FastRDB knows about one Redis client.

    The breaker opens after ``breaker_threshold`` consecutive failures; while open, calls are
    skipped (reads go to the database) and one probe is let through every ``breaker_cooldown``
    seconds. One warning is logged per outage, one info line when Redis answers again.

    ``pending`` holds invalidations that could not be delivered. While it is set, this process
    serves nothing from the cache: every read goes to the database until a replay succeeds.
    """

    __slots__ = (
        "__weakref__",
        "_failures",
        "_kept",
        "_open_until",
        "errors",
        "own_timeout",
        "pending",
        "settings",
    )

    def __init__(self, settings: Settings, *, own_timeout: bool = True) -> None:
        self.settings = settings
        self.own_timeout = own_timeout
        """Whether FastRDB must bound each call itself: the client sets no socket timeouts
        within ``settings.redis_timeout``."""
        self._failures = 0
        self._open_until = 0.0
        self.pending: Mergeable | None = None
        self._kept = 0
        self.errors = 0
        """Failed calls since the client was first seen (for stats and tests)."""

    @property
    def usable(self) -> bool:
        """Whether cached values may be served: the breaker is closed and nothing is pending."""
        return self._open_until == 0.0 and self.pending is None

    def allow(self) -> bool:
        """Whether a Redis call may be made now (closed breaker, or a probe is due)."""
        if self._open_until == 0.0:
            return True
        now = time.monotonic()
        if now < self._open_until:
            return False
        self._open_until = now + self.settings.breaker_cooldown  # one probe per cooldown
        return True

    def succeeded(self) -> None:
        if self._open_until:
            log.info("redis_recovered")
        self._failures = 0
        self._open_until = 0.0

    def failed(self, exc: BaseException, operation: str) -> None:
        self.errors += 1
        self._failures += 1
        if self._open_until:
            self._open_until = time.monotonic() + self.settings.breaker_cooldown
            return
        if self._failures >= self.settings.breaker_threshold:
            self._open_until = time.monotonic() + self.settings.breaker_cooldown
            log.warning(
                "redis_unavailable",
                operation=operation,
                error=type(exc).__name__,
                retry_in=self.settings.breaker_cooldown,
            )

    def keep(self, undelivered: Mergeable) -> None:
        """Remember invalidations to replay; they are merged with any already waiting."""
        self._kept += 1
        if self.pending is None:
            self.pending = undelivered
        else:
            self.pending.merge(undelivered)

    @property
    def kept(self) -> int:
        """How many times something was kept: a version of ``pending``."""
        return self._kept

    def settle(self, kept: int) -> None:
        """Forget ``pending`` once delivered, unless more was kept since version ``kept``."""
        if self._kept == kept:
            self.pending = None


_HEALTH: weakref.WeakKeyDictionary[Any, ClientHealth] = weakref.WeakKeyDictionary()


def health_of(client: Any, settings: Settings | None = None) -> ClientHealth:
    """The health record of ``client``; the first caller's settings configure it."""
    health = _HEALTH.get(client)
    if health is None:
        settings = settings or DEFAULT_SETTINGS
        health = _HEALTH[client] = ClientHealth(
            settings, own_timeout=not _client_bounds_calls(client, settings.redis_timeout)
        )
    return health


def _client_bounds_calls(client: Any, limit: float) -> bool:
    """Whether the client's own socket timeouts already bound every call within ``limit``
    (then FastRDB need not start a timer per call, which the hit path would pay for)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return False
    read = kwargs.get("socket_timeout")
    connect = kwargs.get("socket_connect_timeout")
    return all(isinstance(t, int | float) and 0 < t <= limit for t in (read, connect))
