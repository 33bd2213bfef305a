"""The capture loop: read whole transactions from a database log, invalidate, then confirm.

The position is confirmed only after Redis took the invalidation. A Redis outage holds the
position and retries with backoff; a database outage reconnects with backoff and reads again
from the confirmed position. Either way a change is delivered at least once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastrdb._compat import greenlet_spawn
from fastrdb._logging import log
from fastrdb._types import Raw
from fastrdb.cache import wire
from fastrdb.cache.refusals import note_refusal
from fastrdb.cache.replicas import Wait, check_client
from fastrdb.cache.store import (
    REDIS_ERRORS,
    Caller,
    InvalidationPlan,
    Republished,
    deliver_invalidation,
    is_cluster,
)
from fastrdb.cache.wipe import sweep
from fastrdb.capture.families import Rows
from fastrdb.capture.pacing import Pacing
from fastrdb.capture.rows import TableNames, to_changes
from fastrdb.capture.source import Batch, CaptureSetupError, Source
from fastrdb.capture.walstream import StreamError
from fastrdb.events.changes import Changes
from fastrdb.keys import Namespace
from fastrdb.schemes import Scheme
from fastrdb.settings import DEFAULT_SETTINGS, Settings

__all__ = ["FETCH_ROUNDS", "CaptureStats", "Runner"]

T = TypeVar("T")

FETCH_ROUNDS = 4
"""Rounds of reading rows of inheritance hierarchies from the database (each may bring more
transactions, with new rows, from the log); rows still unread after them are swept."""

_SHORT = 0.05
"""Pauses up to this long are slept through whole (:meth:`Runner.stop` waits that much at
most); longer ones (backoff) end as soon as capture is stopped."""


@dataclass(slots=True)
class CaptureStats:
    """Counters of one capture, since it started."""

    transactions: int = 0
    rows: int = 0
    deliveries: int = 0
    sweeps: int = 0
    refused_reads: int = 0
    """Reads of an inheritance hierarchy's table the database refused (the rows were swept)."""
    """Scans for keys that changes logged without their old values could not name (see
    docs/capture.md, ``REPLICA IDENTITY FULL``)."""
    redis_failures: int = 0
    database_failures: int = 0
    last_lag: float | None = None
    """Seconds from the last delivered transaction's commit to its delivery (when the log
    gives commit times)."""


