"""MariaDB's row-based binlog, read as a replica (:mod:`fastrdb.capture.binlog`; table maps
decoded by the ``mysql-replication`` package).

A reader thread follows the binlog (the dump connection is blocking) and hands whole
transactions, each ending at its ``XID`` (or ``COMMIT`` for non-transactional tables) with the
binlog position after it, to the asyncio side through a bounded queue. The position is kept in
Redis under ``{namespace}:capture:{name}:position`` and written only after the transactions
before it were delivered; a restart resumes there (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import queue
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastrdb._logging import log
from fastrdb.capture import binlog
from fastrdb.capture.binlog import Dump, RowsEvent, TableMaps
from fastrdb.capture.rows import RowChange, Transaction
from fastrdb.capture.source import Batch, CaptureSetupError

__all__ = ["MariaDBSource", "ServerAddress"]

_FETCH_BATCH = 500
"""Keys per SELECT of :meth:`MariaDBSource.fetch`."""

COALESCE = 0.002
"""Seconds between two reads of the binlog socket while transactions stream in: at 1,000
one-row commits a second, 2 ms cut the reader thread's CPU per row from ~63 to ~41 µs and
added ~0.7 ms to the lag's median (4 ms: 35 µs, +1.5 ms)."""

_HANDOFF = 256
"""Transactions handed to the asyncio side at most at a time."""

_WAITING = 40
"""Hand-overs waiting for the asyncio side at most (about 10,000 transactions in a backlog);
the reader waits for room, and the server for the reader."""

_WANTED = frozenset(
    (
        binlog.QUERY,
        binlog.ROTATE,
        binlog.XID,
        binlog.TABLE_MAP,
        binlog.HEARTBEAT,
        *binlog.ROWS,
        *binlog.COMPRESSED,
    )
)
"""The events the reader reads; the others (GTID, format description, binlog checkpoint,
annotations...) are read past by the dump (a quarter of a one-row transaction's events)."""

REPORT_EVERY = 0.1
"""Seconds between two writes of the position while transactions stream in."""

_REQUIRED = {
    "log_bin": "ON",
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
}


@dataclass(frozen=True, slots=True)
class ServerAddress:
    host: str
    port: int
    user: str
    password: str
    database: str


Position = tuple[str, int]

T = TypeVar("T")

Cascades = dict[tuple[str, str], list[tuple[str, str, list[tuple[str, str]], str, str]]]
"""Per referenced table: (child schema, child table, [(child column, parent column)],
delete rule, update rule) of each foreign key that changes children in the database."""

Booleans = dict[tuple[str, str], frozenset[str]]
"""Per table: its ``tinyint(1)`` columns, which SQLAlchemy's ``Boolean`` reads as bool."""

_COMPRESSED = (
    "the binlog holds compressed events, which capture cannot read: set it OFF (my.cnf"
    " [mariadbd] log-bin-compress=OFF, or SET GLOBAL log_bin_compress=OFF); what was logged"
    " compressed is not read, so flush the cache and delete the stored position"
)

_BOOLEANS = (
    "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS"
    " WHERE COLUMN_TYPE = 'tinyint(1)'"
    " AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')"
)

_CASCADES = (
    "SELECT r.UNIQUE_CONSTRAINT_SCHEMA, r.REFERENCED_TABLE_NAME, k.TABLE_SCHEMA, k.TABLE_NAME,"
    " k.COLUMN_NAME, k.REFERENCED_COLUMN_NAME, r.DELETE_RULE, r.UPDATE_RULE"
    " FROM information_schema.REFERENTIAL_CONSTRAINTS r"
    " JOIN information_schema.KEY_COLUMN_USAGE k"
    " ON k.CONSTRAINT_SCHEMA = r.CONSTRAINT_SCHEMA AND k.CONSTRAINT_NAME = r.CONSTRAINT_NAME"
    " AND k.TABLE_NAME = r.TABLE_NAME"
    " WHERE r.DELETE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT')"
    " OR r.UPDATE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT')"
    " ORDER BY k.CONSTRAINT_SCHEMA, k.CONSTRAINT_NAME, k.ORDINAL_POSITION"
)


