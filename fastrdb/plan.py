"""What a call on one model maps to: its checked, converted arguments, keys and WHERE clauses.

A :class:`Plan` is made once per ``FastRDB`` instance from its model, response schema and key
patterns. Per call it checks the arguments (mapped columns only, exact conversions, the
pattern's placeholders, paging bounds), formats the cache key and builds the WHERE clauses
with bound parameters; what a distinct call maps to is remembered, so the hit path of a hot
key does no checking or formatting at all. It also knows what an entry embeds (nested
response schemas) and how one read loads it. It never touches a session or Redis.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any, Generic, ParamSpec, TypeVar

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, bindparam, inspect, select
from sqlalchemy.orm import InstrumentedAttribute, Mapper

from fastrdb.cache.near import embeds_group, list_group
from fastrdb.errors import ConfigurationError, FastRDBError
from fastrdb.events.collector import table_name
from fastrdb.events.shapes import mapper_shape
from fastrdb.keys import KeyPattern, Namespace, encode_value, glob_covers, with_digest
from fastrdb.relations import Embedding, embedding
from fastrdb.schemes import Family, Scheme, SchemeKind
from fastrdb.settings import Settings
from fastrdb.setup_checks import check_placeholders, check_schema_fields, check_schemas, key_pattern
from fastrdb.values import (
    Converter,
    compares_as_text,
    convert_filters,
    converter_for,
    field_of,
)

__all__ = ["Columns", "ListPlan", "Plan", "RowPlan", "check_positive_int"]

ModelT = TypeVar("ModelT")
ResponseT = TypeVar("ResponseT", bound=BaseModel)
T = TypeVar("T")
P = ParamSpec("P")

MEMO_SIZE = 4096
"""Distinct argument sets of get/get_multi/count calls whose plans are remembered."""

RowPlan = tuple[str, str, dict[str, Any]]
"""A ``get``: the pattern's key, that key with a digest of any extra filters, the filters."""

ListPlan = tuple[str, list[InstrumentedAttribute[Any]], dict[str, Any]]
"""A ``get_multi``: its key, the ordering columns, the filters."""

CountPlan = tuple[str, dict[str, Any]]
"""A ``count``: its key, the filters."""


def _params(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The bound values of :meth:`Plan.where`'s clauses (a None filter is ``IS NULL``)."""
    return {f"fastrdb_{name}": value for name, value in kwargs.items() if value is not None}


def check_positive_int(name: str, value: Any) -> None:
    """``value`` is an ``int`` (not a ``bool``) of at least 1, else ``FastRDBError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FastRDBError(name, f"must be an integer, got {value!r}")
    if value < 1:
        raise FastRDBError(name, f"must be at least 1, got {value}")


class Columns:
    """The mapped columns of a model, looked up once."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        self.attributes: dict[str, InstrumentedAttribute[Any]] = {
            prop.key: getattr(mapper.class_, prop.key) for prop in mapper.column_attrs
        }
        self.python_types: dict[str, type | None] = {}
        for prop in mapper.column_attrs:
            try:
                self.python_types[prop.key] = prop.columns[0].type.python_type
            except NotImplementedError:
                self.python_types[prop.key] = None
        self.converters: dict[str, Converter] = {
            prop.key: converter_for(prop.columns[0]) for prop in mapper.column_attrs
        }
        self.columns = {prop.key: prop.columns[0] for prop in mapper.column_attrs}
        self.primary_key = [
            self.attributes[mapper.get_property_by_column(column).key]
            for column in mapper.primary_key
        ]


