"""The row images of a MariaDB rows event, read from the event's bytes (pure).

A table map (decoded once per table id by the ``mysql-replication`` package, see
:mod:`fastrdb.capture.binlog`) says each column's type and metadata; :class:`TableImages`
turns it into one small reader per column, and per columns-present bitmap a function
generated to read a whole image (the commonest types in line, the others by their reader),
and reads a rows event's images with them: the values are the package's own (the same
Python types, the same quirks, checked column type by column type by the tests), in a
fraction of its time. A table with a column type that has no reader here (``BIT``, ``SET``,
``JSON``, ``GEOMETRY``, the pre-5.6 temporal formats) is :attr:`~TableImages.supported`
``False``: its events are decoded by the package.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

__all__ = ["MAX_PLANS", "Image", "TableImages", "reader"]

Reader = Callable[[bytes, int], tuple[Any, int]]
"""``(data, position) -> (value, position after it)``."""

Image = tuple[dict[str, Any], bool]
"""A row image by column name (the columns it holds) and whether it holds every column."""

# MySQL/MariaDB column types (``mysql-replication``'s FIELD_TYPE)
_TINY, _SHORT, _LONG, _FLOAT, _DOUBLE = 1, 2, 3, 4, 5
_LONGLONG, _INT24, _DATE, _YEAR = 8, 9, 10, 13
_VARCHAR, _TIMESTAMP2, _DATETIME2, _TIME2 = 15, 17, 18, 19
_NEWDECIMAL, _ENUM, _BLOB, _STRING = 246, 247, 252, 254


def _fixed(layout: str) -> Reader:
    unpack = struct.Struct(layout).unpack_from
    size = struct.calcsize(layout)

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        return unpack(data, pos)[0], pos + size

    return read


def _int24(signed: bool) -> Reader:
    def read(data: bytes, pos: int) -> tuple[Any, int]:
        return int.from_bytes(data[pos : pos + 3], "little", signed=signed), pos + 3

    return read


def _year(data: bytes, pos: int) -> tuple[Any, int]:
    return data[pos] + 1900, pos + 1


def _string(length_size: int, charset: str | None) -> Reader:
    """A length-prefixed string, decoded as the package decodes it: in the column's
    character set (kept as bytes when Python knows no such codec, e.g. ``binary``, but
    ``""`` when empty), in
    UTF-8 when the table map named none; strict (a byte sequence invalid in it raises)."""
    encoding = _encoding(charset)

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        end = pos + length_size
        start = end + int.from_bytes(data[pos:end], "little")
        raw = data[end:start]
        if encoding is None:
            # Python decodes empty bytes without looking the codec up: the package's value
            # of an empty binary string is "".
            return (raw if raw else ""), start
        return raw.decode(encoding), start

    return read


def _encoding(charset: str | None) -> str | None:
    """The Python codec of a column's character set (None: one Python has no codec of)."""
    if charset is None:
        return "utf-8"
    from pymysqlreplication.row_event import RowsEvent

    encoding: str = RowsEvent.charset_to_encoding(charset)
    try:
        codecs.lookup(encoding)
    except LookupError:
        return None
    return encoding


def _enum(size: int, labels: list[str] | None) -> Reader:
    def read(data: bytes, pos: int) -> tuple[Any, int]:
        index = int.from_bytes(data[pos : pos + size], "little")
        return (labels[index] if labels else None), pos + size

    return read


def _fraction_size(fsp: int) -> int:
    return (fsp + 1) // 2


def _fraction(data: bytes, pos: int, fsp: int) -> int:
    """Microseconds of a DATETIME2/TIMESTAMP2/TIME2 value's fraction (as the package reads
    it: big-endian, signed)."""
    size = _fraction_size(fsp)
    if not size:
        return 0
    value = int.from_bytes(data[pos : pos + size], "big", signed=True)
    if fsp % 2:
        value = int(value / 10)
    return int(value * (10 ** (6 - fsp)))


def _date(data: bytes, pos: int) -> tuple[Any, int]:
    value = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
    year, month, day = value >> 9 & 0x7FFF, value >> 5 & 0xF, value & 0x1F
    if not (year and month and day):
        return None, pos + 3  # the zero date, or one with a zero part
    return date(year, month, day), pos + 3


def _datetime2(fsp: int) -> Reader:
    size = 5 + _fraction_size(fsp)

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        value = int.from_bytes(data[pos : pos + 5], "big")
        year_month = value >> 22 & 0x1FFFF
        try:
            moment = datetime(
                int(year_month / 13),
                year_month % 13,
                value >> 17 & 0x1F,
                value >> 12 & 0x1F,
                value >> 6 & 0x3F,
                value & 0x3F,
            )
        except ValueError:
            return None, pos + size
        micro = _fraction(data, pos + 5, fsp)
        return (moment.replace(microsecond=micro) if micro > 0 else moment), pos + size

    return read


