"""Whether a flush's UPDATE left a row exactly as its pre-image with the values the UPDATE sent,
so that its post-image is known without reading it back (one round trip less per flush).

It is, when all of these hold; anywhere else the post-image is read back:

- the database is PostgreSQL or SQLite, or MariaDB on an InnoDB table with the
  connection's ``sql_mode`` strict (``STRICT_TRANS_TABLES`` or ``STRICT_ALL_TABLES``) and
  without ``EMPTY_STRING_IS_NULL``: a value the column cannot store as sent is then an error,
  not a truncated, converted or NULL value. The ``sql_mode`` is read once per pooled
  connection (``SET SESSION sql_mode`` later on the same connection is not seen);
- the row's pre-image was read under the write lock in this flush, and the UPDATE changed no
  primary key column and has no version counter;
- every value the UPDATE sent is a plain Python value that the column stores and returns
  unchanged: ``None``, an ``int`` into an integer column, a ``str`` into a ``String`` or
  ``Text`` column, a ``bool`` into a ``Boolean``, a ``uuid.UUID`` into a ``Uuid`` (not a SQL
  expression, not a ``Numeric``, a date, an ``Enum`` or a ``TypeDecorator``);
- no table of the row has a column with an ``onupdate`` or ``server_onupdate`` default or a
  computed (generated) column, and the database reports no trigger, rule or generated column
  on them (on PostgreSQL, no partitions or inheritance children; on MariaDB, no column with
  ``ON UPDATE CURRENT_TIMESTAMP`` or anything else in ``information_schema.COLUMNS.EXTRA`` but
  ``auto_increment``). MySQL lists triggers only to an account with the ``TRIGGER``
  privilege, so on MySQL (not MariaDB) the post-image is always read back. The database is
  asked once per engine and table, in a savepoint of the writer's transaction; a trigger
  created while the process runs is seen after a restart.

A row the same flush writes again afterwards (a ``post_update``) is read back after all
(:mod:`fastrdb.events.folding` sees that statement).

Which columns the UPDATE sent follows SQLAlchemy's own rule: an attribute in the instance's
committed state whose value is not equal to the committed one (a value assigned equal to an
out-of-date copy's is not sent, and the database keeps the pre-image's).
"""

from __future__ import annotations

import uuid
import weakref
from functools import lru_cache
from typing import Any

from sqlalchemy import Column, Table, text, types
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import InstanceState
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.sql.elements import ClauseElement

from fastrdb.events.images import Row
from fastrdb.events.shapes import Shape

__all__ = ["known_post_image", "plain"]

_EXACT: dict[type[Any], type] = {
    types.Integer: int,
    types.INTEGER: int,
    types.BigInteger: int,
    types.BIGINT: int,
    types.SmallInteger: int,
    types.SMALLINT: int,
    types.String: str,
    types.VARCHAR: str,
    types.Text: str,
    types.TEXT: str,
    types.Unicode: str,
    types.UnicodeText: str,
    types.Boolean: bool,
    types.BOOLEAN: bool,
    types.Uuid: uuid.UUID,
    types.UUID: uuid.UUID,
}
"""Column type (exact class) → the Python type (exact class) that it stores and returns as is."""

_PROBES: dict[str, str] = {
    "postgresql": """
        SELECT c.relkind = 'r'
           AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid
                           AND NOT t.tgisinternal)
           AND NOT EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid
                           AND r.rulename <> '_RETURN')
           AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                           AND a.attgenerated <> '' AND NOT a.attisdropped)
           AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid)
        FROM pg_class c WHERE c.oid = to_regclass(:name)
    """,
    "sqlite": """
        SELECT (SELECT count(*) FROM sqlite_master
                WHERE type = 'trigger' AND tbl_name = :name COLLATE NOCASE)
             + (SELECT count(*) FROM sqlite_temp_master
                WHERE type = 'trigger' AND tbl_name = :name COLLATE NOCASE)
             + (SELECT count(*) FROM pragma_table_xinfo(:name) WHERE hidden IN (2, 3))
             = 0
    """,
}

_PROBES["mysql"] = _PROBES["mariadb"] = """
    SELECT EXISTS (SELECT 1 FROM information_schema.TABLES
                   WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE())
                   AND TABLE_NAME = :name AND ENGINE = 'InnoDB')
       AND NOT EXISTS (SELECT 1 FROM information_schema.TRIGGERS
                       WHERE EVENT_OBJECT_SCHEMA = COALESCE(:schema, DATABASE())
                       AND EVENT_OBJECT_TABLE = :name)
       AND NOT EXISTS (SELECT 1 FROM information_schema.COLUMNS
                       WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE())
                       AND TABLE_NAME = :name AND EXTRA NOT IN ('', 'auto_increment'))
"""
"""MariaDB lists a table's triggers to any account with a privilege on the table (MySQL only to
one with the TRIGGER privilege: there the post-image is always read back)."""