def _later_or_equal(a: Position, b: Position) -> bool:
    """Binlog positions compare by file sequence number, then offset."""
    return (a[0].rsplit(".", 1)[-1].zfill(12), a[1]) >= (b[0].rsplit(".", 1)[-1].zfill(12), b[1])


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class MariaDBSource:
    """The binlog of the server at ``address``, its position kept in Redis as ``name``."""

    waits = True
    """:meth:`read` waits for the reader thread itself: no pause between two reads."""

    def __init__(
        self,
        address: ServerAddress,
        name: str,
        redis: Any,
        *,
        namespace: str = "fastrdb",
        server_id: int = 0,
        batch_rows: int = 20_000,
        heartbeat: float = 0.5,
        coalesce: float = COALESCE,
    ) -> None:
        self.address = address
        self.name = name
        self.redis = redis
        self.position_key = f"{namespace}:capture:{name}:position"
        self.server_id = server_id or (0x5FA5_0000 | (zlib.crc32(name.encode()) & 0xFFFF))
        self.batch_rows = batch_rows
        self.heartbeat = heartbeat
        self.coalesce = coalesce
        self.default_schema = address.database
        self._queue: queue.Queue[list[Transaction] | _Failed] = queue.Queue(maxsize=_WAITING)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._seen: Position = ("", 0)
        self._unstored: Position | None = None
        self._stored_at = 0.0
        self._cascades: Cascades = {}
        self._booleans: Booleans = {}
        self._reader: Any = None
        self._reader_lock = threading.Lock()

    def _connect(self) -> Any:
        import pymysql

        a = self.address
        return pymysql.connect(
            host=a.host, port=a.port, user=a.user, password=a.password, autocommit=True
        )

    def _check(self) -> Position:
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                for name, wanted in _REQUIRED.items():
                    cursor.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
                    row = cursor.fetchone()
                    value = str(row[1]).upper() if row else "(missing)"
                    if value != wanted:
                        raise CaptureSetupError(
                            name,
                            f"is {value}; capture needs {wanted} (my.cnf [mariadbd] "
                            f"{name.replace('_', '-')}={wanted}; RDS: the parameter group's"
                            f" {name})",
                        )
                cursor.execute("SHOW GLOBAL VARIABLES LIKE 'log_bin_compress'")
                row = cursor.fetchone()
                if row is not None and str(row[1]).upper() == "ON":
                    raise CaptureSetupError("log_bin_compress", "is ON; " + _COMPRESSED)
                self._cascades = _load_cascades(cursor)
                self._booleans = _load_booleans(cursor)
                return self._master_position(cursor)
        finally:
            connection.close()

    def _reload_schema(self) -> None:
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                self._cascades = _load_cascades(cursor)
                self._booleans = _load_booleans(cursor)
        finally:
            connection.close()

    @staticmethod
    def _master_position(cursor: Any) -> Position:
        import pymysql

        try:
            cursor.execute("SHOW MASTER STATUS")
        except pymysql.err.OperationalError as exc:
            raise CaptureSetupError(
                "privileges",
                f"SHOW MASTER STATUS refused ({exc}); the capture user needs"
                " GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.*",
            ) from None
        row = cursor.fetchone()
        if row is None:
            raise CaptureSetupError("log_bin", "the binary log is off; capture needs log_bin")
        return str(row[0]), int(row[1])

    async def open(self) -> None:
        current = await asyncio.to_thread(self._check)
        stored = await self.redis.get(self.position_key)
        if stored is None:
            position = current
            await self.redis.set(self.position_key, json.dumps(list(position)), nx=True)
            log.info("capture_position_created", name=self.name, file=position[0])
        else:
            file, offset = json.loads(stored)
            position = (str(file), int(offset))
        self._seen = position
        self._unstored = None  # delivered but not stored: read again from the stored one
        self._stop.clear()
        self._queue = queue.Queue(maxsize=_WAITING)
        self._thread = threading.Thread(
            target=self._follow, args=(position,), name="fastrdb-capture-binlog", daemon=True
        )
        self._thread.start()

    def _follow(self, position: Position) -> None:
        try:
            self._stream(position)
        except BaseException as exc:
            self._put(_Failed(exc))

    def _put(self, item: list[Transaction] | _Failed) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _stream(self, position: Position) -> None:
        a = self.address
        dump = Dump(
            functools.partial(_connect, host=a.host, port=a.port, user=a.user, password=a.password),
            position[0],
            position[1],
            self.server_id,
            self.heartbeat,
        )
        tables = TableMaps()
        rows: list[RowChange] = []
        pending: list[Transaction] = []
        """Transactions read and not yet handed over: handed over together before the next
        read from the socket (or when there are many), one queue call for all."""
        safe = self._seen

        def hand_over() -> None:
            if pending:
                self._put(list(pending))
                pending.clear()
                self._seen = safe

        woke = 0.0

        def before_wait() -> None:
            nonlocal woke
            hand_over()
            if self.coalesce > 0 and dump.drained:
                # Under a stream of commits, read the socket at most every `coalesce`
                # seconds: what arrived meanwhile comes in one read (each wake-up of this
                # thread cost more CPU than decoding a one-row transaction). A commit after
                # a quiet moment is read at once; a backlog (the last read filled its
                # buffer) is read without a pause.
                idle = self.coalesce - (time.monotonic() - woke)
                if idle > 0:
                    time.sleep(idle)
                woke = time.monotonic()

        dump.before_wait = before_wait
        dump.wanted = _WANTED
        dump.known_maps = tables.known
        stopping = self._stop.is_set
        try:
            dump.open()
            while not stopping():
                if len(pending) >= _HANDOFF:
                    hand_over()
                event = dump.next()
                kind = event.kind
                # A one-row transaction is a table map, a rows event and an XID: those first.
                if kind == binlog.TABLE_MAP:
                    tables.learn(dump, event)
                    continue
                if kind in binlog.ROWS:
                    logged = tables.rows(dump, event)
                    if logged is not None:
                        changes = _row_changes(logged, self._booleans)
                        if self._cascades:
                            changes = _with_cascades(changes, self._cascades)
                        rows += changes
                    continue
                if kind == binlog.XID:
                    here = (dump.file, event.position)
                    pending.append(_transaction(rows, here, event.timestamp))
                    rows = []
                    if here[1]:
                        safe = here
                    continue
                if kind == binlog.ROTATE:
                    if event.timestamp:  # not the dump's first: maybe a restarted server
                        tables.clear()
                    continue
                if kind in binlog.COMPRESSED:
                    raise CaptureSetupError("log_bin_compress", "was ON; " + _COMPRESSED)
                if kind not in (binlog.QUERY, binlog.HEARTBEAT):
                    continue  # not read: see _WANTED
                here = (dump.file, event.position)
                if kind == binlog.QUERY:
                    schema, statement = binlog.query(dump, event)
                    query = statement.strip().upper()
                    if query == "COMMIT":
                        pending.append(_transaction(rows, here, event.timestamp))
                        rows = []
                    elif query.startswith("TRUNCATE") and not rows:
                        table = query.split()[-1].strip("`").split("`.`")[-1].lower()
                        truncated = RowChange(schema, table, "truncate")
                        pending.append(_transaction([truncated], here, event.timestamp))
                    elif query != "BEGIN" and not rows:
                        tables.clear()  # DDL: table maps are decoded afresh
                        self._reload_schema()  # DDL: new boolean columns, foreign keys
                        pending.append(_transaction([], here, event.timestamp))  # safe point
                if not rows and here[1]:
                    safe = here
                    if not pending:
                        self._seen = here
        finally:
            dump.close()

    async def read(self) -> Batch:
        try:
            first = self._queue.get_nowait()  # no thread hop while transactions wait
        except queue.Empty:
            try:
                first = await asyncio.to_thread(self._queue.get, True, 0.05)
            except queue.Empty:
                return Batch(drained=self._queue.empty())
        batch = Batch()
        item: list[Transaction] | _Failed = first
        count = 0
        while True:
            if isinstance(item, _Failed):
                if batch.transactions:
                    self._queue.queue.appendleft(item)  # report it after this batch
                    break
                raise item.error
            batch.transactions.extend(item)
            batch.position = item[-1].position
            count += sum(len(transaction.rows) for transaction in item)
            if count >= self.batch_rows:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        batch.drained = self._queue.empty()
        return batch

    async def confirm(self, batch: Batch) -> None:
        """Store ``batch``'s position in Redis at most every :data:`REPORT_EVERY` seconds
        while transactions stream in, and at once when a read found none (a pause): not one
        Redis call per delivery (a read that empties the queue is no pause: under a steady
        stream most do). A restart may receive again what was delivered since, which
        at-least-once allows."""
        if batch.position is not None:
            self._unstored = batch.position
        if self._unstored is None:
            return
        now = time.monotonic()
        if not batch.transactions or now - self._stored_at >= REPORT_EVERY:
            await self.redis.set(self.position_key, json.dumps(list(self._unstored)))
            self._unstored = None
            self._stored_at = now

    async def backlog(self) -> dict[str, Any]:
        end = await self.end()
        seen = self._seen
        behind = end[1] - seen[1] if end[0] == seen[0] else None
        return {"binlog_file": seen[0], "behind_bytes": behind}

    async def end(self) -> Any:
        """The binlog's end, on the kept connection: a new connection per call cost 40 ms
        here (up to 140 ms under load), and the lag line every ``lag_interval`` held every
        delivery that long."""
        return await asyncio.to_thread(self._on_reader, self._master_position)

    def reached(self, end: Any) -> bool:
        return _later_or_equal(self._seen, end) and self._queue.empty()

    async def fetch(
        self, schema: str, table: str, columns: Sequence[str], keys: Sequence[tuple[Any, ...]]
    ) -> list[dict[str, Any]]:
        flags = self._booleans.get((schema, table))
        row = "(" + ", ".join(["%s"] * len(columns)) + ")"
        names = ", ".join(map(_quoted, columns))

        def select(cursor: Any) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            for start in range(0, len(keys), _FETCH_BATCH):
                chunk = keys[start : start + _FETCH_BATCH]
                cursor.execute(
                    f"SELECT * FROM {_quoted(schema)}.{_quoted(table)}"
                    f" WHERE ({names}) IN ({', '.join([row] * len(chunk))})",
                    [value for key in chunk for value in key],
                )
                labels = [d[0] for d in cursor.description]
                for values in cursor.fetchall():
                    image = dict(zip(labels, values, strict=True))
                    for column in flags or ():
                        if image.get(column) is not None:
                            image[column] = bool(image[column])
                    found.append(image)
            return found

        return await asyncio.to_thread(self._on_reader, select)

    async def horizon(self) -> Any:
        """The binlog's end: MariaDB writes a transaction to the binlog before its commit
        in the engine makes it visible."""
        return await asyncio.to_thread(self._on_reader, self._master_position)

    def _on_reader(self, work: Callable[[Any], T]) -> T:
        """``work(cursor)`` on the connection kept for :meth:`fetch` and :meth:`horizon`
        (autocommit: each statement reads the latest commit), made again after a failure."""
        with self._reader_lock:  # sync() asks for the end from another task
            if self._reader is None:
                self._reader = self._connect()
            try:
                with self._reader.cursor() as cursor:
                    return work(cursor)
            except Exception:
                reader, self._reader = self._reader, None
                with contextlib.suppress(Exception):
                    reader.close()
                raise

    async def close(self) -> None:
        with self._reader_lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 10 * self.heartbeat + 5)


