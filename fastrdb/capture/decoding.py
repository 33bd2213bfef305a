"""Parse PostgreSQL's ``test_decoding`` output into row changes with Python values (pure).

A change line looks like::

    table public.users: UPDATE: old-key: id[integer]:1 email[text]:'a@x.io' new-tuple: ...

Each column is ``name[type]:value``; names are quoted like SQL identifiers when they need it,
values are ``null``, ``unchanged-toast-datum``, a single-quoted literal (quotes doubled), a
``B'…'`` bit string or a bare number / boolean. Values are turned into the Python types a
SELECT through asyncpg or psycopg gives for the types keys are usually made of (integers,
text, numeric, boolean, uuid, dates and times); any other type stays text.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from fastrdb.capture.rows import RowChange

__all__ = ["UNCHANGED_TOAST", "convert", "parse_change"]


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Any = _Unchanged()
"""A large value the UPDATE did not change, so the log does not repeat it."""


def _bool(text: str) -> bool:
    return text == "true"


def _bytes(text: str) -> bytes:
    return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()


def _datetime(text: str) -> datetime | str:
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # 'infinity', BC dates
        return text


def _date(text: str) -> date | str:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return text


def _time(text: str) -> time | str:
    try:
        return time.fromisoformat(text)
    except ValueError:
        return text


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "smallint": int,
    "integer": int,
    "bigint": int,
    "oid": int,
    "real": float,
    "double precision": float,
    "numeric": Decimal,
    "boolean": _bool,
    "uuid": uuid.UUID,
    "bytea": _bytes,
    "date": _date,
    "timestamp without time zone": _datetime,
    "timestamp with time zone": _datetime,
    "time without time zone": _time,
}


def convert(type_name: str, text: str) -> Any:
    """``text`` (the type's output form, DateStyle ISO, TimeZone UTC) as a Python value."""
    converter = _converter(type_name)
    if converter is None:
        return text
    try:
        return converter(text)
    except ValueError:
        return text


_BY_TYPE: dict[str, Callable[[str], Any] | None] = {}
"""Logged type name → its converter (None: the value stays text), found once per name."""


def _converter(type_name: str) -> Callable[[str], Any] | None:
    try:
        return _BY_TYPE[type_name]
    except KeyError:
        pass
    found = None
    if not type_name.endswith("]"):  # arrays stay text
        found = _CONVERTERS.get(type_name.split("(", 1)[0].strip())
    if len(_BY_TYPE) < 4096:  # type names with modifiers are many, but not endless
        _BY_TYPE[type_name] = found
    return found


_HEADER = re.compile(
    r"table (?:\"(?P<quoted_schema>(?:[^\"]|\"\")*)\"|(?P<schema>[^.\"]*))"
    r"\.(?:\"(?P<quoted_table>(?:[^\"]|\"\")*)\"|(?P<table>[^:\"]*))"
    r": (?P<action>[A-Z]+): *"
)

_COLUMN = re.compile(
    r" *(?:\"(?P<quoted_name>(?:[^\"]|\"\")*)\"|(?P<name>[^\[ \"]+))"  # name, quoted if need be
    r"\[(?P<type>.*?)\]:"  # [type]: (an array type holds brackets: up to the first "]:")
    r"(?:'(?P<text>(?:[^']|'')*)'|B'(?P<bits>[^']*)'|(?P<word>[^ ]*))"  # 'text', B'..', word
)

_OLD_KEY = "old-key:"
_NEW_TUPLE = "new-tuple:"


def _section(line: str, pos: int, stop_at: str | None = None) -> tuple[dict[str, Any], int]:
    """The ``name[type]:value`` columns of ``line`` from ``pos`` up to ``stop_at`` (left
    unread) or the end, and where they stop.

    One match of one regular expression per column, and one dictionary look-up for its
    type's converter: this runs for every logged row."""
    values: dict[str, Any] = {}
    end = len(line)
    match = _COLUMN.match
    while (found := match(line, pos)) is not None:  # None: the caller's marker, or an error
        pos = found.end()
        quoted_name, name, type_name, quoted, bits, word = found.groups()
        if name is None:
            name = quoted_name.replace('""', '"')
        if quoted is not None:
            if "''" in quoted:
                quoted = quoted.replace("''", "'")
            converter = _BY_TYPE[type_name] if type_name in _BY_TYPE else _converter(type_name)
            if converter is None:
                values[name] = quoted
            else:
                try:
                    values[name] = converter(quoted)
                except ValueError:
                    values[name] = quoted
        elif bits is not None:
            values[name] = bits
        elif word == "null":
            values[name] = None
        elif word == "unchanged-toast-datum":
            values[name] = UNCHANGED_TOAST
        else:
            values[name] = convert(type_name, word)
        if pos == end:
            break
    while pos < end and line[pos] == " ":
        pos += 1
    if pos < end and (stop_at is None or not line.startswith(stop_at, pos)):
        raise ValueError(f"unreadable column at {pos} in {line[:200]!r}")
    return values, pos


def parse_change(line: str) -> RowChange | None:
    """The row change a ``table …`` line describes (None for other lines).

    A delete's pre-image is whatever the table's replica identity logs; whether that is every
    column is the caller's to say (it knows the table's identity), so it is marked complete.
    """
    if not line.startswith("table "):
        return None
    header = _HEADER.match(line)
    if header is None:
        raise ValueError(f"unreadable change line {line[:200]!r}")
    schema, table, action = header["schema"], header["table"], header["action"]
    if schema is None:
        schema = header["quoted_schema"].replace('""', '"')
    if table is None:
        table = header["quoted_table"].replace('""', '"')
    pos = header.end()
    if action == "TRUNCATE":
        return RowChange(schema, table, "truncate")
    if line.startswith("(no-tuple-data)", pos):
        if action == "INSERT":
            return None
        return RowChange(
            schema, table, "delete" if action == "DELETE" else "update", {}, None, False
        )
    if action == "INSERT":
        return RowChange(schema, table, "insert", None, _section(line, pos)[0])
    if action == "DELETE":
        return RowChange(schema, table, "delete", _section(line, pos)[0], None)
    if action != "UPDATE":
        raise ValueError(f"unknown change {action!r} in {line[:200]!r}")
    before: dict[str, Any] | None = None
    if line.startswith(_OLD_KEY, pos):
        before, pos = _section(line, pos + len(_OLD_KEY), _NEW_TUPLE)
        if not line.startswith(_NEW_TUPLE, pos):
            raise ValueError(f"expected {_NEW_TUPLE!r} at {pos} in {line[:200]!r}")
        pos += len(_NEW_TUPLE)
    after = _section(line, pos)[0]
    if before is None:
        return RowChange(schema, table, "update", None, _resolved(after, {}), False)
    after = _resolved(after, before)
    return RowChange(schema, table, "update", before, after, before.keys() >= after.keys())


def _resolved(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """The post-image with unchanged large values taken from the pre-image, or left out."""
    if not any(value is UNCHANGED_TOAST for value in after.values()):
        return after
    resolved = {}
    for name, value in after.items():
        if value is UNCHANGED_TOAST:
            if name in before and before[name] is not UNCHANGED_TOAST:
                resolved[name] = before[name]
        else:
            resolved[name] = value
    return resolved
