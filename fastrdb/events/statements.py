"""What an ``insert()``, ``update()`` or ``delete()`` run through a Session changes, read from
the database around the statement (``do_orm_execute``).

- UPDATE / DELETE: the rows its WHERE matches are read, locked, before it runs; an UPDATE's
  rows are read again by primary key after it (SET may hold SQL expressions, ``onupdate``
  applies). A SET that changes the primary key is evaluated in the same locked SELECT, so the
  rows are found again under their new keys.
- INSERT (``.values()``, parameter lists, every dialect's upsert): the rows already holding one
  of its primary or unique key values are read, locked, before an upsert runs; after it, the
  rows holding those values, the ones the upsert updated and the inserted primary keys.
Every one also marks its tables touched (pages drop), since it may change rows it cannot name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, cast, literal, or_
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from fastrdb.events.images import Row, read_by_identity, read_where
from fastrdb.events.shapes import Shape

__all__ = ["Statement", "param_sets", "statement_table"]

_UNKNOWN = object()


def statement_table(statement: Update | Delete | Insert) -> Table:
    table = statement.table
    if isinstance(table, Table):
        return table
    for element in getattr(table, "_from_objects", ()) or ():
        if isinstance(element, Table):
            return element
    raise TypeError(f"FastRDB cannot tell which table {statement} changes")


def param_sets(params: Any) -> list[Mapping[str, Any]]:
    if isinstance(params, Mapping):
        return [params] if params else []
    return list(params or ())


class Statement:
    """One DML statement about to run through a listened session."""

    def __init__(
        self, shape: Shape, statement: Update | Delete | Insert, params: list[Mapping[str, Any]]
    ) -> None:
        self.shape = shape
        self.statement = statement
        self.params = params
        self.before: list[Row] = []
        self._new_identity: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._insert_rows: list[dict[str, Any]] = []

    # -- UPDATE / DELETE --

    def _set_items(self) -> dict[str, Any]:
        """The SET clause by attribute key (values or SQL expressions)."""
        statement = self.statement
        items: list[tuple[Any, Any]] = list((getattr(statement, "_values", None) or {}).items())
        items += list(getattr(statement, "_ordered_values", None) or ())
        out: dict[str, Any] = {}
        for key, value in items:
            attribute = self.shape.key_of(key)
            if attribute is not None:
                out[attribute] = value
        return out

    def read_before(self, connection: Connection) -> None:
        shape = self.shape
        statement = self.statement
        if isinstance(statement, Insert):
            self._read_before_insert(connection, statement)
            return
        where = statement.whereclause
        by_primary_key = (
            isinstance(statement, Update)
            and where is None
            and self.params
            and all(all(key in values for key in shape.primary_key) for values in self.params)
        )
        if by_primary_key:  # ORM bulk UPDATE by primary key: one parameter set per row
            identities = [shape.identity(values) for values in self.params]
            self.before = list(read_by_identity(connection, shape, identities, lock=True).values())
            return
        extra: list[ColumnElement[Any]] = []
        new_key: list[str] = []
        if isinstance(statement, Update):
            sets = self._set_items()
            if any(key in sets for key in shape.primary_key):
                for key in shape.primary_key:
                    value = sets.get(key)
                    column = shape.column(key)
                    # Typed: a bare parameter in a select list is text to PostgreSQL.
                    expression = column if value is None else cast(_expression(value), column.type)
                    extra.append(expression.label(f"fastrdb_new_{key}"))
                    new_key.append(f"fastrdb_new_{key}")
        rows = read_where(connection, shape, where, lock=True, params=self.params, extra=extra)
        for row in rows:
            if new_key:
                self._new_identity[shape.identity(row)] = tuple(row.pop(k) for k in new_key)
        self.before = rows

    def read_after(self, connection: Connection, result: Any) -> list[Row]:
        """The rows as the statement left them (none for a DELETE)."""
        statement = self.statement
        if isinstance(statement, Delete):
            return []
        if isinstance(statement, Insert):
            return self._read_after_insert(connection, result)
        identities = [
            self._new_identity.get(identity, identity)
            for identity in (self.shape.identity(row) for row in self.before)
        ]
        if not identities:
            return []
        return list(read_by_identity(connection, self.shape, identities, lock=False).values())

    # -- INSERT --

    def _rows_given(self, statement: Insert) -> list[dict[str, Any]]:
        """Per row inserted, the literal values it is given, by attribute key."""
        shape = self.shape
        base: dict[str, Any] = {}
        for key, value in (getattr(statement, "_values", None) or {}).items():
            attribute = shape.key_of(key)
            if attribute is not None:
                base[attribute] = _literal(value)
        rows: list[dict[str, Any]] = []
        for multi in getattr(statement, "_multi_values", None) or ():
            for entry in multi:
                if isinstance(entry, Mapping):
                    row = dict(base)
                    for key, value in entry.items():
                        attribute = shape.key_of(key)
                        if attribute is not None:
                            row[attribute] = _literal(value)
                    rows.append(row)
        if not rows:
            rows = [base]
        if self.params:
            given = []
            for values in self.params:
                for row in rows:
                    merged = dict(row)
                    for key, value in values.items():
                        attribute = shape.key_of(key)
                        if attribute is not None:
                            merged[attribute] = _literal(value)
                    given.append(merged)
            rows = given
        return [{k: v for k, v in row.items() if v is not _UNKNOWN} for row in rows]

    def _conflicts(self) -> ColumnElement[bool] | None:
        """Rows holding any primary or unique key value of the rows being inserted."""
        clauses = []
        for keys in self.shape.unique_keys:
            values = [
                tuple(row[key] for key in keys)
                for row in self._insert_rows
                if all(key in row and row[key] is not None for key in keys)
            ]
            if values:
                clauses.append(self.shape.matching(keys, values))
        return or_(*clauses) if clauses else None

    def _read_before_insert(self, connection: Connection, statement: Insert) -> None:
        self._insert_rows = self._rows_given(statement)
        if getattr(statement, "_post_values_clause", None) is None:
            return  # a plain INSERT changes no existing row (it fails on a conflict)
        conflicts = self._conflicts()
        if conflicts is not None:
            self.before = read_where(connection, self.shape, conflicts, lock=True)

    def _read_after_insert(self, connection: Connection, result: Any) -> list[Row]:
        shape = self.shape
        identities = [shape.identity(row) for row in self.before]
        identities += _inserted_identities(result, len(shape.primary_key))
        clauses: list[ColumnElement[bool]] = []
        if identities:
            clauses.append(shape.by_primary_key(identities))
        conflicts = self._conflicts()
        if conflicts is not None:
            clauses.append(conflicts)
        if not clauses:
            return []
        return read_where(connection, shape, or_(*clauses), lock=False)

    def hints(self) -> list[dict[str, Any]]:
        """Values an INSERT was given, for rows the database reads could not name."""
        return self._insert_rows


def _literal(value: Any) -> Any:
    if isinstance(value, BindParameter):
        return value.effective_value
    if isinstance(value, ClauseElement):
        return _UNKNOWN
    return value


def _expression(value: Any) -> ColumnElement[Any]:
    return value if isinstance(value, ColumnElement) else literal(value)


def _inserted_identities(result: Any, width: int) -> list[tuple[Any, ...]]:
    """Primary keys the driver reports for the rows an INSERT added, where it reports them."""
    if not isinstance(result, CursorResult):
        return []
    try:
        rows: Sequence[Any] = result.inserted_primary_key_rows
    except (InvalidRequestError, AttributeError, TypeError):
        return []
    return [
        tuple(row)
        for row in rows
        if row is not None and len(row) == width and all(v is not None for v in row)
    ]
