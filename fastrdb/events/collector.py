"""Session hooks that record what each flush and bulk statement changes (nothing is sent here).

- ``after_flush``: inserted, updated and deleted instances, with the OLD values of changed
  attributes (still visible in attribute history at this point) and the NEW values.
- ``before_flush``: loads the values of instances about to be deleted whose attributes are
  expired, since after the flush their rows are gone.
- ``do_orm_execute``: bulk ``update()`` / ``delete()``: the matching rows are selected with the
  statement's WHERE in the same transaction before it runs, and read again by primary key
  after it, since its SET may hold SQL expressions. Bulk ``insert()`` records its parameters.

Values land in ``session.info`` as :class:`Changes`; the invalidator acts on them at commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, ColumnElement, Table, and_, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    UOWTransaction,
    attributes,
)
from sqlalchemy.sql.dml import Delete, Insert, Update

from fastrdb.events.bindings import CHANGES_KEY, binding_of
from fastrdb.events.changes import Changes

__all__ = ["after_flush", "before_flush", "changes_of", "do_orm_execute"]

_PRELOADED_KEY = "fastrdb.preloaded"


@dataclass(frozen=True, slots=True)
class Shape:
    """What the collector needs of a mapped class or table, computed once."""

    tables: tuple[str, ...]
    columns: tuple[tuple[str, Column[Any]], ...]
    """(attribute key, table column) for every plain column attribute."""
    primary_key: tuple[str, ...]
    """Attribute keys of the primary key columns."""

    def select_values(self) -> Any:
        return select(*(column.label(key) for key, column in self.columns))

    def identity(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(values[key] for key in self.primary_key)

    def by_primary_key(self, identities: Sequence[Sequence[Any]]) -> ColumnElement[bool]:
        columns = dict(self.columns)
        pk = [columns[key] for key in self.primary_key]
        if len(pk) == 1:
            return pk[0].in_([identity[0] for identity in identities])
        return or_(
            *(
                and_(*(column == value for column, value in zip(pk, identity, strict=True)))
                for identity in identities
            )
        )


_shapes: dict[Any, Shape] = {}


def mapper_shape(mapper: Mapper[Any]) -> Shape:
    """The shape of a mapped class (its own and its parents' tables)."""
    shape = _shapes.get(mapper)
    if shape is None:
        tables = tuple(dict.fromkeys(table_name(m.local_table) for m in mapper.iterate_to_root()))
        columns = tuple(
            (prop.key, prop.columns[0])
            for prop in mapper.column_attrs
            if isinstance(prop.columns[0], Column)
        )
        pk = tuple(mapper.get_property_by_column(column).key for column in mapper.primary_key)
        shape = _shapes[mapper] = Shape(tables, columns, pk)
    return shape


def table_shape(table: Table) -> Shape:
    """The shape of a table reached without a mapper (Core statements through a Session)."""
    shape = _shapes.get(table)
    if shape is None:
        shape = _shapes[table] = Shape(
            (table_name(table),),
            tuple((column.key, column) for column in table.columns),
            tuple(column.key for column in table.primary_key.columns),
        )
    return shape


def table_name(table: Any) -> str:
    return str(getattr(table, "fullname", None) or table.name)


def changes_of(session: Session) -> Changes:
    """The changes recorded so far in ``session``'s transaction, created on first use."""
    changes: Changes | None = session.info.get(CHANGES_KEY)
    if changes is None:
        changes = session.info[CHANGES_KEY] = Changes()
    return changes


def _identity(state: InstanceState[Any], mapper: Mapper[Any]) -> tuple[Any, ...]:
    if state.key is not None:
        return tuple(state.key[1])
    return tuple(mapper.primary_key_from_instance(state.obj()))


def _load(connection: Connection, shape: Shape, identity: Sequence[Any]) -> dict[str, Any]:
    row = connection.execute(shape.select_values().where(shape.by_primary_key([identity]))).first()
    return dict(row._mapping) if row is not None else {}


def before_flush(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    if binding_of(session) is None or not session.deleted:
        return
    preloaded: dict[InstanceState[Any], dict[str, Any]] = {}
    for obj in session.deleted:
        state = attributes.instance_state(obj)
        shape = mapper_shape(state.mapper)
        if any(key not in state.dict for key, _ in shape.columns):
            preloaded[state] = _load(session.connection(), shape, _identity(state, state.mapper))
    if preloaded:
        session.info[_PRELOADED_KEY] = preloaded


def after_flush(session: Session, flush_context: UOWTransaction) -> None:
    preloaded: dict[InstanceState[Any], dict[str, Any]] = session.info.pop(_PRELOADED_KEY, {})
    binding = binding_of(session)
    if binding is None:
        return
    changes = changes_of(session)
    refresh = binding.refresh
    for obj in session.new:
        _record_state(session, changes, attributes.instance_state(obj), preloaded, refresh)
    for obj in session.dirty:
        state = attributes.instance_state(obj)
        if state.committed_state:
            _record_state(session, changes, state, preloaded, refresh)
    for obj in session.deleted:
        _record_state(session, changes, attributes.instance_state(obj), preloaded, False)


def _record_state(
    session: Session,
    changes: Changes,
    state: InstanceState[Any],
    preloaded: Mapping[InstanceState[Any], Mapping[str, Any]],
    refresh: bool,
) -> None:
    shape = mapper_shape(state.mapper)
    current: dict[str, Any] = dict(preloaded.get(state, {}))
    for key, _ in shape.columns:
        if key in state.dict:
            current[key] = state.dict[key]
    if len(current) < len(shape.columns):
        current = {**_load(session.connection(), shape, _identity(state, state.mapper)), **current}
    previous = dict(current)
    for key in state.committed_state:
        if key in current:
            deleted = state.attrs[key].history.deleted
            if deleted:
                previous[key] = deleted[0]
    changes.add(shape.tables, current)
    if previous != current:
        changes.add(shape.tables, previous)
    if refresh:
        changes.note_written(state.class_, shape.identity(current), current)


def do_orm_execute(execute_state: ORMExecuteState) -> Any:
    if not (execute_state.is_update or execute_state.is_delete or execute_state.is_insert):
        return None
    session = execute_state.session
    binding = binding_of(session)
    if binding is None:
        return None
    statement = execute_state.statement
    if not isinstance(statement, Update | Delete | Insert):
        return None
    mapper = execute_state.bind_mapper
    shape = mapper_shape(mapper) if mapper is not None else table_shape(_table_of(statement))
    changes = changes_of(session)
    params = execute_state.parameters
    param_sets: list[Mapping[str, Any]]
    if isinstance(params, Mapping):
        param_sets = [params] if params else []
    else:
        param_sets = list(params or ())
    if isinstance(statement, Insert):
        changes.touch(shape.tables)
        for values in param_sets:
            changes.add(shape.tables, values)
        return None

    connection = session.connection()
    before = _rows_matching(connection, shape, statement, param_sets)
    result = execute_state.invoke_statement()
    changes.touch(shape.tables)
    for row in before:
        changes.add(shape.tables, row)
    if isinstance(statement, Update) and before:
        identities = [shape.identity(row) for row in before]
        after = connection.execute(shape.select_values().where(shape.by_primary_key(identities)))
        for new in after:
            values = dict(new._mapping)
            changes.add(shape.tables, values)
            if binding.refresh and mapper is not None:
                changes.note_written(mapper.class_, shape.identity(values), values)
    return result


def _table_of(statement: Update | Delete | Insert) -> Table:
    table = statement.table
    if not isinstance(table, Table):
        raise TypeError(f"FastRDB cannot tell which table {statement} changes")
    return table


def _rows_matching(
    connection: Connection,
    shape: Shape,
    statement: Update | Delete,
    param_sets: Iterable[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The rows ``statement`` is about to change, with every column's current value."""
    where = statement.whereclause
    param_sets = list(param_sets)
    by_primary_key = (
        isinstance(statement, Update)
        and where is None
        and param_sets
        and all(all(key in values for key in shape.primary_key) for values in param_sets)
    )
    if by_primary_key:
        # ORM bulk UPDATE by primary key: one parameter set per row.
        identities = [shape.identity(values) for values in param_sets]
        query = shape.select_values().where(shape.by_primary_key(identities))
        return [dict(row._mapping) for row in connection.execute(query.with_for_update())]
    query = shape.select_values().select_from(statement.table)
    if where is not None:
        query = query.where(where)
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for values in param_sets or [{}]:
        for row in connection.execute(query.with_for_update(), dict(values)):
            mapping = dict(row._mapping)
            rows[shape.identity(mapping)] = mapping
    return list(rows.values())