def _timestamp2(fsp: int) -> Reader:
    size = 4 + _fraction_size(fsp)

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        seconds = int.from_bytes(data[pos : pos + 4], "big", signed=True)
        moment = datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
        micro = _fraction(data, pos + 4, fsp)
        return (moment.replace(microsecond=micro) if micro > 0 else moment), pos + size

    return read


def _time2(fsp: int) -> Reader:
    size = 3 + _fraction_size(fsp)

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        value = int.from_bytes(data[pos : pos + 3], "big", signed=True)
        sign = 1 if value >> 23 & 1 else -1
        if sign == -1:
            value = ~value + 1
        moment = timedelta(
            hours=value >> 12 & 0x3FF,
            minutes=value >> 6 & 0x3F,
            seconds=value & 0x3F,
            microseconds=_fraction(data, pos + 3, fsp),
        )
        return moment * sign, pos + size

    return read


_COMPRESSED = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def _newdecimal(precision: int, decimals: int) -> Reader:
    """MySQL's packed DECIMAL, read as the package reads it (digits as text, then
    ``Decimal``)."""
    integral = precision - decimals
    whole_integral, whole_fraction = integral // 9, decimals // 9
    rest_integral = integral - whole_integral * 9
    rest_fraction = decimals - whole_fraction * 9
    head, tail = _COMPRESSED[rest_integral], _COMPRESSED[rest_fraction]
    size = head + 4 * (whole_integral + whole_fraction) + tail

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        raw = bytearray(data[pos : pos + size])
        negative = not raw[0] & 0x80
        raw[0] ^= 0x80
        mask = -1 if negative else 0
        text = "-" if negative else ""
        at = 0
        if head:
            text += str(int.from_bytes(raw[:head], "big", signed=True) ^ mask)
            at = head
        for _ in range(whole_integral):
            text += f"{int.from_bytes(raw[at : at + 4], 'big', signed=True) ^ mask:09d}"
            at += 4
        text += "."
        for _ in range(whole_fraction):
            text += f"{int.from_bytes(raw[at : at + 4], 'big', signed=True) ^ mask:09d}"
            at += 4
        if tail:
            value = int.from_bytes(raw[at : at + tail], "big", signed=True) ^ mask
            text += f"{value:0{rest_fraction}d}"
        return Decimal(text), pos + size

    return read


_INTEGERS = {
    _TINY: ("<b", "<B"),
    _SHORT: ("<h", "<H"),
    _LONG: ("<i", "<I"),
    _LONGLONG: ("<q", "<Q"),
}


def reader(column: Any) -> Reader | None:
    """The reader of one column of the package's table map (None: a type read here by
    nobody; the package decodes the table's events)."""
    kind = column.type
    if kind in _INTEGERS:
        return _fixed(_INTEGERS[kind][1 if column.unsigned else 0])
    if kind == _INT24:
        return _int24(not column.unsigned)
    if kind == _FLOAT:
        return _fixed("<f")
    if kind == _DOUBLE:
        return _fixed("<d")
    if kind in (_VARCHAR, _STRING):
        return _string(2 if column.max_length > 255 else 1, column.character_set_name)
    if kind == _BLOB:
        return _string(column.length_size, column.character_set_name)
    if kind == _NEWDECIMAL:
        return _newdecimal(column.precision, column.decimals)
    if kind == _DATE:
        return _date
    if kind == _DATETIME2:
        return _datetime2(column.fsp)
    if kind == _TIMESTAMP2:
        return _timestamp2(column.fsp)
    if kind == _TIME2:
        return _time2(column.fsp)
    if kind == _YEAR:
        return _year
    if kind == _ENUM:
        return _enum(column.size, column.enum_values)
    return None


Inline = tuple[str, Any]
"""How a column's value is read in the code generated for an image (:func:`_image_reader`):
``("fixed", (unpack_from, size))`` or ``("text", (length bytes, encoding))``."""


def _inline(column: Any) -> Inline | None:
    """The inline form of the commonest columns' readers (the same values as
    :func:`reader`'s); None: the generated code calls the column's reader."""
    kind = column.type
    if kind in _INTEGERS:
        layout = _INTEGERS[kind][1 if column.unsigned else 0]
    elif kind == _FLOAT:
        layout = "<f"
    elif kind == _DOUBLE:
        layout = "<d"
    else:
        layout = ""
    if layout:
        return "fixed", (struct.Struct(layout).unpack_from, struct.calcsize(layout))
    if kind in (_VARCHAR, _STRING):
        encoding = _encoding(column.character_set_name)
        if encoding is not None:
            return "text", (2 if column.max_length > 255 else 1, encoding)
    return None


ImageReader = Callable[[bytes, int], tuple[dict[str, Any], int]]
"""``(data, position) -> (image, position after it)``: one row image of one bitmap."""

_Plan = tuple[ImageReader, bool]
"""Per columns-present bitmap: the reader of its images, and whether every column is
present."""


