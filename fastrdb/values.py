"""Filter values into their column's Python type: exactly, or a ``FastRDBError`` naming the field.

A value from a query string (``author_id="1"``) must reach the database as the type the column
holds, and its key text must be the text the writer formats from the value the database
returns: ``get(id="1")`` and ``get(id=1)`` select the same row, so they share one entry.
A conversion is done only when it is exact (``"1"`` → ``1``, never ``"1.5"`` → ``1``); anything
else is refused before any SQL is built, so no driver error ever reaches the caller.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Column
from sqlalchemy import types as sqltypes

from fastrdb.errors import FastRDBError
from fastrdb.schemes import Field

__all__ = ["Converter", "compares_as_text", "convert_filters", "converter_for", "field_of"]

Converter = Callable[[str, Any], Any]
"""``(field, value) -> value in the column's Python type``; ``None`` is passed through."""

_INTEGER = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


def _refuse(field: str, value: Any, wanted: str) -> FastRDBError:
    return FastRDBError(field, f"must be {wanted}, got {type(value).__name__} {value!r}")


def _to_int(field: str, value: Any) -> Any:
    if type(value) is int or value is None:
        return value
    if isinstance(value, bool | enum.Enum):
        raise _refuse(field, value, "an integer")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, float | Decimal) and value == value and value == int(value):
        return int(value)
    raise _refuse(field, value, "an integer")


