"""``Capture``: the object the command line runs, and an app can run as a task."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastrdb.capture.mariadb import MariaDBSource, ServerAddress
from fastrdb.capture.postgresql import PostgresSource
from fastrdb.capture.runner import CaptureStats, Runner
from fastrdb.capture.source import Source
from fastrdb.capture.urls import SLOT_NAME, parse_database_url
from fastrdb.errors import FastRDBError
from fastrdb.settings import DEFAULT_SETTINGS, Settings

__all__ = ["MAX_INTERVAL", "Capture"]

MAX_INTERVAL = 0.025
"""The longest pause between two deliveries by default (seconds): how long a commit may wait
for its delivery to start while rows stream in fast (see :mod:`fastrdb.capture.pacing`)."""


class Capture:
    """Follows a database's log and drops the cache entries its committed changes made stale.

    ``database``: a PostgreSQL or MariaDB URL, plain or SQLAlchemy style. ``redis``: an
    asyncio client (or cluster client) of the cache's Redis. ``slot`` names the PostgreSQL
    replication slot, or the MariaDB position kept in Redis; one running capture per name.
    ``tables`` limits capture to these tables (as FastRDB names them: ``users`` or
    ``schema.users``). ``poll_interval``: the shortest time between two deliveries to Redis
    (seconds; changes committed meanwhile are delivered together, a change after a quiet moment
    at once); ``max_interval``: the longest (default :data:`MAX_INTERVAL`, 25 ms), reached
    while rows stream in at 3,000 a second or more, growing from ``poll_interval`` above
    1,500 (:mod:`fastrdb.capture.pacing`: fewer, larger deliveries under a fast stream; equal
    to ``poll_interval``: a fixed pace);
    ``max_backoff``: the longest pause between two attempts while Redis or the database is down.

    Run it with ``await capture.run()`` (e.g. as a task in a FastAPI lifespan) and end it with
    :meth:`stop`; nothing is confirmed for changes whose invalidation Redis did not take.
    """

    def __init__(
        self,
        database: str,
        redis: Any,
        *,
        slot: str = "fastrdb",
        tables: Iterable[str] | None = None,
        settings: Settings = DEFAULT_SETTINGS,
        poll_interval: float = 0.005,
        max_interval: float | None = None,
        max_backoff: float = 5.0,
        server_id: int = 0,
    ) -> None:
        if not SLOT_NAME.fullmatch(slot):
            raise FastRDBError("slot", f"{slot!r}: use 1 to 63 of a-z, 0-9 and _")
        if poll_interval <= 0:
            raise FastRDBError("poll_interval", "must be positive")
        if max_interval is None:
            max_interval = max(MAX_INTERVAL, poll_interval)
        elif max_interval < poll_interval:
            raise FastRDBError("max_interval", "must be at least poll_interval")
        kind, target = parse_database_url(database)
        source: Source
        if kind == "postgresql":
            assert isinstance(target, str)
            source = PostgresSource(target, slot)
        else:
            assert isinstance(target, ServerAddress)
            source = MariaDBSource(
                target, slot, redis, namespace=settings.namespace, server_id=server_id
            )
        self.kind = kind
        self._runner = Runner(
            source,
            redis,
            tables=tables,
            settings=settings,
            poll_interval=poll_interval,
            max_interval=max_interval,
            backoff=(min(0.05, max_backoff), max_backoff),
        )

    @property
    def stats(self) -> CaptureStats:
        return self._runner.stats

    async def run(self) -> None:
        """Capture until :meth:`stop`. Raises ``CaptureSetupError`` (naming the setting) for
        a database not set up for capture; waits out database and Redis outages."""
        await self._runner.run()

    def stop(self) -> None:
        """Make :meth:`run` return once the batch in hand is delivered or given up."""
        self._runner.stop()

    async def sync(self) -> None:
        """Wait until every change committed before this call has been invalidated (bound it
        with ``asyncio.timeout``: it waits out outages)."""
        await self._runner.sync()