def _connect(**settings: Any) -> Any:
    """``pymysql.connect`` with the keyword names PyMySQL no longer deprecates (the package
    passes ``db=`` for its control connection)."""
    import pymysql

    if "db" in settings:
        settings["database"] = settings.pop("db")
    if "passwd" in settings:
        settings["password"] = settings.pop("passwd")
    return pymysql.connect(**settings)


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _transaction(rows: list[RowChange], position: Position, timestamp: int) -> Transaction:
    return Transaction(rows, float(timestamp) if timestamp else None, position)


def _load_booleans(cursor: Any) -> Booleans:
    cursor.execute(_BOOLEANS)
    found: dict[tuple[str, str], set[str]] = {}
    for schema, table, column in cursor.fetchall():
        found.setdefault((schema, table), set()).add(column)
    return {key: frozenset(columns) for key, columns in found.items()}


def _load_cascades(cursor: Any) -> Cascades:
    cursor.execute(_CASCADES)
    found: dict[tuple[str, ...], tuple[str, str, list[tuple[str, str]], str, str]] = {}
    for (
        parent_schema,
        parent,
        schema,
        table,
        column,
        referenced,
        on_delete,
        on_update,
    ) in cursor.fetchall():
        key = (parent_schema, parent, schema, table, on_delete, on_update)
        found.setdefault(key, (schema, table, [], on_delete, on_update))[2].append(
            (column, referenced)
        )
    cascades: Cascades = {}
    for (parent_schema, parent, *_), child in found.items():
        cascades.setdefault((parent_schema, parent), []).append(child)
    return cascades