class Plan(Generic[ModelT, ResponseT]):
    """The keys, filters and reads of one model's calls (see the module's docstring).

    ``owner`` is the ``FastRDB`` instance (held weakly): at first use its generic arguments
    name the create and update schemas to check.
    """

    def __init__(
        self,
        owner: object,
        mapper: Mapper[Any],
        response_schema: type[ResponseT],
        pattern: str,
        list_pattern: str | None,
        invalidate_pattern_prefix: str | None,
        settings: Settings,
    ) -> None:
        self._owner = weakref.ref(owner)
        self.mapper = mapper
        self.model: type[ModelT] = mapper.class_
        self.name = mapper.class_.__name__
        self.response_schema = response_schema
        self.settings = settings
        self.table = table_name(mapper.local_table)
        self.row = key_pattern(pattern, "pattern")
        self.list = key_pattern(
            list_pattern
            if list_pattern is not None
            else f"{self.table}:page:{{page}}:limit:{{limit}}",
            "list_pattern",
        )
        self.prefix = (
            key_pattern(invalidate_pattern_prefix, "invalidate_pattern_prefix")
            if invalidate_pattern_prefix
            else None
        )
        # Declarative mappers know their columns before they are configured: check now.
        check_placeholders(self.name, mapper.columns.keys(), self._key_patterns())
        self.namespace = Namespace(settings.namespace)
        self.schemes_key = self.namespace.schemes(self.table)
        self.row_schemes = (self._scheme("row", self.row),)
        self.prefix_schemes = (self._scheme("prefix", self.prefix),) if self.prefix else ()
        self.list_group = list_group(self.table)
        self.context = {"model": self.name, "pattern": pattern}
        self.list_context = {"model": self.name, "pattern": self.list.text}
        self._memo: dict[tuple[Any, ...], Any] = {}
        self._where_cache: dict[tuple[tuple[str, bool], ...], tuple[ColumnElement[bool], ...]] = {}
        self._select_cache: dict[tuple[tuple[str, bool], ...], Select[Any]] = {}
        self._checked_schemas: set[type] = set()

    def _scheme(self, kind: SchemeKind, pattern: KeyPattern) -> Scheme:
        """``pattern`` as published, with each placeholder's column and type (for capture)."""
        columns = self.mapper.columns
        return Scheme(
            kind, pattern.text, tuple((name, field_of(columns[name])) for name in pattern.fields)
        )

    def _key_patterns(self) -> tuple[tuple[str, KeyPattern | None], ...]:
        return (
            ("pattern", self.row),
            ("list_pattern", self.list),
            ("invalidate_pattern_prefix", self.prefix),
        )

    # -- set-up done once, at first use (mappers may not be configured at construction) --

    @cached_property
    def columns(self) -> Columns:
        columns = Columns(self.mapper)
        check_placeholders(self.name, columns.attributes, self._key_patterns())
        check_schemas(self.name, columns.attributes, self._owner())
        return columns

    @cached_property
    def family(self) -> str:
        """The model's joined-table inheritance hierarchy as published for capture (a member
        of :meth:`Namespace.families`), or '' when its rows live in one table."""
        links = mapper_shape(self.mapper).links
        return Family(links).member() if links else ""

    @cached_property
    def embedding(self) -> Embedding:
        """What entries embed besides the model's own row (nested response schemas)."""
        return embedding(self.mapper, self.response_schema)

    @cached_property
    def embedded(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(the embedded tables' names, the registries an entry joins for them)."""
        names = tuple(table_name(table) for table in self.embedding.tables)
        return names, tuple(self.namespace.embeds(name) for name in names)

    @cached_property
    def near_groups(self) -> tuple[str, ...]:
        """The near-cache groups of the tables every entry embeds."""
        return tuple(embeds_group(name) for name in self.embedded[0])

    def select(self) -> Select[Any]:
        """``select(model)``, loading what the response schema embeds in the same read (the
        read's ``populate_existing`` refreshes those rows too)."""
        options = self.embedding.options
        return select(self.model).options(*options) if options else select(self.model)

    # -- argument checks --

    def check_columns(self, kwargs: Mapping[str, Any]) -> None:
        """Refuse any keyword that is not a mapped column (cheap: the hit path runs it)."""
        attributes = self.columns.attributes
        if attributes.keys() >= kwargs.keys():
            return
        unknown = next(name for name in kwargs if name not in attributes)
        raise FastRDBError(unknown, f"is not a column of {self.name}")

    def convert(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Checked column filters, each value in its column's Python type (exact conversions
        only, else ``FastRDBError`` naming the field): the SQL gets the type the column holds
        and the key text is what the writer formats from the database's value."""
        self.check_columns(kwargs)
        return convert_filters(self.columns.converters, kwargs)

    def require(self, pattern: KeyPattern, values: Mapping[str, Any]) -> None:
        """Every placeholder of ``pattern`` is among ``values``, else ``FastRDBError``."""
        missing = pattern.missing(values)
        if missing:
            raise FastRDBError(
                missing[0], f"placeholder {{{missing[0]}}} of {pattern.text!r} must be given"
            )

    def check_schema(self, argument: str, obj_in: Any) -> None:
        """Every field of ``obj_in``'s schema is a column (checked once per schema class)."""
        schema = type(obj_in)
        if schema in self._checked_schemas:
            return
        if not isinstance(obj_in, BaseModel):
            raise ConfigurationError(argument, f"must be a pydantic model, got {schema.__name__}")
        check_schema_fields(self.name, self.columns.attributes, argument, schema)
        self._checked_schemas.add(schema)

    def where(
        self, kwargs: Mapping[str, Any]
    ) -> tuple[tuple[ColumnElement[bool], ...], dict[str, Any]]:
        """WHERE clauses for checked column filters, and their bound values.

        The clauses use bound parameters and are built once per set of filter names (building
        SQL expressions costs more than a cache hit)."""
        shape = tuple((name, kwargs[name] is None) for name in kwargs)
        clauses = self._where_cache.get(shape)
        if clauses is None:
            attributes = self.columns.attributes
            clauses = self._where_cache[shape] = tuple(
                attributes[name].is_(None)
                if is_none
                else attributes[name] == bindparam(f"fastrdb_{name}")
                for name, is_none in shape
            )
        return clauses, _params(kwargs)

    def select_where(self, kwargs: Mapping[str, Any]) -> tuple[Select[Any], dict[str, Any]]:
        """:meth:`select` with :meth:`where`'s clauses, and their bound values. The statement
        is built once per set of filter names: SQLAlchemy then finds its compiled form without
        a new statement's cache key to work out (tens of microseconds a miss)."""
        shape = tuple((name, kwargs[name] is None) for name in kwargs)
        statement = self._select_cache.get(shape)
        if statement is None:
            statement = self._select_cache[shape] = self.select().where(*self.where(kwargs)[0])
        return statement, _params(kwargs)

    # -- what a call maps to, remembered per distinct call --

    def recall(
        self, memo: tuple[Any, ...], plan: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """What ``plan(*args, **kwargs)`` returned for an earlier call with the same ``memo``
        (the call's arguments and their types: ``1 == True``), else its result, remembered.
        An unhashable argument is planned every time."""
        try:
            known: T | None = self._memo.get(memo)
        except TypeError:
            return plan(*args, **kwargs)
        if known is None:
            known = plan(*args, **kwargs)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[memo] = known
        return known

    def row_key(self, kwargs: dict[str, Any]) -> RowPlan:
        """What a ``get`` with ``kwargs`` maps to."""
        memo = (*kwargs.items(), *map(type, kwargs.values()))
        return self.recall(memo, self._plan_row, kwargs)

    def _plan_row(self, kwargs: dict[str, Any]) -> RowPlan:
        filters = self.convert(kwargs)
        self.require(self.row, filters)
        base = self.row.format(filters)
        fields = self.row.fields
        extras = {name: value for name, value in filters.items() if name not in fields}
        return base, with_digest(base, extras), filters

    def list_key(
        self,
        limit: int,
        page: int,
        order_by: str | None,
        ascending: bool,
        kwargs: dict[str, Any],
    ) -> ListPlan:
        """What a ``get_multi`` with these arguments maps to."""
        call = (limit, page, order_by, ascending, *kwargs.values())
        memo = ("list", *kwargs, *call, *map(type, call))
        return self.recall(memo, self._plan_list, limit, page, order_by, ascending, kwargs)

    def _plan_list(
        self,
        limit: int,
        page: int,
        order_by: str | None,
        ascending: bool,
        kwargs: dict[str, Any],
    ) -> ListPlan:
        check_positive_int("limit", limit)
        check_positive_int("page", page)
        if limit > self.settings.max_limit:
            raise FastRDBError("limit", f"must be at most {self.settings.max_limit}, got {limit}")
        filters = self.convert(kwargs)
        columns = self.columns
        if order_by is None:
            ordering = list(columns.primary_key)
        else:
            attribute = columns.attributes.get(order_by) if isinstance(order_by, str) else None
            if attribute is None:
                raise FastRDBError("order_by", f"{order_by!r} is not a column of {self.name}")
            ordering = [attribute]
        params = {**filters, "page": page, "limit": limit}
        self.require(self.list, params)
        extras = {name: value for name, value in params.items() if name not in self.list.fields}
        if order_by is not None:
            extras["order_by"] = order_by
        if not ascending:
            extras["ascending"] = False
        return with_digest(self.list.format(params), extras), ordering, filters

    def count_key(self, kwargs: dict[str, Any]) -> CountPlan:
        """What a ``count`` with ``kwargs`` maps to."""
        memo = ("count", *kwargs.items(), *map(type, kwargs.values()))
        return self.recall(memo, self._plan_count, kwargs)

    def _plan_count(self, kwargs: dict[str, Any]) -> CountPlan:
        filters = self.convert(kwargs)
        return with_digest(self.namespace.count(self.table), filters), filters

    def narrowing(self, dialect: str, filters: Mapping[str, Any], key: str) -> str | None:
        """The expanded ``invalidate_pattern_prefix`` that may stand for this list entry, or None
        when the entry must be dropped by any change of the table.

        Narrowing needs every prefix placeholder among the filters, each filter value of its
        column's own Python type, each column one whose key text provably matches what the
        database compares (:func:`fastrdb.values.compares_as_text`: not a case-insensitive
        or padding collation, an Enum, a Decimal...), and the expansion to cover the key.
        Otherwise the page goes to the table-wide registry: correctness before savings.
        """
        prefix = self.prefix
        if prefix is None or not prefix.fields or prefix.missing(filters):
            return None
        columns = self.columns
        for field in prefix.fields:
            value = filters[field]
            if value is None or type(value) is not columns.python_types.get(field):
                return None
            if not compares_as_text(columns.columns[field], dialect):
                return None
        expanded = prefix.format(filters)
        return expanded if glob_covers(expanded, key) else None

    def rows_fit(self, rows: Sequence[Any], filters: Mapping[str, Any]) -> bool:
        """Whether every row's prefix fields encode like the filters (collations may differ)."""
        assert self.prefix is not None
        if not rows:
            return False
        wanted = {field: encode_value(filters[field]) for field in self.prefix.fields}
        return all(
            encode_value(getattr(row, field)) == text
            for row in rows
            for field, text in wanted.items()
        )

    # -- rows --

    def row_key_of(self, obj: Any) -> str | None:
        """The single-row key of a loaded instance, or None if a pattern field isn't loaded."""
        values = inspect(obj).dict
        if any(field not in values for field in self.row.fields):
            return None
        return self.row.format(values)

    def response(self, obj: Any) -> ResponseT:
        return self.response_schema.model_validate(obj, from_attributes=True)
