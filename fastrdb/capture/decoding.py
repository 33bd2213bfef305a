"""Parse PostgreSQL's ``test_decoding`` output into row changes with Python values (pure).

A change line looks like::

    table public.users: UPDATE: old-key: id[integer]:1 email[text]:'a@x.io' new-tuple: ...

Each column is ``name[type]:value``; names are quoted like SQL identifiers when they need it,
values are ``null``, ``unchanged-toast-datum``, a single-quoted literal (quotes doubled), a
``B'…'`` bit string or a bare number / boolean. Values are turned into the Python types a
SELECT through asyncpg or psycopg gives for the types keys are usually made of (integers,
text, numeric, boolean, uuid, dates and times); any other type stays text.

:func:`parse_change` reads a line with one match of a regular expression learned from an
earlier line of the same table, operation and layout (a *shape*: the same columns, types,
and NULL / unchanged columns in the same places), and falls back to
:func:`parse_change_general` — a match per column — for any line no learned shape matches
(it learns one from it). Both give the same row change for every line.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from fastrdb.capture.rows import RowChange

__all__ = ["UNCHANGED_TOAST", "convert", "forget_shapes", "parse_change", "parse_change_general"]


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


def parse_change_general(line: str) -> RowChange | None:
    """The row change a ``table …`` line describes (None for other lines), a column at a
    time: any line, at a few µs per column (:func:`parse_change` is the fast way).

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


_NULL = -1
_TOAST = -2
_QUOTED = "'([^']*)'"
"""A quoted value without doubled quotes: a line with one is read by the general parser."""
_BITS = "B'([^']*)'"
_WORD = r"((?!null(?: |\Z)|unchanged-toast-datum(?: |\Z))[^ ']+)"
"""A bare value (a number, a boolean): never ``null`` nor ``unchanged-toast-datum``."""
SHAPES_PER_PREFIX = 16
"""Shapes learned per line prefix (a table's operations, its NULL and unchanged columns);
a line that fits none of them is read by the general parser."""
SHAPES = 2048
"""Shapes learned in all (each a compiled regular expression and a small function: a few
KiB); past it no more are learned, and lines of new layouts are read column by column."""


Section = tuple[tuple[str, ...], tuple[int, ...]]
"""One image of a shape: its column names, and per column its group (or _NULL, _TOAST)."""
Build = Callable[["re.Match[str]"], RowChange]


class _Shape:
    """The layout of one kind of change line, learned from one line: a regular expression
    matching the whole of every line of that layout (the text between values as it was,
    each value a group), and a function making the row change of a match."""

    __slots__ = ("build", "regex")

    def __init__(self, regex: re.Pattern[str], build: Build) -> None:
        self.regex = regex
        self.build = build


def _builder(
    schema: str,
    table: str,
    operation: str,
    before: Section | None,
    after: Section | None,
    converters: dict[int, Callable[[str], Any]],
    groups: int,
) -> Build:
    """A function of a match of a shape's regular expression making its row change, with
    the images as dict displays and each converter called in line: this runs per logged row.

    Generated code: only generated names and numbers are written in its text; the names of
    the schema, table and columns (the log's text) and the converters are bound to them."""
    env: dict[str, Any] = {
        "RowChange": RowChange,
        "UNCHANGED_TOAST": UNCHANGED_TOAST,
        "_resolved": _resolved,
        "schema": schema,
        "table": table,
        "operation": operation,
    }
    code = ["def build(found):", "    g = found.groups()"]
    for index in range(groups):
        converter = converters.get(index)
        if converter is None:
            code.append(f"    v{index} = g[{index}]")
            continue
        env[f"c{index}"] = converter
        code += [
            "    try:",
            f"        v{index} = c{index}(g[{index}])",
            "    except ValueError:",
            f"        v{index} = g[{index}]",
        ]

    def display(section: Section, image: str) -> str:
        items = []
        for position, (name, source) in enumerate(zip(*section, strict=True)):
            env[f"{image}{position}"] = name
            if source >= 0:
                value = f"v{source}"
            else:
                value = "None" if source == _NULL else "UNCHANGED_TOAST"
            items.append(f"{image}{position}: {value}")
        return "{" + ", ".join(items) + "}"

    toast = after is not None and _TOAST in after[1]
    if operation == "insert":
        assert after is not None
        code.append(f"    return RowChange(schema, table, operation, None, {display(after, 'a')})")
    elif operation == "delete":
        assert before is not None
        code.append(f"    return RowChange(schema, table, operation, {display(before, 'b')}, None)")
    elif before is None:
        assert after is not None
        image = display(after, "a")
        if toast:
            image = f"_resolved({image}, {{}})"
        code.append(f"    return RowChange(schema, table, operation, None, {image}, False)")
    else:
        assert after is not None
        code.append(f"    b = {display(before, 'b')}")
        if toast:
            code.append(f"    a = _resolved({display(after, 'a')}, b)")
            code.append(
                "    return RowChange(schema, table, operation, b, a, b.keys() >= a.keys())"
            )
        else:
            complete = set(before[0]) >= set(after[0])
            image = display(after, "a")
            code.append(f"    return RowChange(schema, table, operation, b, {image}, {complete})")
    exec("\n".join(code), env)  # generated text: see the docstring
    built: Build = env["build"]
    return built