_CHANGING = ("CASCADE", "SET NULL", "SET DEFAULT")


def _with_cascades(changes: list[RowChange], cascades: Cascades) -> list[RowChange]:
    """``changes``, plus what InnoDB's foreign key actions did to child rows.

    MariaDB does not write those to the binlog. The children's own values are unknown; what is
    known is the foreign key they matched, so each affected child table gets a change holding
    only its foreign key columns, marked incomplete (its pages are dropped, and keys made of
    those columns alone are named).
    """
    if not cascades:
        return changes
    result = list(changes)
    todo = list(changes)
    depth = 0
    while todo and depth < 16:
        depth += 1
        derived: list[RowChange] = []
        for change in todo:
            for schema, table, columns, on_delete, on_update in cascades.get(
                (change.schema, change.table), ()
            ):
                old = change.before or {}
                if change.operation == "delete" and on_delete in _CHANGING:
                    before = {c: old.get(p) for c, p in columns}
                    derived.append(RowChange(schema, table, "delete", before, None, False))
                elif change.operation == "update" and on_update in _CHANGING:
                    new = change.after or {}
                    if all(old.get(p) == new.get(p) for _, p in columns):
                        continue
                    before = {c: old.get(p) for c, p in columns}
                    after = {c: new.get(p) for c, p in columns}
                    derived.append(RowChange(schema, table, "update", before, after, False))
        result.extend(derived)
        todo = derived
    return result


