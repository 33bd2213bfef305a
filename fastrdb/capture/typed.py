"""Logged column values into the Python values the app formats its keys from (pure).

A database log gives a column's value in the log's own form: PostgreSQL's text output
converted by :mod:`fastrdb.capture.decoding`, MariaDB's binlog values as ``mysql-replication``
decodes them (``0``/``1`` for a boolean, a ``timedelta`` for a ``TIME``, an ``Enum``'s stored
label, a ``Uuid``'s 32 hex digits). The app formats keys from what SQLAlchemy reads: a
``bool``, a ``time``, an ``Enum`` member, a ``uuid.UUID``. The published scheme says, per
placeholder, which column it reads and which Python type the app reads it as
(:class:`~fastrdb.schemes.Field`); :func:`scheme_values` turns a logged row into the
placeholders' values in that type, so :func:`fastrdb.keys.encode_value` writes the same text
the app wrote. A value that does not convert is kept as logged (capture never stops on one).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from fastrdb.schemes import Field, Scheme

__all__ = ["coerce", "scheme_values"]


def _int(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | str | Decimal):
        return int(value)
    return value


def _str(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else str(value)


def _bool(value: Any) -> Any:
    if isinstance(value, str):
        return {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}[
            value.lower()
        ]
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return value


def _decimal(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int | str):
        return Decimal(value)
    return value


def _float(value: Any) -> Any:
    return float(value) if isinstance(value, int | str | Decimal) else value


def _uuid(value: Any) -> Any:
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    if isinstance(value, bytes):
        value = value.decode()
    return uuid.UUID(value) if isinstance(value, str) else value


def _uuid_text(value: Any) -> Any:
    converted = _uuid(value)
    return str(converted) if isinstance(converted, uuid.UUID) else value


def _datetime(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _date(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.date()
    return date.fromisoformat(value) if isinstance(value, str) else value


def _time(value: Any) -> Any:
    if isinstance(value, timedelta) and timedelta(0) <= value < timedelta(days=1):
        return (datetime.min + value).time()  # MariaDB's TIME arrives as a timedelta
    return time.fromisoformat(value) if isinstance(value, str) else value


def _bytes(value: Any) -> Any:
    return value.encode() if isinstance(value, str) else value


_COERCE: dict[str, Callable[[Any], Any]] = {
    "int": _int,
    "str": _str,
    "bool": _bool,
    "dec": _decimal,
    "float": _float,
    "uuid": _uuid,
    "uuid_text": _uuid_text,
    "datetime": _datetime,
    "date": _date,
    "time": _time,
    "bytes": _bytes,
}


@lru_cache(maxsize=256)
def _members(labels: tuple[tuple[str, str], ...]) -> dict[str, enum.Enum]:
    """Stored label → a stand-in member with the app's member name (``encode_value`` writes
    an ``Enum`` member by name: ``%enum_RED``)."""
    names = sorted(set(name for _, name in labels))
    stand_in = enum.Enum("LoggedEnum", [(name, name) for name in names])  # type: ignore[misc]
    return {stored: stand_in[name] for stored, name in labels}


def coerce(value: Any, field: Field) -> Any:
    """``value`` as logged, in the Python type ``field`` says the app reads (as logged when
    it does not convert, or the type is one FastRDB does not know)."""
    if value is None:
        return None
    try:
        if field.kind == "enum":
            return _members(field.labels).get(_str(value), value)
        convert = _COERCE.get(field.kind)
        return value if convert is None else convert(value)
    except (ValueError, TypeError, KeyError, ArithmeticError, InvalidOperation):
        return value


def scheme_values(scheme: Scheme, row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The values of ``scheme``'s placeholders in a logged ``row`` (by column name), or None
    when the row lacks one. A scheme published without fields names its columns by its
    placeholders, and its values are taken as logged."""
    if scheme.fields is None:
        return row
    values: dict[str, Any] = {}
    for name, field in scheme.fields:
        if field.column not in row:
            return None
        values[name] = coerce(row[field.column], field)
    return values
