"""Cache keys: parse user patterns, encode values into them, name the keys beside them (pure)."""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from fnmatch import fnmatchcase
from functools import lru_cache
from uuid import UUID

from fastrdb.errors import FastRDBError

__all__ = [
    "KeyPattern",
    "Namespace",
    "canonical_decimal",
    "encode_value",
    "glob_covers",
    "lease_key",
    "deps_key",
    "with_digest",
]

SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "@._-+")
_ALL_SAFE = re.compile(r"[A-Za-z0-9@._+\-]*")


def encode_value(value: object) -> str:
    """The text a value stands for inside a key: one encoding, injective across types.

    - ``str``: letters, digits and ``@ . _ - +`` are kept; every other character is
      percent-encoded (UTF-8, ``%XX`` with upper-case hex), so no value can act as a Redis glob.
    - ``int``: its decimal digits (``7``, ``-3``), the documented ``pattern.format()`` text.
    - Every other type is tagged: ``%`` + a lower-case type word + ``_`` + its canonical text
      (percent-encoded like a string), e.g. ``%none``, ``%true``, ``%dec_9.5``,
      ``%uuid_6f1c…``, ``%date_2026-11-29``, ``%datetime_2026-11-29T22%3A48%3A00%2B00%3A00``,
      ``%enum_RED``. No string encodes to ``%`` followed by a lower-case letter, so ``None``,
      ``"None"``, ``True``, ``"True"``, ``Decimal("1")`` and ``"1"`` never share key text.

    Canonical forms make equal values of one type share text: a ``Decimal`` without trailing
    zeros (``9.50`` → ``9.5``), an aware ``datetime`` in UTC, a ``UUID`` in lower-case
    hyphenated form, an ``Enum`` member by name. ``1`` and ``"1"`` share text on purpose:
    filters are converted to their column's Python type first, so within a column they
    select the same rows.
    """
    if type(value) is str:
        return _encode_text(value)
    if type(value) is int:
        return str(value)
    return _encode_typed(value)


def _encode_text(text: str) -> str:
    if _ALL_SAFE.fullmatch(text):
        return text
    return "".join(
        char if char in SAFE_CHARACTERS else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in text
    )


def _encode_typed(value: object) -> str:
    if value is None:
        return "%none"
    if value is True:
        return "%true"
    if value is False:
        return "%false"
    if isinstance(value, Enum):
        return "%enum_" + _encode_text(value.name)
    if isinstance(value, str):
        return _encode_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, Decimal):
        return "%dec_" + _encode_text(canonical_decimal(value))
    if isinstance(value, float):
        return "%float_" + _encode_text(repr(value + 0.0))  # -0.0 == 0.0: one text
    if isinstance(value, UUID):
        return "%uuid_" + str(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            value = value.astimezone(UTC)
        return "%datetime_" + _encode_text(value.isoformat())
    if isinstance(value, date):
        return "%date_" + value.isoformat()
    if isinstance(value, time):
        return "%time_" + _encode_text(value.isoformat())
    if isinstance(value, timedelta):
        return "%interval_" + _encode_text(repr(value.total_seconds()))
    if isinstance(value, bytes | bytearray | memoryview):
        return "%bytes_" + bytes(value).hex()
    kind = "".join(c for c in type(value).__name__.lower() if c.isalnum()) or "value"
    return f"%{kind}_" + _encode_text(str(value))


def canonical_decimal(value: Decimal) -> str:
    """A decimal's text without exponent or trailing zeros: ``9.50`` and ``9.5`` → ``9.5``."""
    if not value.is_finite():
        return str(value)
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


def lease_key(key: str) -> str:
    """The fill lease of ``key``; the braces keep it in ``key``'s Redis Cluster slot."""
    return "{" + key + "}:lease"


def deps_key(key: str) -> str:
    """The set of keys derived from ``key`` (extra-filter variants), in ``key``'s slot."""
    return "{" + key + "}:deps"


def with_digest(key: str, extras: Mapping[str, object]) -> str:
    """``key``, plus a short stable digest of the parameters its pattern leaves out, if any."""
    if not extras:
        return key
    canonical = json.dumps(
        sorted((name, encode_value(value)) for name, value in extras.items()),
        separators=(",", ":"),
    )
    return f"{key}:~{hashlib.blake2b(canonical.encode(), digest_size=6).hexdigest()}"


def glob_covers(glob: str, key: str) -> bool:
    """Whether a Redis-style glob (an expanded ``invalidate_pattern_prefix``) matches ``key``."""
    return fnmatchcase(key, glob)


class KeyPattern:
    """A ``str.format``-style pattern such as ``"user:email:{email}"``, parsed once."""

    __slots__ = ("fields", "text")

    def __init__(self, text: str, *, argument: str = "pattern") -> None:
        fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise FastRDBError(argument, f"{text!r} is not a valid pattern ({exc})") from None
        for _, field, spec, conversion in parsed:
            if field is not None:
                fields.append(field)
                if not field.isidentifier():
                    raise FastRDBError(
                        argument, f"placeholder {{{field}}} in {text!r} must be a plain name"
                    )
                if spec or conversion:
                    raise FastRDBError(
                        argument, f"placeholder {{{field}}} in {text!r} takes no format spec"
                    )
        self.text = text
        self.fields = tuple(dict.fromkeys(fields))

    def __repr__(self) -> str:
        return f"KeyPattern({self.text!r})"

    def missing(self, values: Mapping[str, object]) -> list[str]:
        """The placeholders that ``values`` does not give."""
        return [field for field in self.fields if field not in values]

    def format(self, values: Mapping[str, object]) -> str:
        """The key for ``values`` (raw values; each one is encoded)."""
        return self.text.format_map({field: encode_value(values[field]) for field in self.fields})


@lru_cache(maxsize=1024)
def parse_pattern(text: str) -> KeyPattern:
    """A parsed pattern, shared by every user of the same text."""
    return KeyPattern(text)


class Namespace:
    """Names of FastRDB's own bookkeeping keys under a configurable prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def schemes(self, table: str) -> str:
        """The set of patterns published for ``table``, for listeners in any process."""
        return f"{self.prefix}:schemes:{encode_value(table)}"

    def lists(self, table: str) -> str:
        """The registry of list keys that any change of ``table`` makes stale."""
        return f"{self.prefix}:lists:{encode_value(table)}"

    def embeds(self, table: str) -> str:
        """The registry of entries that embed rows of ``table`` (nested response schemas):
        any change of ``table`` makes them stale."""
        return f"{self.prefix}:embeds:{encode_value(table)}"

    def narrowed_lists(self, table: str, expanded_prefix: str) -> str:
        """The registry of list keys that only changes matching ``expanded_prefix`` make stale."""
        return f"{self.prefix}:lists:{encode_value(table)}:{encode_value(expanded_prefix)}"

    def negatives(self, table: str) -> str:
        """The registry of keys that may hold a negative entry of ``table``: drained by a
        change of ``table`` whose values are unknown."""
        return f"{self.prefix}:negatives:{encode_value(table)}"

    def count(self, table: str) -> str:
        """The key of ``count()`` of ``table`` (a digest suffix holds any filters)."""
        return f"{self.prefix}:count:{encode_value(table)}"