def _row_changes(event: RowsEvent, booleans: Booleans) -> list[RowChange]:
    """The row changes of one rows event. A row image without every column (the writer's
    session set ``binlog_row_image`` to ``MINIMAL``: capture refuses a server whose global
    setting is not ``FULL``, but a session may change its own) is marked incomplete."""
    schema, table = event.schema, event.table
    images = event.images
    flags = booleans.get((schema, table))
    if flags:
        images = [(_typed(image, flags), complete) for image, complete in images]
    if event.kind in binlog.UPDATE_ROWS:
        if len(images) == 2:  # one row: most updates
            (before, complete), (after, _) = images
            return [RowChange(schema, table, "update", before, after, complete)]
        return [
            RowChange(schema, table, "update", before, after, complete)
            for (before, complete), (after, _) in zip(images[::2], images[1::2], strict=True)
        ]
    if event.kind in binlog.DELETE_ROWS:
        return [
            RowChange(schema, table, "delete", image, None, complete) for image, complete in images
        ]
    return [RowChange(schema, table, "insert", None, image, complete) for image, complete in images]


def _typed(values: dict[str, Any], flags: frozenset[str]) -> dict[str, Any]:
    """``values`` with its ``tinyint(1)`` columns as bool, as SQLAlchemy's ``Boolean`` reads
    them."""
    for column in flags & values.keys():
        if values[column] is not None:
            values[column] = bool(values[column])
    return values
