"""What the collector needs to know of a mapped hierarchy or a table: its columns by attribute
key, its tables, and how to select a row's values across them (pure; computed once).

A row is identified by its hierarchy's base mapper and primary key: a ``Manager`` written
through ``Employee`` (or the reverse) is the same row, and its changes are recorded for every
table of the hierarchy, so patterns published by the base's and the subclasses' ``FastRDB``
instances all meet it. Values are keyed by attribute key (``email_addr``), never by column
name (``mail``), because patterns name attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BindParameter,
    Column,
    ColumnElement,
    FromClause,
    Select,
    Table,
    and_,
    bindparam,
    or_,
    select,
    tuple_,
)
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.mapper import _all_registries
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression

__all__ = ["Shape", "mapper_shape", "table_name", "table_shape"]


def table_name(table: Any) -> str:
    return str(getattr(table, "fullname", None) or table.name)


@dataclass(frozen=True, slots=True, eq=False)
class Shape:
    """A row kind: its tables, (attribute key, column) pairs and primary key attributes."""

    tables: tuple[str, ...]
    columns: tuple[tuple[str, Column[Any]], ...]
    primary_key: tuple[str, ...]
    selectable: FromClause
    """Where the columns are selected from: the base table joined to the subclass tables."""
    lock_table: Table
    """The table whose row a write locks (the hierarchy's base table)."""
    unique_keys: tuple[tuple[str, ...], ...]
    """Attribute keys of the primary key and of every unique constraint or index."""
    by_column: dict[Column[Any], str] = field(default_factory=dict)
    links: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Joined-table inheritance: per table of the hierarchy, the names of its columns that
    hold the base table's primary key (in the base key's order). Empty for one table, or when
    a join condition does not pair every key column."""
    _by_identity: dict[bool, Select[Any]] = field(default_factory=dict, compare=False)

    IDENTITIES = "fastrdb_identities"
    """The expanding parameter of :meth:`by_identity`: a list of primary key tuples."""

    def key_of(self, key: Any) -> str | None:
        """The attribute key a statement's key (attribute, column name or Column) stands for."""
        if isinstance(key, str):
            if key in self.attribute_keys:
                return key
            for column, attribute in self.by_column.items():
                if column.key == key or column.name == key:
                    return attribute
            return None
        element = key.__clause_element__() if hasattr(key, "__clause_element__") else key
        if isinstance(element, Column):
            return self.by_column.get(element)
        return None

    @property
    def attribute_keys(self) -> frozenset[str]:
        return frozenset(key for key, _ in self.columns)

    def column(self, key: str) -> Column[Any]:
        return dict(self.columns)[key]

    def select_values(self, *extra: ColumnElement[Any]) -> Select[Any]:
        return select(*(column.label(key) for key, column in self.columns), *extra).select_from(
            self.selectable
        )

    def locked(self, query: Select[Any]) -> Select[Any]:
        """``query`` taking the write lock of the rows it reads (no-op on SQLite)."""
        if len(self.tables) > 1 and self.selectable is not self.lock_table:
            # PostgreSQL refuses FOR UPDATE on the nullable side of an outer join.
            return query.with_for_update(of=self.lock_table)
        return query.with_for_update()

    def identity(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(values[key] for key in self.primary_key)

    def by_identity(self, *, lock: bool) -> Select[Any]:
        """The rows whose primary key is in the parameter :attr:`IDENTITIES` (locked or not),
        built once: the same statement object each time, so SQLAlchemy's compiled cache is hit
        without computing its cache key again."""
        query = self._by_identity.get(lock)
        if query is None:
            columns = dict(self.columns)
            keys = [columns[key] for key in self.primary_key]
            parameter: BindParameter[Any] = bindparam(self.IDENTITIES, expanding=True)
            if len(keys) == 1:
                where = keys[0].in_(parameter)
            else:
                where = tuple_(*keys).in_(parameter)
            query = self.select_values().where(where)
            if lock:
                query = self.locked(query)
            self._by_identity[lock] = query
        return query

    def identity_parameters(self, identities: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
        """The parameters of :meth:`by_identity` for ``identities``."""
        if len(self.primary_key) == 1:
            return {self.IDENTITIES: [identity[0] for identity in identities]}
        return {self.IDENTITIES: list(identities)}

    def by_primary_key(self, identities: Sequence[Sequence[Any]]) -> ColumnElement[bool]:
        return self.matching(self.primary_key, identities)

    def matching(
        self, keys: Sequence[str], value_sets: Sequence[Sequence[Any]]
    ) -> ColumnElement[bool]:
        columns = dict(self.columns)
        chosen = [columns[key] for key in keys]
        if len(chosen) == 1:
            return chosen[0].in_([values[0] for values in value_sets])
        return or_(
            *(
                and_(*(column == value for column, value in zip(chosen, values, strict=True)))
                for values in value_sets
            )
        )


_shapes: dict[Any, Shape] = {}


def mapper_shape(mapper: Mapper[Any]) -> Shape:
    """The shape of a mapped class's whole inheritance hierarchy."""
    shape = _shapes.get(mapper)
    if shape is None:
        base = mapper.base_mapper
        shape = _shapes.get(base)
        if shape is None:
            shape = _shapes[base] = _hierarchy_shape(base)
        _shapes[mapper] = shape
    return shape


def _hierarchy_shape(base: Mapper[Any]) -> Shape:
    mappers = list(base.self_and_descendants)
    base_table = base.local_table
    assert isinstance(base_table, Table)
    selectable: FromClause = base_table
    tables: dict[str, Table] = {}
    for mapper in mappers:
        local = mapper.local_table
        if not isinstance(local, Table) or table_name(local) in tables:
            continue
        tables[table_name(local)] = local
        if local is not base_table and mapper.inherit_condition is not None:
            selectable = selectable.outerjoin(local, mapper.inherit_condition)
    columns: dict[str, Column[Any]] = {}
    by_column: dict[Column[Any], str] = {}
    for mapper in mappers:
        for prop in mapper.column_attrs:
            owned = [column for column in prop.columns if isinstance(column, Column)]
            if not owned:
                continue
            columns.setdefault(prop.key, owned[0])
            for column in owned:
                by_column.setdefault(column, prop.key)
    primary_key = tuple(base.get_property_by_column(column).key for column in base.primary_key)
    unique: dict[tuple[str, ...], None] = {primary_key: None}
    for table in tables.values():
        for keys in _unique_column_sets(table):
            attributes = tuple(by_column.get(column) for column in keys)
            if all(attributes):
                unique[tuple(a for a in attributes if a is not None)] = None
    return Shape(
        tables=tuple(tables),
        columns=tuple(columns.items()),
        primary_key=primary_key,
        selectable=selectable,
        lock_table=base_table,
        unique_keys=tuple(unique),
        by_column=by_column,
        links=_links(base_table, tables, mappers),
    )


def _links(
    base_table: Table, tables: Mapping[str, Table], mappers: Sequence[Mapper[Any]]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Per table, its columns equal to the base table's primary key columns through the
    hierarchy's join conditions (``manager.id = employee.id``, transitively)."""
    if len(tables) < 2:
        return ()
    same: dict[Column[Any], set[Column[Any]]] = {}

    def join(a: Column[Any], b: Column[Any]) -> None:
        group = same.get(a, {a}) | same.get(b, {b})
        for column in group:
            same[column] = group

    for mapper in mappers:
        condition = mapper.inherit_condition
        if condition is None:
            continue
        for element in visitors.iterate(condition):
            if (
                isinstance(element, BinaryExpression)
                and element.operator is operators.eq
                and isinstance(element.left, Column)
                and isinstance(element.right, Column)
            ):
                join(element.left, element.right)
    links: list[tuple[str, tuple[str, ...]]] = []
    for name, table in tables.items():
        columns: list[str] = []
        for key in base_table.primary_key.columns:
            if table is base_table:
                columns.append(key.name)
                continue
            found = [c for c in same.get(key, ()) if c.table is table]
            if not found:
                return ()
            columns.append(found[0].name)
        links.append((name, tuple(columns)))
    return tuple(links)


def _unique_column_sets(table: Table) -> list[tuple[Column[Any], ...]]:
    from sqlalchemy import UniqueConstraint

    sets = [tuple(table.primary_key.columns)]
    sets += [(column,) for column in table.columns if column.unique]
    sets += [
        tuple(constraint.columns)
        for constraint in table.constraints
        if isinstance(constraint, UniqueConstraint)
    ]
    sets += [
        tuple(c for c in index.columns if isinstance(c, Column))
        for index in table.indexes
        if index.unique and all(isinstance(c, Column) for c in index.columns)
    ]
    return [columns for columns in sets if columns]


def table_shape(table: Table) -> Shape:
    """The shape of a table reached by a Core statement through a Session: its mapped
    hierarchy's when some mapper maps it (attribute keys, not column names), else its own."""
    shape = _shapes.get(table)
    if shape is None:
        mapper = _mapper_of(table)
        if mapper is not None:
            shape = mapper_shape(mapper)
        else:
            by_column = {column: column.key for column in table.columns}
            pk = tuple(column.key for column in table.primary_key.columns)
            unique = {pk: None}
            for keys in _unique_column_sets(table):
                unique[tuple(column.key for column in keys)] = None
            shape = Shape(
                tables=(table_name(table),),
                columns=tuple((column.key, column) for column in table.columns),
                primary_key=pk,
                selectable=table,
                lock_table=table,
                unique_keys=tuple(unique),
                by_column=by_column,
            )
        _shapes[table] = shape
    return shape


def _mapper_of(table: Table) -> Mapper[Any] | None:
    """The base-most mapper whose own table is ``table``, if any."""
    found: list[Mapper[Any]] = []
    for registry in _all_registries():
        for mapper in registry.mappers:
            if mapper.local_table is table:
                found.append(mapper)
    if not found:
        return None
    return min(found, key=lambda mapper: len(list(mapper.iterate_to_root())))
