"""PostgreSQL's log through a logical replication slot: streamed, set up and watched with SQL.

The slot is created, and the server's settings checked, over an asyncpg connection; changes
are streamed from the slot over the replication protocol (:mod:`fastrdb.capture.walstream`,
``test_decoding`` text), each committed transaction pushed once as it commits, whole, in
commit order. The slot's confirmed position moves (a standby status update) to the end of
the last transaction read once its invalidation was delivered. A crash between the two
receives those transactions again on restart: at-least-once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from fastrdb._logging import log
from fastrdb.capture.decoding import parse_change
from fastrdb.capture.rows import RowChange, Transaction
from fastrdb.capture.source import Batch, CaptureSetupError
from fastrdb.capture.walstream import WalStream

__all__ = ["PostgresSource"]

PLUGIN = "test_decoding"

_OPTIONS = {"include-xids": "0", "include-timestamp": "1"}
_FLUSHED = "SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn"
_INSERTED = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
_FETCH_BATCH = 500
"""Keys per SELECT of :meth:`PostgresSource.fetch`."""
_IDENTITIES = (
    "SELECT n.nspname::text, c.relname::text, c.relreplident::text,"
    " ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid"
    " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),"
    " ARRAY(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a"
    " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid"
    " AND CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident"
    " ELSE false END)"
    " FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND n.nspname NOT LIKE 'pg_toast%'"
)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _key_match(
    columns: Sequence[str], keys: Sequence[tuple[Any, ...]], placeholder: Callable[[int], str]
) -> tuple[str, list[Any]]:
    """``(c1, c2) IN ((…), …)`` over bound parameters, and the parameters."""
    params = [value for key in keys for value in key]
    marks = iter(range(1, len(params) + 1))
    tuples = ", ".join(
        "(" + ", ".join(placeholder(next(marks)) for _ in columns) + ")" for _ in keys
    )
    names = ", ".join(map(_quoted, columns))
    return f"({names}) IN ({tuples})", params


_NONE: dict[str, Any] = {}


def _commit_time(line: str) -> float | None:
    """The timestamp of a ``COMMIT (at …)`` line, as seconds since the epoch."""
    start = line.find("(at ")
    if start < 0:
        return None
    try:
        return datetime.fromisoformat(line[start + 4 : line.rindex(")")]).timestamp()
    except ValueError:
        return None


class PostgresSource:
    """The replication slot ``slot`` of the database at ``dsn`` (a libpq-style URL)."""

    waits = True
    """:meth:`read` waits for the log itself: no pause between two reads."""

    def __init__(
        self, dsn: str, slot: str, *, batch_rows: int = 20_000, wait: float = 0.05
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.batch_rows = batch_rows
        self.wait = wait
        self.default_schema = "public"
        self._connection: Any = None
        self._stream: WalStream | None = None
        self._open: Transaction | None = None
        self._full_identity: dict[tuple[str, str], bool] = {}
        self._columns: dict[tuple[str, str], tuple[str, ...]] = {}
        self._column_sets: dict[tuple[str, str], frozenset[str]] = {}
        self._identity_columns: dict[tuple[str, str], tuple[str, ...]] = {}

    async def open(self) -> None:
        import asyncpg

        self._connection = connection = await asyncpg.connect(
            self.dsn,
            server_settings={
                "TimeZone": "UTC",
                "DateStyle": "ISO, YMD",
                "application_name": "fastrdb-capture",
            },
        )
        wal_level = await connection.fetchval("SHOW wal_level")
        if wal_level != "logical":
            raise CaptureSetupError(
                "wal_level",
                f"is {wal_level!r}; capture needs 'logical' (postgresql.conf, then a restart;"
                " RDS/Aurora: rds.logical_replication = 1; Cloud SQL: the flag"
                " cloudsql.logical_decoding = on)",
            )
        self.default_schema = await connection.fetchval("SELECT current_schema()") or "public"
        database = await connection.fetchval("SELECT current_database()")
        found = await connection.fetchrow(
            "SELECT plugin, slot_type, database FROM pg_replication_slots WHERE slot_name = $1",
            self.slot,
        )
        if found is None:
            await self._create_slot(connection)
        elif found["slot_type"] != "logical" or found["plugin"] != PLUGIN:
            raise CaptureSetupError(
                "slot",
                f"replication slot {self.slot!r} exists but is not a logical {PLUGIN} slot;"
                " choose another name with --slot",
            )
        elif found["database"] != database:
            raise CaptureSetupError(
                "slot",
                f"replication slot {self.slot!r} belongs to database {found['database']!r},"
                f" not {database!r}; choose another name with --slot",
            )
        await self._load_identities()
        partial = sorted(
            f"{schema}.{table}" for (schema, table), full in self._full_identity.items() if not full
        )
        if partial:
            log.warning(
                "capture_replica_identity_not_full",
                tables=partial[:20],
                count=len(partial),
                hint="ALTER TABLE … REPLICA IDENTITY FULL, so that an UPDATE or DELETE names"
                " the keys of the row's old values (without it, capture finds them by scanning"
                " the keyspace: see docs/capture.md)",
            )
        await self._start_stream()

    async def _start_stream(self) -> None:
        from psycopg.conninfo import make_conninfo

        conninfo = make_conninfo(
            self.dsn,
            replication="database",
            application_name="fastrdb-capture",
            options="-c TimeZone=UTC -c DateStyle=ISO,YMD",
        )
        self._open = None
        self._stream = WalStream(conninfo, self.slot, _OPTIONS)
        await self._stream.start()

    async def _create_slot(self, connection: Any) -> None:
        import asyncpg

        try:
            await connection.execute(
                "SELECT pg_create_logical_replication_slot($1, $2)", self.slot, PLUGIN
            )
        except asyncpg.InsufficientPrivilegeError as exc:
            raise CaptureSetupError(
                "privileges",
                f"cannot create replication slot {self.slot!r} ({exc}); the capture role needs"
                " the REPLICATION attribute (ALTER ROLE … WITH REPLICATION; RDS: GRANT"
                " rds_replication; Cloud SQL: ALTER USER … WITH REPLICATION)",
            ) from None
        except asyncpg.ConfigurationLimitExceededError as exc:
            raise CaptureSetupError(
                "max_replication_slots", f"no free replication slot ({exc}); raise it"
            ) from None
        except asyncpg.DuplicateObjectError:
            return  # another process created it meanwhile
        log.info("capture_slot_created", slot=self.slot, plugin=PLUGIN)

    async def _load_identities(self) -> None:
        rows = await self._connection.fetch(_IDENTITIES)
        self._full_identity = {(r[0], r[1]): r[2] == "f" for r in rows}
        self._columns = {(r[0], r[1]): tuple(r[3]) for r in rows}
        self._column_sets = {key: frozenset(names) for key, names in self._columns.items()}
        self._identity_columns = {(r[0], r[1]): tuple(r[4]) for r in rows}

    async def read(self) -> Batch:
        assert self._stream is not None
        messages = await self._stream.receive(self.wait, self.batch_rows)
        batch = Batch()
        transactions = batch.transactions
        opened = self._open  # a transaction may span two reads
        last_commit = None
        for lsn, data in messages:
            if data.startswith("table "):
                if opened is not None:
                    change = parse_change(data)
                    if change is not None:
                        opened.rows.append(change)
            elif data.startswith("BEGIN"):
                opened = Transaction()
            elif data.startswith("COMMIT"):
                if opened is not None:
                    opened.position = lsn
                    transactions.append(opened)
                    last_commit = data
                opened = None
        self._open = opened
        if transactions:
            batch.position = transactions[-1].position
            # Its commit time, for the lag the capture logs: the read's last transaction's
            # alone (the latest commit of the read; parsing each one's costs per commit).
            assert last_commit is not None
            transactions[-1].committed_at = _commit_time(last_commit)
            for transaction in transactions:
                await self._complete(transaction.rows)
        batch.drained = not self._stream.buffered()
        return batch

    async def _complete(self, rows: list[RowChange]) -> None:
        """Each of ``rows`` :meth:`_completed`, the tables' columns read again first when a
        row names a table or a column not known yet."""
        column_sets = self._column_sets
        for index, change in enumerate(rows):
            if change.operation not in ("update", "delete"):
                continue
            names = column_sets.get((change.schema, change.table))
            if (
                names is None
                or not (change.before or _NONE).keys() <= names
                or not (change.after or _NONE).keys() <= names
            ):
                await self._load_identities()  # a new table, or new columns
            rows[index] = self._completed(change)

    def _completed(self, change: RowChange) -> RowChange:
        """``change`` (an UPDATE or DELETE) with its pre-image complete when its table logs
        full old rows, else marked incomplete.

        With ``REPLICA IDENTITY FULL`` ``test_decoding`` leaves the NULL columns out of an old
        row: they are put back as None, so the keys of a NULL old value are named too. With
        another identity an UPDATE that kept the identity's columns logs no old row: those
        columns' old values are the new ones, and make the (partial) pre-image."""
        key = (change.schema, change.table)
        names = self._column_sets.get(key, frozenset())
        columns = self._columns.get(key, ())
        if change.before is None:
            after = change.after or {}
            identity = self._identity_columns.get(key, ())
            before = {name: after[name] for name in identity if name in after}
            return RowChange(change.schema, change.table, change.operation, before, after, False)
        if not self._full_identity.get(key, False):
            if not change.before_complete:
                return change
            return RowChange(
                change.schema, change.table, change.operation, change.before, change.after, False
            )
        if len(change.before) == len(names):
            return change  # no NULL column left out: the old row is whole as logged
        before = dict.fromkeys(columns)
        before.update(dict.fromkeys(change.after or ()))
        before.update(change.before)
        return RowChange(change.schema, change.table, change.operation, before, change.after)

    async def confirm(self, batch: Batch) -> None:
        if batch.position is not None and self._stream is not None:
            self._stream.confirm(batch.position)

    async def backlog(self) -> dict[str, Any]:
        behind = await self._connection.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
            " FROM pg_replication_slots WHERE slot_name = $1",
            self.slot,
        )
        await self._load_identities()
        return {"behind_bytes": behind}

    async def end(self) -> Any:
        """The server's flushed WAL position (every commit made before this call), asked on
        a connection of its own (the capture's own may be busy, or not open yet)."""
        import asyncpg

        connection = await asyncpg.connect(self.dsn)
        try:
            return int(await connection.fetchval(_FLUSHED))
        finally:
            await connection.close()

    def reached(self, end: Any) -> bool:
        stream = self._stream
        if stream is None:
            return False
        if stream.received >= end:
            return True
        stream.ping()  # the server answers with how far it has read its WAL
        return False

    async def fetch(
        self, schema: str, table: str, columns: Sequence[str], keys: Sequence[tuple[Any, ...]]
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        name = f"{_quoted(schema)}.{_quoted(table)}"
        for start in range(0, len(keys), _FETCH_BATCH):
            chunk = keys[start : start + _FETCH_BATCH]
            where, params = _key_match(columns, chunk, lambda n: f"${n}")
            rows = await self._connection.fetch(f"SELECT * FROM {name} WHERE {where}", *params)
            found += [dict(row) for row in rows]
        return found

    async def horizon(self) -> Any:
        """The server's WAL insert position: a commit is inserted into the WAL before it
        becomes visible (with ``synchronous_commit = off`` too, which makes it visible before
        it is flushed); the stream reaches it once it is flushed."""
        return int(await self._connection.fetchval(_INSERTED))

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close(timeout=2)
            except Exception:  # a dead connection: nothing to close
                connection.terminate()