MAX_PLANS = 64
"""Bitmaps of one table map whose readers are generated and kept, at most (a few in practice:
full images, or a session's ``MINIMAL`` ones); past them, an event's images are read by the
columns' readers one call at a time."""


def _called_reader(columns: list[tuple[str, Reader, Inline | None]]) -> ImageReader:
    """An image read one column reader call at a time (past :data:`MAX_PLANS`)."""
    size = (len(columns) + 7) // 8

    def image(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        nulls = data[pos : pos + size]
        pos += size
        values: dict[str, Any] = {}
        for index, (name, read, _) in enumerate(columns):
            if nulls[index >> 3] >> (index & 7) & 1:
                values[name] = None
            else:
                values[name], pos = read(data, pos)
        return values, pos

    return image


def _image_reader(columns: list[tuple[str, Reader, Inline | None]]) -> ImageReader:
    """A function generated for one columns-present bitmap that reads an image: its null
    bitmap, then each present column in line (:func:`_inline`) or by its reader, into one
    dict display. The columns' names, readers and codecs are bound to it by name (``k0``,
    ``r0``, ``e0``...); no text of the binlog is written into its code. A one-row UPDATE's
    event of an INT and a VARCHAR column: 47.5k → 37k instructions to read, with the one
    key per event below."""
    env: dict[str, Any] = {}
    code = ["def image(data, pos):"]
    nulls = (len(columns) + 7) // 8
    code += [f"    n{byte} = data[pos + {byte}]" for byte in range(nulls)]
    code.append(f"    pos += {nulls}")
    for index, (name, read, inline) in enumerate(columns):
        env[f"k{index}"] = name
        code += [
            f"    if n{index >> 3} & {1 << (index & 7)}:",
            f"        v{index} = None",
            "    else:",
        ]
        if inline is None:
            env[f"r{index}"] = read
            code.append(f"        v{index}, pos = r{index}(data, pos)")
        elif inline[0] == "fixed":
            unpack, size = inline[1]
            env[f"u{index}"] = unpack
            code += [f"        v{index} = u{index}(data, pos)[0]", f"        pos += {size}"]
        else:
            length_size, encoding = inline[1]
            env[f"e{index}"] = encoding
            length = "data[pos]" if length_size == 1 else "(data[pos] | data[pos + 1] << 8)"
            code += [
                f"        start = pos + {length_size}",
                f"        pos = start + {length}",
                f"        v{index} = data[start:pos].decode(e{index})",
            ]
    items = ", ".join(f"k{index}: v{index}" for index in range(len(columns)))
    code.append(f"    return {{{items}}}, pos")
    exec("\n".join(code), env)  # generated text: see the docstring
    built: ImageReader = env["image"]
    return built


class TableImages:
    """The readers of one table map's columns."""

    __slots__ = ("_inline", "_plans", "names", "readers", "schema", "supported", "table")

    def __init__(self, table: Any) -> None:
        self.schema: str = table.schema
        self.table: str = table.table
        self.names = [
            column.name or f"UNKNOWN_COL{index}" for index, column in enumerate(table.columns)
        ]
        readers = [reader(column) for column in table.columns]
        self.supported = all(read is not None for read in readers)
        self.readers: list[Reader] = [read for read in readers if read is not None]
        self._inline = [_inline(column) for column in table.columns]
        self._plans: dict[bytes, list[_Plan]] = {}
        """Per bitmaps of a rows event (one, or an update's two): their plans."""

    def _plan(self, bitmap: bytes) -> _Plan:
        present = [
            index for index in range(len(self.names)) if bitmap[index >> 3] >> (index & 7) & 1
        ]
        columns = [(self.names[i], self.readers[i], self._inline[i]) for i in present]
        generate = _image_reader if len(self._plans) < MAX_PLANS else _called_reader
        return generate(columns), len(present) == len(self.names)

    def images(
        self, data: bytes, pos: int, end: int, bitmaps: bytes, parts: int = 1
    ) -> list[Image]:
        """The images from ``pos`` to ``end``; ``bitmaps``: the event's ``parts``
        columns-present bitmaps, one after the other (an update's two: its before and after
        images alternate, read with each in turn)."""
        plans = self._plans.get(bitmaps)
        if plans is None:
            width = len(bitmaps) // parts
            plans = [self._plan(bitmaps[at : at + width]) for at in range(0, len(bitmaps), width)]
            if len(self._plans) < MAX_PLANS:
                self._plans[bitmaps] = plans
        found: list[Image] = []
        if len(plans) == 1:
            ((read, complete),) = plans
            while pos < end:
                image, pos = read(data, pos)
                found.append((image, complete))
            return found
        turn = 0
        while pos < end:
            read, complete = plans[turn]
            turn = (turn + 1) % len(plans)
            image, pos = read(data, pos)
            found.append((image, complete))
        return found
