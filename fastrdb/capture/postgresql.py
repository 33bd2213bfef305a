"""PostgreSQL's log through a logical replication slot: streamed, set up and watched with SQL.

The slot is created, and the server's settings checked, over an asyncpg connection; changes
are streamed from the slot over the replication protocol (:mod:`fastrdb.capture.walstream`,
``test_decoding`` text), each committed transaction pushed once as it commits, whole, in
commit order. The slot's confirmed position moves (a standby status update) to the end of
the last transaction read once its invalidation was delivered. A crash between the two
receives those transactions again on restart: at-least-once.
"""

from __future__ import annotations

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
_IDENTITIES = (
    "SELECT n.nspname::text, c.relname::text, c.relreplident::text,"
    " ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid"
    " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND n.nspname NOT LIKE 'pg_toast%'"
)


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
                " the keys of the row's old values",
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

    async def read(self) -> Batch:
        assert self._stream is not None
        messages = await self._stream.receive(self.wait, self.batch_rows)
        batch = Batch()
        for lsn, data in messages:  # a transaction may span two reads: self._open
            if data.startswith("BEGIN"):
                self._open = Transaction()
            elif data.startswith("COMMIT"):
                if self._open is not None:
                    self._open.committed_at = _commit_time(data)
                    self._open.position = lsn
                    batch.transactions.append(self._open)
                    batch.position = lsn
                self._open = None
            elif self._open is not None:
                change = parse_change(data)
                if change is not None:
                    self._open.rows.append(await self._completed(change))
        batch.drained = not self._stream.buffered()
        return batch

    async def _completed(self, change: RowChange) -> RowChange:
        """``change`` with its pre-image complete when its table logs full old rows, else
        marked incomplete.

        With ``REPLICA IDENTITY FULL`` ``test_decoding`` leaves the NULL columns out of an old
        row: they are put back as None, so the keys of a NULL old value are named too."""
        if change.operation not in ("update", "delete") or change.before is None:
            return change
        key = (change.schema, change.table)
        columns = self._columns.get(key)
        if columns is None or not set(change.before) <= set(columns):
            await self._load_identities()  # a new table, or new columns
            columns = self._columns.get(key, ())
        if not self._full_identity.get(key, False):
            if not change.before_complete:
                return change
            return RowChange(
                change.schema, change.table, change.operation, change.before, change.after, False
            )
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
