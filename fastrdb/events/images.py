"""Rows as the database holds them, read in the writer's transaction: the pre-image of a write
(under the lock the write takes anyway) and its post-image (read back after it).

Values come back through the columns' types, so they are in each column's Python type as the
database returns them, whatever the session held or the statement was given.

The write lock: PostgreSQL and MariaDB take it with ``SELECT … FOR UPDATE``. SQLite has no
row locks and ignores ``FOR UPDATE``, and its Python drivers (pysqlite, aiosqlite) open a
transaction only right before an INSERT, UPDATE or DELETE: a pre-image read before the flush's
first write would run outside any transaction, and another connection could commit a change to
the row between that read and the write. So on SQLite, when the driver has no transaction open,
a locked read first begins one with ``BEGIN IMMEDIATE``, which takes the database's write lock
(RESERVED) at once; the driver sees the transaction and sends no BEGIN of its own, and the
session's commit or rollback ends it. In a transaction that is already open the read cannot be
stale either: a write in it already holds the lock, and a transaction that has only read cannot
write after another connection committed (rollback journal: that commit waits for the reader;
WAL: the write fails with ``SQLITE_BUSY_SNAPSHOT``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.engine import Connection

from fastrdb.events.shapes import Shape

__all__ = ["Row", "hold_write_lock", "read_by_identity", "read_where"]

Row = dict[str, Any]

_BATCH = 500  # identities per SELECT


def read_by_identity(
    connection: Connection, shape: Shape, identities: Iterable[Sequence[Any]], *, lock: bool
) -> dict[tuple[Any, ...], Row]:
    """The rows of ``identities`` that exist, by identity; ``lock``: take their write lock."""
    wanted = list(dict.fromkeys(tuple(identity) for identity in identities))
    found: dict[tuple[Any, ...], Row] = {}
    if lock and wanted:
        hold_write_lock(connection)
    query = shape.by_identity(lock=lock)
    for start in range(0, len(wanted), _BATCH):
        parameters = shape.identity_parameters(wanted[start : start + _BATCH])
        for row in connection.execute(query, parameters):
            values = dict(row._mapping)
            found[shape.identity(values)] = values
    return found


def read_where(
    connection: Connection,
    shape: Shape,
    where: ColumnElement[bool] | None,
    *,
    lock: bool,
    params: Iterable[Mapping[str, Any]] = (),
    extra: Sequence[ColumnElement[Any]] = (),
) -> list[Row]:
    """The rows matching ``where`` (once per parameter set), with ``extra`` labelled columns."""
    query = shape.select_values(*extra)
    if where is not None:
        query = query.where(where)
    if lock:
        hold_write_lock(connection)
        query = shape.locked(query)
    rows: dict[tuple[Any, ...], Row] = {}
    for values in list(params) or [{}]:
        for row in connection.execute(query, dict(values)):
            mapping = dict(row._mapping)
            rows[shape.identity(mapping)] = mapping
    return list(rows.values())


def hold_write_lock(connection: Connection) -> None:
    """Make sure ``connection``'s transaction holds the write lock before a pre-image is read:
    on SQLite, begin it with ``BEGIN IMMEDIATE`` if the driver has none open (see above);
    elsewhere ``FOR UPDATE`` on the read itself takes the rows' locks."""
    if connection.dialect.name != "sqlite":
        return
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return  # every statement commits by itself: there is no transaction to lock
    driver = connection.connection.driver_connection
    if getattr(driver, "in_transaction", True) is False:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
