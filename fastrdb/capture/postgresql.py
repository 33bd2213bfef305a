"""PostgreSQL's log through a logical replication slot, polled over SQL with asyncpg.

Changes are read with ``pg_logical_slot_peek_changes`` (``test_decoding``), which leaves the
slot where it was; the slot is moved with ``pg_replication_slot_advance`` to the end of the
last transaction read, once its invalidation was delivered. A crash between the two re-reads
those transactions on restart: at-least-once. Decoding emits a transaction only once it has
committed, whole, in commit order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastrdb._logging import log
from fastrdb.capture.decoding import parse_change
from fastrdb.capture.rows import RowChange, Transaction
from fastrdb.capture.source import Batch, CaptureSetupError

__all__ = ["PostgresSource"]

PLUGIN = "test_decoding"

_PEEK = (
    "SELECT lsn::text, data FROM pg_logical_slot_peek_changes("
    "$1, NULL, $2, 'include-xids', '0', 'include-timestamp', '1')"
)
_IDENTITIES = (
    "SELECT n.nspname::text, c.relname::text, c.relreplident::text FROM pg_class c"
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

    def __init__(self, dsn: str, slot: str, *, batch_rows: int = 20_000) -> None:
        self.dsn = dsn
        self.slot = slot
        self.batch_rows = batch_rows
        self.default_schema = "public"
        self._connection: Any = None
        self._full_identity: dict[tuple[str, str], bool] = {}

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

    async def read(self) -> Batch:
        rows = await self._connection.fetch(_PEEK, self.slot, self.batch_rows)
        batch = Batch(drained=len(rows) < self.batch_rows)
        transaction: Transaction | None = None
        for lsn, data in rows:
            if data.startswith("BEGIN"):
                transaction = Transaction()
            elif data.startswith("COMMIT"):
                if transaction is not None:
                    transaction.committed_at = _commit_time(data)
                    batch.transactions.append(transaction)
                    batch.position = lsn
                transaction = None
            elif transaction is not None:
                change = parse_change(data)
                if change is not None:
                    transaction.rows.append(await self._completed(change))
        return batch

    async def _completed(self, change: RowChange) -> RowChange:
        """``change``, marked incomplete when its table logs less than full old rows."""
        if change.operation not in ("update", "delete") or not change.before_complete:
            return change
        key = (change.schema, change.table)
        if key not in self._full_identity:
            await self._load_identities()
        if self._full_identity.get(key, False):
            return change
        return RowChange(
            change.schema, change.table, change.operation, change.before, change.after, False
        )

    async def confirm(self, batch: Batch) -> None:
        if batch.position is not None:
            await self._connection.execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                self.slot,
                batch.position,
            )

    async def backlog(self) -> dict[str, Any]:
        behind = await self._connection.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
            " FROM pg_replication_slots WHERE slot_name = $1",
            self.slot,
        )
        await self._load_identities()
        return {"behind_bytes": behind}

    async def end(self) -> Any:
        return None

    def reached(self, end: Any) -> bool:
        return True  # a peek started after the call reads every commit before it

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close(timeout=2)
            except Exception:  # a dead connection: nothing to close
                connection.terminate()
