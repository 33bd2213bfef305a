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
    base = type_name.split("(", 1)[0].strip()
    if type_name.endswith("]"):  # arrays stay text
        return text
    converter = _CONVERTERS.get(base)
    if converter is None:
        return text
    try:
        return converter(text)
    except ValueError:
        return text


class _Reader:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1

    def startswith(self, prefix: str) -> bool:
        return self.text.startswith(prefix, self.pos)

    def expect(self, prefix: str) -> None:
        if not self.startswith(prefix):
            raise ValueError(f"expected {prefix!r} at {self.pos} in {self.text[:200]!r}")
        self.pos += len(prefix)

    def quoted(self, quote: str) -> str:
        """A literal opened by ``quote`` at the current position, doubled quotes undone."""
        self.expect(quote)
        parts = []
        while True:
            end = self.text.find(quote, self.pos)
            if end < 0:
                raise ValueError(f"unterminated {quote} literal in {self.text[:200]!r}")
            parts.append(self.text[self.pos : end])
            self.pos = end + 1
            if self.startswith(quote):
                parts.append(quote)
                self.pos += 1
                continue
            return "".join(parts)

    def until(self, stop: str) -> str:
        end = self.text.find(stop, self.pos)
        if end < 0:
            end = len(self.text)
        word = self.text[self.pos : end]
        self.pos = end
        return word

    def identifier(self, stop: str) -> str:
        if self.startswith('"'):
            return self.quoted('"')
        return self.until(stop)


_COLUMN = re.compile(
    r" *(?:\"(?P<quoted_name>(?:[^\"]|\"\")*)\"|(?P<name>[^\[ \"]+))"  # name, quoted if need be
    r"\[(?P<type>.*?)\]:"  # [type]: (an array type holds brackets: up to the first "]:")
    r"(?:'(?P<text>(?:[^']|'')*)'|B'(?P<bits>[^']*)'|(?P<word>[^ ]*))"  # 'text', B'..', word
)


def _columns(reader: _Reader, stop_at: str | None = None) -> dict[str, Any]:
    """The ``name[type]:value`` columns from the reader's position, up to ``stop_at`` or the
    end (one regular expression per column: this runs for every logged row)."""
    values: dict[str, Any] = {}
    text = reader.text
    match = _COLUMN.match
    while True:
        found = match(text, reader.pos)
        if found is None:
            reader.skip_spaces()
            if reader.at_end() or (stop_at is not None and reader.startswith(stop_at)):
                return values
            raise ValueError(f"unreadable column at {reader.pos} in {text[:200]!r}")
        quoted_name, name, type_name, quoted, bits, word = found.groups()
        if name is None:
            name = quoted_name.replace('""', '"')
        reader.pos = found.end()
        if quoted is not None:
            values[name] = convert(
                type_name, quoted.replace("''", "'") if "'" in quoted else quoted
            )
        elif bits is not None:
            values[name] = bits
        elif word == "null":
            values[name] = None
        elif word == "unchanged-toast-datum":
            values[name] = UNCHANGED_TOAST
        else:
            values[name] = convert(type_name, word)


def parse_change(line: str) -> RowChange | None:
    """The row change a ``table …`` line describes (None for other lines).

    A delete's pre-image is whatever the table's replica identity logs; whether that is every
    column is the caller's to say (it knows the table's identity), so it is marked complete.
    """
    if not line.startswith("table "):
        return None
    reader = _Reader(line)
    reader.pos = len("table ")
    schema = reader.identifier(".")
    reader.expect(".")
    table = reader.identifier(":")
    reader.expect(": ")
    action = reader.until(":")
    reader.expect(":")
    reader.skip_spaces()
    if action == "TRUNCATE":
        return RowChange(schema, table, "truncate")
    if reader.startswith("(no-tuple-data)"):
        if action == "INSERT":
            return None
        return RowChange(
            schema, table, "delete" if action == "DELETE" else "update", {}, None, False
        )
    if action == "INSERT":
        return RowChange(schema, table, "insert", None, _columns(reader))
    if action == "DELETE":
        return RowChange(schema, table, "delete", _columns(reader), None)
    if action != "UPDATE":
        raise ValueError(f"unknown change {action!r} in {line[:200]!r}")
    before: dict[str, Any] | None = None
    if reader.startswith("old-key:"):
        reader.pos += len("old-key:")
        before = _columns(reader, stop_at="new-tuple:")
        reader.expect("new-tuple:")
    after = _columns(reader)
    if before is None:
        return RowChange(schema, table, "update", None, _resolved(after, {}), False)
    after = _resolved(after, before)
    return RowChange(schema, table, "update", before, after, set(before) >= set(after))


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
