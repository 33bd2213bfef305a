"""What this process can tell an operator about the Redis clients FastRDB uses: the breaker,
the invalidations waiting for a server, the last error (``fastrdb.health()``)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal, cast, overload

from fastrdb.cache.health import ClientHealth, clients, known_health, known_server
from fastrdb.settings import DEFAULT_SETTINGS

__all__ = ["RedisHealth", "health"]

BreakerState = Literal["closed", "open", "half-open"]
PendingScope = Literal["rows", "tables", "everything"]


@dataclass(frozen=True, slots=True)
class RedisHealth:
    """One Redis client as FastRDB sees it. Times are Unix timestamps (``time.time()``), ages
    are seconds; every field is plain JSON (see :meth:`as_dict`). No key or cached value is
    ever part of it."""

    server: str
    """The server the client talks to, as it was given (``redis://host:port/db``,
    ``unix:///path?db=N``, ``cluster://host:port,...``); no credentials."""
    namespace: str
    """``Settings.namespace`` of the client's first user."""
    serving: bool
    """Whether cached values are served now: breaker closed, nothing pending, cache not
    bypassed. When False, reads go to the database."""
    breaker: BreakerState
    """``closed`` (calls go through), ``open`` (calls skipped until the cooldown ends),
    ``half-open`` (the cooldown ended: the next call, or the one under way, is the probe)."""
    breaker_since: float
    """When the breaker last opened (if not closed), or last closed (first use, recovery)."""
    consecutive_failures: int
    """Redis calls that failed in a row (0 after any success)."""
    errors: int
    """Failed Redis calls on this client since it was first used."""
    bypassed: bool
    """The server's memory policy may evict FastRDB's bookkeeping (``allkeys-*``): the cache
    is bypassed for this client (see docs/failures.md)."""
    pending: int
    """Invalidations kept for replay on this server (row versions and whole tables; one item
    for "everything"), shared by every client of the server in this process."""
    pending_scope: PendingScope | None
    """How precise the pending invalidations are: ``rows`` (each row's keys), ``tables`` (some
    tables are dropped whole on replay), ``everything`` (every FastRDB entry of the server is
    dropped on replay); None when nothing is pending."""
    pending_tables: tuple[str, ...]
    """The tables the pending invalidations concern (empty for ``everything``)."""
    pending_oldest_age: float | None
    """Seconds since the oldest pending invalidation was kept; None when nothing is pending."""
    last_error: str | None
    """The type of the last failure (``ConnectionError``, ``TimeoutError``...), or None."""
    last_error_message: str | None
    """Its message, cut to 200 characters (redis-py names the server, never a key or value)."""
    last_error_at: float | None
    """When the last failure happened."""

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict that ``json.dumps`` takes as is."""
        data = dataclasses.asdict(self)
        data["pending_tables"] = list(self.pending_tables)
        return data


@overload
def health(redis: None = None) -> list[RedisHealth]: ...


@overload
def health(redis: Any) -> RedisHealth: ...


def health(redis: Any = None) -> RedisHealth | list[RedisHealth]:
    """The health of ``redis`` (a redis-py client, asyncio or blocking, single or cluster) as
    FastRDB sees it; without an argument, of every client FastRDB has used in this process and
    that is still alive, sorted by server.

    A client FastRDB never used reports a closed breaker and no error, and what is pending for
    its server (another client of the same server may have kept something). Reading the
    health makes no Redis call and changes nothing.
    """
    if redis is None:
        reports = [_report(record) for _, record in clients()]
        return sorted(reports, key=lambda report: (report.server, report.namespace))
    record = known_health(redis)
    if record is None:
        server = known_server(redis, DEFAULT_SETTINGS.namespace)
        record = ClientHealth(DEFAULT_SETTINGS, server=server)
    return _report(record)


def _report(record: ClientHealth) -> RedisHealth:
    state, since, failures = record.breaker()
    server = record.server
    pending = server.pending
    last = record.last_error
    return RedisHealth(
        server=server.address,
        namespace=record.settings.namespace,
        serving=record.usable,
        breaker=cast(BreakerState, state),
        breaker_since=since,
        consecutive_failures=failures,
        errors=record.errors,
        bypassed=not record.safe,
        pending=pending.size() if pending is not None else 0,
        pending_scope=cast(PendingScope, pending.scope()) if pending is not None else None,
        pending_tables=tuple(pending.tables()) if pending is not None else (),
        pending_oldest_age=(
            max(0.0, time.time() - server.pending_since) if pending is not None else None
        ),
        last_error=last[0] if last is not None else None,
        last_error_message=last[1] if last is not None else None,
        last_error_at=record.last_error_at if last is not None else None,
    )
