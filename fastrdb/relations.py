"""What a response schema embeds: the tables behind its nested fields, and how to load them.

A response schema may fill a field from a relationship (``author: AuthorOut`` over
``Book.author``): every cached entry of such a schema (a row, a page of rows) then holds rows
of other tables, and a commit that changes one of them must drop the entry. This module walks
the schema against the model's mapper, recursively through nested models, and answers:

- which tables the entries embed rows of (related tables, association tables, tables a
  relationship's join condition or a SQL-expression column reads);
- the loader options that load every nested relationship in the read itself (``selectinload``
  chains), so an ``AsyncSession`` never lazy-loads while the response is built.

A field it cannot trace — read from a Python property, a hybrid, an association proxy, or a
relationship whose field type is not a pydantic model — is refused with a ``ConfigurationError``
naming ``response_schema`` and the field: FastRDB could not tell when such a value changes, and
would serve it stale. That is a mistake in the set-up, never the fault of a request.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo
from sqlalchemy import Column, Table
from sqlalchemy.orm import (
    ColumnProperty,
    CompositeProperty,
    Mapper,
    RelationshipProperty,
    SynonymProperty,
    selectinload,
)
from sqlalchemy.orm.strategy_options import _AbstractLoad
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.util import find_tables

from fastrdb.errors import ConfigurationError

__all__ = ["Embedding", "embedding"]


@dataclass(frozen=True, slots=True)
class Embedding:
    """What the entries of one response schema embed besides the model's own row."""

    tables: tuple[Table, ...]
    """Tables whose rows (any of them) may appear in an entry: a change of one drops it."""
    options: tuple[_AbstractLoad, ...]
    """Loader options that load every nested relationship with the read."""


def embedding(mapper: Mapper[Any], schema: type[BaseModel]) -> Embedding:
    """Walk ``schema`` against ``mapper`` (configured); raise ``ConfigurationError`` naming a
    field whose value cannot be traced to columns and relationships."""
    tables: dict[Table, None] = {}
    options = _walk(mapper, schema, "", (), tables)
    return Embedding(tuple(tables), tuple(options))


def _walk(
    mapper: Mapper[Any],
    schema: type[BaseModel],
    prefix: str,
    stack: tuple[tuple[Mapper[Any], type[BaseModel]], ...],
    tables: dict[Table, None],
) -> list[_AbstractLoad]:
    options: list[_AbstractLoad] = []
    own_tables = {m.local_table for m in mapper.iterate_to_root()}
    for name, field in schema.model_fields.items():
        where = prefix + name
        for attribute in _attributes_read(schema, name, field, where):
            prop = _property(mapper, attribute)
            if prop is None:
                if _defined_on(mapper.class_, attribute):
                    raise _refused(
                        where,
                        f"is read from {mapper.class_.__name__}.{attribute}, which is not a "
                        "mapped column or relationship: FastRDB cannot tell when it changes "
                        "(compute it in the schema, e.g. a pydantic computed_field)",
                    )
                continue  # not on the model: the field's default, a constant
            if isinstance(prop, ColumnProperty):
                for column in prop.columns:
                    if not (isinstance(column, Column) and column.table in own_tables):
                        tables.update(dict.fromkeys(_tables_in(column)))
            elif isinstance(prop, RelationshipProperty):
                options.append(_relationship(mapper, prop, field, where, stack, schema, tables))
            elif not isinstance(prop, CompositeProperty):
                raise _refused(
                    where,
                    f"is read from {mapper.class_.__name__}.{attribute} "
                    f"({type(prop).__name__}), which FastRDB cannot trace",
                )
    return options


def _relationship(
    mapper: Mapper[Any],
    prop: RelationshipProperty[Any],
    field: FieldInfo,
    where: str,
    stack: tuple[tuple[Mapper[Any], type[BaseModel]], ...],
    schema: type[BaseModel],
    tables: dict[Table, None],
) -> _AbstractLoad:
    """Record what a relationship field embeds; return the option that loads it."""
    nested = list(dict.fromkeys(_models_in(field.annotation)))
    if not nested:
        raise _refused(
            where,
            f"is filled from the relationship {mapper.class_.__name__}.{prop.key}: give it a "
            "pydantic model type (or a list of one) so FastRDB can trace what it embeds",
        )
    if prop.lazy in ("dynamic", "write_only"):
        raise _refused(
            where,
            f"is filled from {mapper.class_.__name__}.{prop.key}, a {prop.lazy} relationship, "
            "which cannot be loaded with the row",
        )
    target = prop.mapper
    parent_tables = {m.local_table for m in mapper.iterate_to_root()}
    tables.update(dict.fromkeys(_tables_in(m.local_table for m in target.iterate_to_root())))
    for clause in (prop.secondary, prop.primaryjoin, prop.secondaryjoin):
        if clause is not None:
            tables.update(dict.fromkeys(t for t in _tables_in(clause) if t not in parent_tables))
    below = (*stack, (mapper, schema))
    loader = selectinload(getattr(mapper.class_, prop.key))
    nested_options: list[_AbstractLoad] = []
    for model in nested:
        if (target, model) in below:
            raise _refused(
                where,
                f"nests {model.__name__} inside itself: a recursive response schema cannot be "
                "loaded in one read",
            )
        nested_options.extend(_walk(target, model, where + ".", below, tables))
    return loader.options(*nested_options) if nested_options else loader


def _refused(where: str, message: str) -> ConfigurationError:
    """The refusal of the response schema's field ``where`` (dotted through nested models)."""
    return ConfigurationError("response_schema", f"field {where!r} {message}", field=where)


def _attributes_read(schema: type[BaseModel], name: str, field: FieldInfo, where: str) -> list[str]:
    """The model attributes pydantic may read a field from (``from_attributes``)."""
    alias = field.validation_alias if field.validation_alias is not None else field.alias
    read: list[str] = []
    if isinstance(alias, str):
        read.append(alias)
    elif isinstance(alias, AliasChoices) and all(isinstance(c, str) for c in alias.choices):
        read.extend(typing.cast(list[str], alias.choices))
    elif alias is not None:
        raise _refused(where, "reads through an alias path, which FastRDB cannot trace")
    config = schema.model_config
    if not read or config.get("populate_by_name") or config.get("validate_by_name"):
        read.append(name)
    return list(dict.fromkeys(read))


def _property(mapper: Mapper[Any], attribute: str) -> Any:
    """The mapper property behind ``attribute`` (synonyms followed), or None."""
    seen: set[str] = set()
    while attribute not in seen:
        seen.add(attribute)
        if not mapper.has_property(attribute):
            return None
        prop = mapper.get_property(attribute)
        if not isinstance(prop, SynonymProperty):
            return prop
        attribute = prop.name
    return None


def _defined_on(cls: type, attribute: str) -> bool:
    """Whether the class defines ``attribute`` (without running a descriptor: a hybrid's
    class-level expression may fail outside a query)."""
    missing = object()
    return inspect.getattr_static(cls, attribute, missing) is not missing


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """Pydantic models anywhere in a field's type (``X``, ``X | None``, ``list[X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    if isinstance(annotation, types.GenericAlias) or typing.get_origin(annotation) is not None:
        for argument in typing.get_args(annotation):
            yield from _models_in(argument)


def _tables_in(clauses: Any) -> Iterable[Table]:
    """The tables a clause (or an iterable of clauses) reads, in a stable order."""
    found: dict[Table, None] = {}
    for clause in (clauses,) if isinstance(clauses, ClauseElement) else clauses:
        for table in find_tables(clause, check_columns=True, include_joins=True):
            if isinstance(table, Table):
                found[table] = None
    return found