_SHAPES: dict[str, list[_Shape]] = {}
_learned = 0


def forget_shapes() -> None:
    """Forget every learned shape (tests)."""
    global _learned
    _SHAPES.clear()
    _learned = 0


def _prefix(line: str) -> str:
    """A cheap key for the shapes a line may have: up to the second ``": "`` (the end of
    ``table schema.name: ACTION: ``; a quoted name holding ``": "`` gives another, but always
    the same, prefix — each shape checks the whole line anyway)."""
    return line[: line.find(": ", line.find(": ") + 2) + 2]


def parse_change(line: str) -> RowChange | None:
    """The row change a ``table …`` line describes (None for other lines).

    A delete's pre-image is whatever the table's replica identity logs; whether that is every
    column is the caller's to say (it knows the table's identity), so it is marked complete.
    The same result as :func:`parse_change_general`, faster for lines of a known shape.
    """
    shapes = _SHAPES.get(_prefix(line))
    if shapes is not None:
        for shape in shapes:
            found = shape.regex.fullmatch(line)
            if found is not None:
                return shape.build(found)
    change = parse_change_general(line)
    if change is not None and change.operation != "truncate":
        _learn(line, change)
    return change


def _learn(line: str, change: RowChange) -> None:
    """Learn the shape of ``line`` (``change``, as :func:`parse_change_general` read it), if
    it has one a regular expression can match (a row change with columns, no doubled quote,
    no empty bare value) and that shape reads ``line`` as ``change``."""
    prefix = _prefix(line)
    shapes = _SHAPES.get(prefix, [])
    global _learned
    if len(shapes) >= SHAPES_PER_PREFIX or _learned >= SHAPES:
        return
    shape = _shape_of(line)
    if shape is None:
        return
    found = shape.regex.fullmatch(line)
    if found is not None and repr(shape.build(found)) == repr(change):  # types too
        shapes.append(shape)
        _SHAPES[prefix] = shapes
        _learned += 1


def _shape_of(line: str) -> _Shape | None:
    """The shape of ``line`` (an INSERT, UPDATE or DELETE with columns), or None when a
    value holds a quote or a bare value is empty: walked column by column with the general
    parser's expressions, each value's span replaced by a group, the rest kept literally."""
    header = _HEADER.match(line)
    if header is None:
        return None
    action = header["action"]
    operation = {"INSERT": "insert", "UPDATE": "update", "DELETE": "delete"}.get(action)
    if operation is None:
        return None
    schema, table = header["schema"], header["table"]
    if schema is None:
        schema = header["quoted_schema"].replace('""', '"')
    if table is None:
        table = header["quoted_table"].replace('""', '"')
    pos = header.end()
    parts: list[str] = []
    literal_from = 0
    sections: list[tuple[list[str], list[int]]] = [([], [])]
    converters: list[tuple[int, Callable[[str], Any]]] = []
    groups = 0
    if action == "UPDATE" and line.startswith(_OLD_KEY, pos):
        pos += len(_OLD_KEY)
    end = len(line)
    while pos < end:
        while pos < end and line[pos] == " ":
            pos += 1
        if (
            line.startswith(_NEW_TUPLE, pos)
            and line.startswith(_OLD_KEY, header.end())
            and len(sections) == 1
        ):
            sections.append(([], []))
            pos += len(_NEW_TUPLE)
            continue
        if pos == end:
            break
        found = _COLUMN.match(line, pos)
        if found is None:
            return None
        quoted_name, name, type_name, quoted, bits, word = found.groups()
        if name is None:
            name = quoted_name.replace('""', '"')
        if quoted is not None:
            start, stop = found.span("text")
            start, stop = start - 1, stop + 1
            if "'" in quoted:  # a doubled quote: left to the general parser
                return None
            value = _QUOTED
        elif bits is not None:
            start, stop = found.span("bits")
            start, stop = start - 2, stop + 1
            value = _BITS
        else:
            start, stop = found.span("word")
            if word == "null" or word == "unchanged-toast-datum":
                source = _NULL if word == "null" else _TOAST
                sections[-1][0].append(name)
                sections[-1][1].append(source)
                pos = found.end()
                continue
            if not word or "'" in word:
                return None
            value = _WORD
        parts.append(re.escape(line[literal_from:start]))
        parts.append(value)
        literal_from = stop
        if value != _BITS:
            converter = _converter(type_name)
            if converter is not None:
                converters.append((groups, converter))
        sections[-1][0].append(name)
        sections[-1][1].append(groups)
        groups += 1
        pos = found.end()
    parts.append(re.escape(line[literal_from:]))
    if not any(names for names, _ in sections):
        return None
    layout = [(tuple(names), tuple(sources)) for names, sources in sections]
    if operation == "insert":
        before, after = None, layout[0]
    elif operation == "delete":
        before, after = layout[0], None
    elif len(layout) == 2:
        before, after = layout[0], layout[1]
    else:
        before, after = None, layout[0]
    build = _builder(schema, table, operation, before, after, dict(converters), groups)
    return _Shape(re.compile("".join(parts), re.DOTALL), build)