_STRICT_KEY = "fastrdb.strict_sql_mode"

_plain_tables: weakref.WeakKeyDictionary[Engine, dict[str, bool]] = weakref.WeakKeyDictionary()


def known_post_image(
    state: InstanceState[Any], shape: Shape, before: Row | None, connection: Connection
) -> Row | None:
    """The row as this flush's UPDATE left it, from its pre-image and the values sent; None
    where only reading it back can tell."""
    if before is None or connection.dialect.name not in _PROBES:
        return None
    mapper = state.mapper
    if mapper.version_id_col is not None:
        return None
    columns = dict(shape.columns)
    after = dict(before)
    for key, committed in state.committed_state.items():
        column = columns.get(key)
        if column is None:
            continue  # not a column (a relationship: its foreign keys are columns of their own)
        value = state.dict.get(key, NO_VALUE)
        if isinstance(value, ClauseElement) or hasattr(value, "__clause_element__"):
            return None
        if value is NO_VALUE or key in shape.primary_key:
            return None
        if state.manager[key].impl.is_equal(value, committed) is True:
            continue  # not sent: the row keeps what the pre-image read
        if not _stores_as_is(column, value):
            return None
        after[key] = value
    if not plain(connection, shape) or not _stores_as_sent(connection):
        return None
    return after


def _stores_as_sent(connection: Connection) -> bool:
    """Whether the connection stores a value its column cannot hold as sent as an error (and
    ``""`` as ``""``): always on PostgreSQL and SQLite (for the types :data:`_EXACT` admits);
    on MariaDB with a strict ``sql_mode`` without ``EMPTY_STRING_IS_NULL``, read once per
    pooled connection."""
    if connection.dialect.name not in ("mysql", "mariadb"):
        return True
    info = connection.connection.info
    strict: bool | None = info.get(_STRICT_KEY)
    if strict is None:
        mode = str(connection.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar() or "")
        flags = set(mode.upper().split(","))
        strict = bool(flags & {"STRICT_TRANS_TABLES", "STRICT_ALL_TABLES"}) and (
            "EMPTY_STRING_IS_NULL" not in flags
        )
        info[_STRICT_KEY] = strict
    return strict


def _stores_as_is(column: Column[Any], value: Any) -> bool:
    if value is None:
        return True
    column_type = column.type
    if isinstance(column_type, types.Uuid) and not column_type.as_uuid:
        return False
    return _EXACT.get(type(column_type)) is type(value)


def plain(connection: Connection, shape: Shape, *, by_metadata: bool = True) -> bool:
    """No table of ``shape`` has anything that may change a row beyond the values sent: no
    trigger, rule, generated column, partition or inheritance child in the database, and
    (``by_metadata``) no ``onupdate``, ``server_onupdate`` or computed column in the model."""
    known = _plain_tables.setdefault(connection.engine, {})
    for table in _tables(shape):
        if by_metadata and not _plain_by_metadata(table):
            return False
        name = table.fullname
        if name not in known:
            known[name] = _plain_in_database(connection, table)
        if not known[name]:
            return False
    return True


@lru_cache(maxsize=1024)
def _tables(shape: Shape) -> tuple[Table, ...]:
    """The tables of ``shape``'s columns (asked on every flush of one of its rows)."""
    tables: dict[str, Table] = {}
    for _, column in shape.columns:
        table = column.table
        if isinstance(table, Table):
            tables.setdefault(table.fullname, table)
    return tuple(tables.values())


def _plain_by_metadata(table: Table) -> bool:
    return not any(
        column.onupdate is not None
        or column.server_onupdate is not None
        or column.computed is not None
        for column in table.columns
    )


def _plain_in_database(connection: Connection, table: Table) -> bool:
    dialect = connection.dialect
    if dialect.name == "sqlite" and table.schema is not None:
        return False  # an attached database: not worth a probe of its own
    if dialect.name in ("mysql", "mariadb") and not getattr(dialect, "is_mariadb", False):
        return False  # MySQL hides triggers from accounts without the TRIGGER privilege
    name = (
        dialect.identifier_preparer.format_table(table)
        if dialect.name == "postgresql"
        else table.name
    )
    parameters: dict[str, str | None] = {"name": name}
    if dialect.name in ("mysql", "mariadb"):
        parameters["schema"] = table.schema
    try:
        with connection.begin_nested():
            return bool(connection.execute(text(_PROBES[dialect.name]), parameters).scalar())
    except DBAPIError:
        return False  # rolled back to the savepoint: the writer's transaction goes on