class Runner:
    """Runs one :class:`Source` until :meth:`stop`."""

    def __init__(
        self,
        source: Source,
        redis: Any,
        *,
        tables: Iterable[str] | None = None,
        settings: Settings = DEFAULT_SETTINGS,
        poll_interval: float = 0.005,
        max_interval: float = 0.025,
        delivery_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.05, 5.0),
        lag_interval: float = 10.0,
    ) -> None:
        self.source = source
        self.redis = redis
        self.tables = list(tables) if tables is not None else None
        self.namespace = Namespace(settings.namespace)
        check_client(redis, settings)
        self._wait = Wait.of(settings)
        self.poll_interval = poll_interval
        self.pacing = Pacing(poll_interval, max_interval)
        self.backoff = backoff
        self.lag_interval = lag_interval
        self.stats = CaptureStats()
        # A plain client's deliveries go by cache.wire (bounded by the Caller's watchdog, as
        # every call of capture's is): a third less CPU per delivery than execute_command.
        self._call = Caller(True, delivery_timeout, wire.direct(redis))
        self._delivery_timeout = delivery_timeout
        self._refused_tables: set[str] = set()
        self._swept_tables: set[str] = set()
        self._families: set[Raw] | None = None
        """The published hierarchies as last read (None: read them at the next batch)."""
        self._stopping = asyncio.Event()
        self._syncs: list[tuple[Any, asyncio.Future[None]]] = []
        """The :meth:`sync` calls waiting: the log's end each asked at, and its future."""

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand (safe from a signal handler)."""
        self._stopping.set()

    async def run(self) -> None:
        """Capture until :meth:`stop`; raises :class:`CaptureSetupError` for a database that
        is not set up for capture."""
        delay = self.backoff[0]
        while not self._stopping.is_set():
            try:
                await self.source.open()
                log.info("capture_started", source=type(self.source).__name__)
                delay = self.backoff[0]
                await self._follow()
            except CaptureSetupError:
                raise
            except Exception as exc:
                if not isinstance(exc, REDIS_ERRORS) and not _is_database_error(exc):
                    raise
                await self._unavailable(exc, delay)
                delay = min(delay * 2, self.backoff[1])
            finally:
                await self.source.close()
        log.info("capture_stopped")

    async def _unavailable(self, exc: BaseException, delay: float) -> None:
        """The database (or, while opening, Redis) failed: start over after ``delay``."""
        self.stats.database_failures += 1
        note_refusal(self, exc, "capture_open")
        log.warning("capture_source_unavailable", error=type(exc).__name__, retry_in=delay)
        await self._sleep(delay)

    async def _follow(self) -> None:
        names = TableNames(self.source.default_schema, self.tables)
        next_lag = time.monotonic() + self.lag_interval
        while not self._stopping.is_set():
            batch = await self.source.read()
            started = time.monotonic()
            rows_read = 0
            if batch.transactions:
                while True:
                    rows = await self._hierarchies(batch, names)
                    if rows is None:
                        return  # stopping: nothing confirmed, the next run reads it again
                    changes = to_changes(batch.transactions, names)
                    rows.apply(changes)
                    delivered = await self._deliver(changes) if changes else True
                    if delivered is None:
                        continue  # the published hierarchies changed: plan again
                    if not delivered:
                        return
                    break
                rows_read = self._count(batch)
            if not await self._confirm(batch):
                return
            if batch.drained:
                self._release_syncs()
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + self.lag_interval
                await self._log_lag()
            if not getattr(self.source, "waits", False):
                if batch.drained:  # else more is waiting: read on at once
                    await self._sleep(self.poll_interval)
            elif batch.transactions:
                # At most one delivery per poll_interval: under a stream of small commits,
                # what arrives meanwhile is delivered together (one Redis call, one
                # confirmation), not one call per commit; a commit after a quiet moment
                # is delivered at once. A faster stream waits longer, up to max_interval.
                self.pacing.observe(rows_read, started)
                await self._sleep(started + self.pacing.pause() - time.monotonic())

    async def _hierarchies(self, batch: Batch, names: TableNames) -> Rows | None:
        """The rows of joined-table inheritance hierarchies that ``batch`` changes, with
        every image of each of their tables (see :mod:`fastrdb.capture.families`): tables the
        batch logs nothing of are read from the database, and the batch is extended up to
        the log position after those reads. None if capture stops meanwhile.

        The published hierarchies are read again after each extension, so every transaction
        planned was committed before the last read of them: a reader that published its
        hierarchy later leased its entry after those commits (and reads what they wrote)."""
        rows = Rows(names)
        collected = 0
        refused: set[str] = set()  # tables the database would not let capture read
        for round_ in range(FETCH_ROUNDS + 1):
            members = await self._retrying(self._read_families)
            if members is None:
                return None
            new = rows.learn(members)
            rows.collect(batch.transactions[:collected], only=new)
            rows.collect(batch.transactions[collected:])
            collected = len(batch.transactions)
            todo = {
                target: keys for target, keys in rows.unread().items() if target[0] not in refused
            }
            if not todo or round_ == FETCH_ROUNDS:
                break
            for (table, columns), keys in todo.items():
                schema, _, bare = table.rpartition(".")
                try:
                    found = await self.source.fetch(
                        schema or self.source.default_schema, bare, columns, keys
                    )
                except Exception as exc:
                    if not _is_refused(exc):
                        raise
                    self._refused(table, exc)
                    refused.add(table)
                    continue  # left unread: swept
                rows.read(table, columns, keys, found)
            horizon = await self.source.horizon()
            drained = batch.drained
            while not (drained and self.source.reached(horizon)):
                if self._stopping.is_set():
                    return None
                more = await self.source.read()
                batch.transactions += more.transactions
                if more.position is not None:
                    batch.position = more.position
                batch.drained = drained = more.drained
        rows.give_up()
        return rows

    def _refused(self, table: str, exc: BaseException) -> None:
        """The database refused to let capture read ``table`` (no SELECT privilege): the
        rows are swept instead; said once per table."""
        self.stats.refused_reads += 1
        if table not in self._refused_tables:
            self._refused_tables.add(table)
            log.warning(
                "capture_read_refused",
                table=table,
                error=type(exc).__name__,
                hint="GRANT SELECT on the tables of joined-table inheritance hierarchies to"
                " capture's role (docs/security.md); until then their keys are found by"
                " scanning the keyspace",
            )

    async def _read_families(self) -> set[Raw]:
        """The published hierarchies. On one Redis, as last read: the delivery checks them
        by content in its script (:func:`deliver_invalidation`'s ``verify``), so a change
        since is found after the batch was read, and the batch is planned again. A cluster
        checks nothing in its deliveries: they are read each time."""
        if self._families is not None:
            return self._families
        async with asyncio.timeout(self._delivery_timeout):
            members: set[Raw] = await self.redis.smembers(self.namespace.families())
        if not is_cluster(self.redis):
            self._families = members
        return members

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """``await call()``, retried with backoff while Redis fails; None if capture stops."""
        delay = self.backoff[0]
        while True:
            try:
                return await call()
            except REDIS_ERRORS as exc:
                self._redis_failed(exc, delay)
            if await self._sleep(delay):
                return None
            delay = min(delay * 2, self.backoff[1])

    def _count(self, batch: Batch) -> int:
        """Count ``batch`` in the stats; how many rows it holds."""
        rows = 0
        latest = None
        for transaction in batch.transactions:
            rows += len(transaction.rows)
            committed = transaction.committed_at
            if committed is not None and (latest is None or committed > latest):
                latest = committed
        self.stats.transactions += len(batch.transactions)
        self.stats.rows += rows
        if latest is not None:
            self.stats.last_lag = max(0.0, time.time() - latest)
        return rows

    async def _deliver(self, changes: Changes) -> bool | None:
        """Deliver ``changes``, retrying with backoff until Redis takes them or capture stops
        (False). None: the published hierarchies they were planned with changed meanwhile;
        nothing was dropped."""
        tables = sorted(changes.rows)
        delay = self.backoff[0]
        while True:
            try:
                dropped = await greenlet_spawn(self._drop, changes, tables)
            except Republished:
                self._families = None
                return None
            except REDIS_ERRORS as exc:
                self._redis_failed(exc, delay)
            else:
                if self.stats.redis_failures and delay > self.backoff[0]:
                    log.info("capture_redis_recovered")
                self.stats.deliveries += 1
                log.debug("capture_invalidate", tables=tables, dropped=dropped)
                return True
            if await self._sleep(delay):
                return False
            delay = min(delay * 2, self.backoff[1])

    def _drop(self, changes: Changes, tables: list[str]) -> int:
        """Drop what ``changes`` name; then sweep what they could not name key by key (a
        pre-image logged in part): the keys of the patterns it lacks a placeholder of, and
        the table's narrowed pages (a scan, see :func:`fastrdb.cache.wipe.sweep`)."""
        planned: list[InvalidationPlan] = []

        def plan(schemes: Mapping[str, list[Scheme]]) -> InvalidationPlan:
            todo = changes.plan(schemes, self.namespace)
            planned.append(todo)
            return todo

        families = self._families
        dropped = deliver_invalidation(
            self._call,
            self.redis,
            self.namespace,
            tables,
            plan,
            wait=self._wait,
            verify=None if families is None else {self.namespace.families(): families},
        )
        for table, todo in planned[-1].sweeps.items():
            swept = sweep(
                self._call,
                self.redis,
                self.namespace,
                table,
                todo.patterns,
                todo.narrowed,
                wait=self._wait,
            )
            self.stats.sweeps += 1
            first = table not in self._swept_tables  # said once per table, then at debug
            self._swept_tables.add(table)
            (log.info if first else log.debug)(
                "capture_sweep",
                table=table,
                patterns=len(todo.patterns),
                narrowed=todo.narrowed,
                dropped=swept.dropped,
            )
            dropped += swept.dropped
        return dropped

    async def _confirm(self, batch: Batch) -> bool:
        """Confirm ``batch``'s position (a source that keeps it in Redis may need retries)."""
        delay = self.backoff[0]
        while True:
            try:
                await self.source.confirm(batch)
                return True
            except REDIS_ERRORS as exc:
                self._redis_failed(exc, delay)
            if await self._sleep(delay):
                return False
            delay = min(delay * 2, self.backoff[1])

    def _redis_failed(self, exc: BaseException, delay: float) -> None:
        self.stats.redis_failures += 1
        note_refusal(self, exc, "capture_invalidate")
        if delay == self.backoff[0]:
            log.warning("capture_redis_unavailable", error=type(exc).__name__, retry_in=delay)

    async def _log_lag(self) -> None:
        backlog = await self.source.backlog()
        log.info("capture_lag", lag_seconds=self.stats.last_lag, **backlog)

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stopped; True if stopping."""
        if seconds <= 0:
            return self._stopping.is_set()
        if seconds <= _SHORT:  # the pause between deliveries: no timeout to set up and cancel
            await asyncio.sleep(seconds)
            return self._stopping.is_set()
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return False
        return True

    async def sync(self) -> None:
        """Wait until every transaction committed before this call has been delivered."""
        end = await self.source.end()
        done = asyncio.get_running_loop().create_future()
        self._syncs.append((end, done))
        try:
            await done
        finally:
            self._syncs = [(e, d) for e, d in self._syncs if d is not done]

    def _release_syncs(self) -> None:
        """Release the :meth:`sync` calls whose end the log was read up to, once a drained
        batch was delivered and confirmed.

        Checked here, in the capture loop, before it reads again: every transaction the
        source has read whole is then delivered. A waiter woken to check for itself runs
        only when the loop next yields, often after its next read took transactions it has
        not delivered yet (a read that finds them waiting does not yield), and would see
        their positions as reached."""
        waiting = []
        for end, done in self._syncs:
            if done.done():
                continue
            if self.source.reached(end):
                done.set_result(None)
            else:
                waiting.append((end, done))
        self._syncs = waiting


def _is_database_error(exc: BaseException) -> bool:
    """Errors of the database drivers capture uses (checked by module, so neither driver
    has to be installed)."""
    module = type(exc).__module__
    return isinstance(exc, StreamError) or module.startswith(
        ("asyncpg", "psycopg", "pymysql", "pymysqlreplication")
    )


def _is_refused(exc: BaseException) -> bool:
    """A permission error of a SELECT (PostgreSQL's SQLSTATE 42501; MariaDB's 1142 and 1143,
    command or column denied): checked by attribute, so neither driver has to be installed."""
    if getattr(exc, "sqlstate", None) == "42501":
        return True
    code = exc.args[0] if exc.args else None
    return type(exc).__module__.startswith("pymysql") and code in (1142, 1143)