def _to_bool(field: str, value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _refuse(field, value, "a boolean (true/false, 1/0)")


def _to_str(field: str, value: Any) -> Any:
    if type(value) is str or value is None:
        return value
    if isinstance(value, enum.Enum) and isinstance(value.value, str):
        return value.value
    if isinstance(value, str):
        return str(value)
    if type(value) is int:
        return str(value)
    raise _refuse(field, value, "a string")


def _to_decimal(field: str, value: Any) -> Any:
    if type(value) is Decimal or value is None:
        return value
    if isinstance(value, bool):
        raise _refuse(field, value, "a decimal number")
    try:
        if isinstance(value, int):
            return Decimal(int(value))
        if isinstance(value, float):
            return Decimal(repr(value))
        if isinstance(value, str):
            converted = Decimal(value.strip())
            if converted.is_finite():
                return converted
    except InvalidOperation:
        pass
    raise _refuse(field, value, "a decimal number")


def _to_float(field: str, value: Any) -> Any:
    if type(value) is float or value is None:
        return value
    if isinstance(value, bool):
        raise _refuse(field, value, "a number")
    if isinstance(value, int | Decimal):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _refuse(field, value, "a number")


def _to_uuid(field: str, value: Any) -> Any:
    if isinstance(value, uuid.UUID) or value is None:
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            pass
    raise _refuse(field, value, "a UUID")


def _to_uuid_text(field: str, value: Any) -> Any:
    """A ``Uuid(as_uuid=False)`` column: the database returns the lower-case hyphenated form."""
    if value is None:
        return value
    return str(_to_uuid(field, value))


def _to_datetime(field: str, value: Any) -> Any:
    if isinstance(value, datetime) or value is None:
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _refuse(field, value, "an ISO 8601 date and time")


def _to_date(field: str, value: Any) -> Any:
    if (isinstance(value, date) and not isinstance(value, datetime)) or value is None:
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _refuse(field, value, "an ISO 8601 date")


def _to_time(field: str, value: Any) -> Any:
    if isinstance(value, time) or value is None:
        return value
    if isinstance(value, str):
        try:
            return time.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _refuse(field, value, "an ISO 8601 time")


def _to_enum(enum_class: type[enum.Enum]) -> Converter:
    names = ", ".join(enum_class.__members__)

    def convert(field: str, value: Any) -> Any:
        if isinstance(value, enum_class) or value is None:
            return value
        if isinstance(value, str) and value in enum_class.__members__:
            return enum_class.__members__[value]
        try:
            return enum_class(value)
        except (ValueError, TypeError):
            raise FastRDBError(field, f"must be one of {names}, got {value!r}") from None

    return convert


def _as_is(field: str, value: Any) -> Any:
    return value


_BY_PYTHON_TYPE: dict[type, Converter] = {
    int: _to_int,
    bool: _to_bool,
    str: _to_str,
    Decimal: _to_decimal,
    float: _to_float,
    uuid.UUID: _to_uuid,
    datetime: _to_datetime,
    date: _to_date,
    time: _to_time,
}


def converter_for(column: Column[Any] | Any) -> Converter:
    """How filter values of ``column`` become the column's Python type (identity when the
    type has no Python type FastRDB knows, e.g. JSON)."""
    column_type = getattr(column, "type", None)
    if isinstance(column_type, sqltypes.TypeDecorator):
        return _as_is  # its own process_bind_param decides what it accepts
    if isinstance(column_type, sqltypes.Uuid) and not column_type.as_uuid:
        return _to_uuid_text
    try:
        python_type = column_type.python_type if column_type is not None else None
    except NotImplementedError:
        return _as_is
    if isinstance(python_type, type) and issubclass(python_type, enum.Enum):
        return _to_enum(python_type)
    if python_type is None:
        return _as_is
    return _BY_PYTHON_TYPE.get(python_type, _as_is)


def convert_filters(
    converters: Mapping[str, Converter], values: Mapping[str, Any]
) -> dict[str, Any]:
    """Every value of ``values`` converted by its field's converter (unknown fields as is)."""
    return {
        name: converters[name](name, value) if name in converters else value
        for name, value in values.items()
    }


_BINARY_COLLATIONS = {
    "postgresql": frozenset({"C", "POSIX", "ucs_basic", "pg_c_utf8"}),
    "sqlite": frozenset({"BINARY"}),
}


def compares_as_text(column: Column[Any] | Any, dialect: str) -> bool:
    """Whether two values of ``column`` are equal in the database's WHERE exactly when their
    key text (:func:`fastrdb.keys.encode_value` of the values it returns) is equal.

    Integers, booleans and UUIDs are. Strings only on PostgreSQL and SQLite with the default
    (deterministic, binary) comparison: MariaDB's collations ignore case or trailing spaces,
    ``CHAR`` pads. Enums, decimals, floats and date/time values are not assumed to be (their
    text may differ from what the database compares, e.g. ``"RED"`` against ``Color.RED``).
    """
    column_type = getattr(column, "type", None)
    if column_type is None or isinstance(column_type, sqltypes.TypeDecorator):
        return False
    if isinstance(column_type, sqltypes.Boolean | sqltypes.Uuid):
        return True
    if isinstance(column_type, sqltypes.Integer):
        return True
    if (
        isinstance(column_type, sqltypes.Enum | sqltypes.CHAR)
        or not isinstance(column_type, sqltypes.String)
        or type(column_type).__name__.upper() == "CITEXT"  # case-insensitive by design
    ):
        return False
    binary = _BINARY_COLLATIONS.get(dialect)
    if binary is None:
        return False
    collation = column_type.collation
    return collation is None or collation in binary


_KINDS: dict[type, str] = {
    int: "int",
    bool: "bool",
    str: "str",
    Decimal: "dec",
    float: "float",
    uuid.UUID: "uuid",
    datetime: "datetime",
    date: "date",
    time: "time",
    bytes: "bytes",
}


def field_of(column: Column[Any] | Any) -> Field:
    """What a process without the models must know of ``column`` to format a key from a value
    the database logged: the column's name, and the Python type the app reads it as."""
    name = str(getattr(column, "name", None) or getattr(column, "key", ""))
    column_type = getattr(column, "type", None)
    if column_type is None or isinstance(column_type, sqltypes.TypeDecorator):
        return Field(name, "other")
    if isinstance(column_type, sqltypes.Uuid) and not column_type.as_uuid:
        return Field(name, "uuid_text")
    try:
        python_type = column_type.python_type
    except NotImplementedError:
        return Field(name, "other")
    if isinstance(python_type, type) and issubclass(python_type, enum.Enum):
        members = list(python_type.__members__.values())
        stored = list(getattr(column_type, "enums", ()))
        if len(stored) != len(members):
            return Field(name, "other")
        labels = zip(stored, (member.name for member in members), strict=True)
        return Field(name, "enum", tuple(sorted(labels)))
    return Field(name, _KINDS.get(python_type, "other"))
