"""Checks of a ``FastRDB`` instance's set-up against its model, raising ``ConfigurationError``.

Placeholders of the key patterns and fields of the create/update schemas must be column
attributes of the model. The checks run at construction where the mapper already knows its
columns (declarative classes do), and again at first use, when every mapper is configured.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, get_args

from pydantic import BaseModel

from fastrdb.errors import ConfigurationError, FastRDBError
from fastrdb.keys import KeyPattern

__all__ = ["check_placeholders", "check_schemas", "key_pattern"]

LIST_PARAMETERS = frozenset({"page", "limit"})
"""Placeholders a list pattern may hold beside columns."""


def key_pattern(text: str, argument: str) -> KeyPattern:
    """``text`` parsed, or a ``ConfigurationError`` naming ``argument``."""
    if not isinstance(text, str):
        raise ConfigurationError(argument, f"must be a string, got {text!r}")
    try:
        return KeyPattern(text, argument=argument)
    except FastRDBError as exc:
        raise ConfigurationError(argument, exc.message) from None


def check_placeholders(
    model_name: str,
    columns: Collection[str],
    patterns: Iterable[tuple[str, KeyPattern | None]],
) -> None:
    """Every placeholder of each ``(argument, pattern)`` is one of ``columns`` (a list pattern
    may also hold ``{page}`` and ``{limit}``)."""
    for argument, pattern in patterns:
        if pattern is None:
            continue
        allowed = LIST_PARAMETERS if argument == "list_pattern" else frozenset()
        for field in pattern.fields:
            if field not in columns and field not in allowed:
                raise ConfigurationError(
                    argument,
                    f"placeholder {{{field}}} of {pattern.text!r} is not a column of {model_name}",
                    field=field,
                )


def check_schemas(model_name: str, columns: Collection[str], instance: Any) -> None:
    """The create and update schemas named in ``FastRDB[Model, Create, Update, Response]``
    (when the instance was built that way) hold only fields that are columns."""
    arguments = get_args(getattr(instance, "__orig_class__", None))
    if len(arguments) != 4:
        return
    for argument, schema in (("create_schema", arguments[1]), ("update_schema", arguments[2])):
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            check_schema_fields(model_name, columns, argument, schema)


def check_schema_fields(
    model_name: str, columns: Collection[str], argument: str, schema: type[BaseModel]
) -> None:
    """Every field ``schema.model_dump()`` writes is one of ``columns``."""
    for name, info in schema.model_fields.items():
        if info.exclude is True or name in columns:
            continue
        raise ConfigurationError(
            argument,
            f"field {name!r} of {schema.__name__} is not a column of {model_name}",
            field=name,
        )
