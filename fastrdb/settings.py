"""One typed object for every knob FastRDB has, with defaults that are safe."""

from __future__ import annotations

from dataclasses import dataclass

from fastrdb.errors import ConfigurationError

__all__ = ["Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Timeouts, circuit breaker, lease and paging limits.

    Times are in seconds. The defaults suit a Redis on the same network as the application.
    """

    redis_timeout: float = 0.25
    """Upper bound for one Redis call made by FastRDB; past it the call counts as a failure."""

    breaker_threshold: int = 3
    """Consecutive Redis failures after which FastRDB stops calling Redis for a while."""

    breaker_cooldown: float = 5.0
    """How long the open breaker skips Redis before one probe call is let through."""

    lease_ttl: float = 5.0
    """Lifetime of a fill lease: the longest a crashed reader can keep others from filling."""

    lease_wait: float = 0.2
    """How long a reader waits for another reader's fill before it reads the database itself."""

    lease_poll: float = 0.004
    """Pause between two looks at a key while waiting for another reader's fill."""

    max_limit: int = 1000
    """The largest ``limit`` that ``get_multi`` and ``get_page`` accept."""

    negative_exp: int = 60
    """Lifetime in seconds of a negative entry (a ``get`` that found no row), ``0`` for none.

    Commits that could make the row match drop the entry before they return, like any other."""

    namespace: str = "fastrdb"
    """Prefix of FastRDB's own bookkeeping keys (published patterns, list registries)."""

    near_cache_size: int = 0
    """Entries kept in this process per FastRDB instance (the near cache, kept coherent by
    Redis client-side caching; see docs/near-cache.md). ``0``: no near cache."""

    max_pending: int = 10_000
    """The most items kept in memory per Redis server for invalidations it could not take:
    row versions (a changed row's values before and after), one per table kept whole. Past
    it the tables with the most row versions are kept whole instead (every entry of the table
    is dropped on replay, found by a ``SCAN`` of its patterns' prefixes); past it in tables,
    everything (every FastRDB entry of the server is dropped on replay). See
    docs/failures.md."""

    wait_replicas: int = 0
    """Replicas that must acknowledge an invalidation (Redis ``WAIT``) before it counts as
    delivered, so that a failover cannot lose it (see docs/cluster.md). An invalidation that
    fewer replicas took within ``wait_timeout`` is kept and replayed, like one Redis refused,
    and until then the cache is bypassed. ``0``: don't wait (one round trip less per commit)."""

    wait_timeout: float = 0.25
    """How long an invalidation waits for ``wait_replicas`` replicas (seconds, at least 1 ms).
    A client's ``socket_timeout``, if set, must be longer."""

    def __post_init__(self) -> None:
        for name in ("redis_timeout", "breaker_cooldown", "lease_ttl", "lease_wait", "lease_poll"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(name, "must be positive")
        if self.breaker_threshold < 1:
            raise ConfigurationError("breaker_threshold", "must be at least 1")
        if isinstance(self.near_cache_size, bool) or not isinstance(self.near_cache_size, int):
            raise ConfigurationError("near_cache_size", "must be an integer")
        if self.near_cache_size < 0:
            raise ConfigurationError("near_cache_size", "must be 0 (off) or a number of entries")
        max_pending = self.max_pending
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError(
                "max_pending", f"must be a whole number of items, 1 or more, got {max_pending!r}"
            )
        wait_replicas = self.wait_replicas
        if isinstance(wait_replicas, bool) or not isinstance(wait_replicas, int):
            raise ConfigurationError("wait_replicas", f"must be an integer, got {wait_replicas!r}")
        if wait_replicas < 0:
            raise ConfigurationError("wait_replicas", "must be 0 (off) or a number of replicas")
        wait_timeout = self.wait_timeout
        if isinstance(wait_timeout, bool) or not isinstance(wait_timeout, int | float):
            raise ConfigurationError("wait_timeout", f"must be a number, got {wait_timeout!r}")
        if not 0.001 <= wait_timeout < float("inf"):
            raise ConfigurationError(
                "wait_timeout",
                f"must be at least 0.001 seconds (WAIT counts in ms), got {wait_timeout!r}",
            )
        if self.max_limit < 1:
            raise ConfigurationError("max_limit", "must be at least 1")
        negative_exp = self.negative_exp
        if isinstance(negative_exp, bool) or not isinstance(negative_exp, int) or negative_exp < 0:
            raise ConfigurationError(
                "negative_exp",
                f"must be a whole number of seconds, 0 or more, got {negative_exp!r}",
            )


DEFAULT_SETTINGS = Settings()
