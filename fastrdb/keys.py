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
from urllib.parse import unquote
from uuid import UUID

from fastrdb.errors import FastRDBError

__all__ = [
    "KeyPattern",
    "Namespace",
    "canonical_decimal",
    "decode_value",
    "encode_value",
    "glob_covers",
    "glob_escape",
    "lease_key",
    "deps_key",
    "dropping_key",
    "families_key",
    "indexed_table",
    "tables_index",
    "wait_key",
    "with_digest",
]

SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "@._-+")
_ALL_SAFE = re.compile(r"[A-Za-z0-9@._+\-]*")
_VALUE_CHARACTERS = SAFE_CHARACTERS | {"%"}
_VALUE_TEXT = r"[A-Za-z0-9@._+\-%]*"  # what encode_value() writes, and nothing else
_DIGEST_SUFFIX = r"(?P<_fastrdb_digest>:~[0-9a-f]{12})?"  # with_digest()'s suffix
_INTEGER_TEXT = re.compile(r"-?[0-9]+")


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


def decode_value(text: str, python_type: type | None) -> object:
    """The value that :func:`encode_value` wrote as ``text`` in a key of a column whose Python
    type is ``python_type`` (``None``: unknown, untagged text is then a string).

    The inverse of :func:`encode_value` on the values FastRDB formats into keys: tagged text
    (``%none``, ``%dec_9.5``, ``%enum_RED``…) by its tag, untagged text as an ``int`` for an
    integer column and as a string otherwise. Raises :class:`FastRDBError` (field ``key``) for
    text that ``encode_value`` cannot have written for such a column: a value of another type,
    or text that is not canonical (``%2a`` for ``%2A``, an encoded safe character).
    """
    try:
        value = _decode(text, python_type)
    except (ArithmeticError, ValueError, KeyError, TypeError):
        value = _UNDECODABLE
    if (
        value is _UNDECODABLE
        or encode_value(value) != text
        or not (value is None or python_type is None or type(value) is python_type)
    ):
        type_name = python_type.__name__ if python_type is not None else "unknown"
        raise FastRDBError("key", f"{text!r} is not a value FastRDB encodes for type {type_name}")
    return value


_UNDECODABLE = object()


def _decode_text(text: str) -> str:
    return unquote(text, errors="strict")


def _decode(text: str, python_type: type | None) -> object:
    if len(text) > 1 and text[0] == "%" and text[1].islower():
        tag, _, body = text[1:].partition("_")
        simple = {"none": None, "true": True, "false": False}
        if tag in simple and not body:
            return simple[tag]
        body = _decode_text(body)
        if tag == "enum":
            if python_type is None or not issubclass(python_type, Enum):
                return _UNDECODABLE
            return python_type[body]
        parsers: dict[str, object] = {
            "dec": Decimal,
            "float": float,
            "uuid": UUID,
            "datetime": datetime.fromisoformat,
            "date": date.fromisoformat,
            "time": time.fromisoformat,
            "interval": lambda seconds: timedelta(seconds=float(seconds)),
            "bytes": bytes.fromhex,
        }
        parse = parsers.get(tag)
        return parse(body) if callable(parse) else _UNDECODABLE
    if python_type is int and _INTEGER_TEXT.fullmatch(text):
        return int(text)
    return _decode_text(text)


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


def dropping_key(registry: str) -> str:
    """The set, in ``registry``'s Redis Cluster slot, of its members that invalidations took out
    of it and have not dropped yet (``token|member``): another invalidation must drop them too
    before its commit returns."""
    if registry.startswith("{"):  # its hash tag is its slot: keep it first
        return registry + ":dropping"
    return "{" + registry + "}:dropping"


def wait_key(key: str) -> str | None:
    """A marker key in ``key``'s Redis Cluster slot, written just before a ``WAIT`` for
    replicas; None for a key with a ``}`` but no hash tag (no name can share its slot)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]  # the hash tag: what Redis hashes
    return None if "}" in key else "{" + key + "}:wait"


def with_digest(key: str, extras: Mapping[str, object]) -> str:
    """``key``, plus a short stable digest of the parameters its pattern leaves out, if any."""
    if not extras:
        return key
    canonical = json.dumps(
        sorted((name, encode_value(value)) for name, value in extras.items()),
        separators=(",", ":"),
    )
    return f"{key}:~{hashlib.blake2b(canonical.encode(), digest_size=6).hexdigest()}"


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob that matches only itself."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def tables_index(schemes_key: str) -> tuple[str, str]:
    """(the set naming every table that has cache entries, this table's member of it) for the
    key of a table's published patterns (:meth:`Namespace.schemes`): the member is the
    table's encoded name, which holds no ``:``."""
    head, _, table = schemes_key.rpartition(":schemes:")
    return f"{head}:tables", table


def families_key(schemes_key: str) -> str:
    """The set of published inheritance hierarchies (:meth:`Namespace.families`) of the
    namespace of a table's published patterns (:meth:`Namespace.schemes`)."""
    head, _, _ = schemes_key.rpartition(":schemes:")
    return f"{head}:families"


def indexed_table(member: bytes | str) -> str:
    """The table a member of the namespace's index of tables names (see :func:`tables_index`)."""
    return unquote(member.decode() if isinstance(member, bytes) else member)


def glob_covers(glob: str, key: str) -> bool:
    """Whether a Redis-style glob (an expanded ``invalidate_pattern_prefix``) matches ``key``."""
    return fnmatchcase(key, glob)


class KeyPattern:
    """A ``str.format``-style pattern such as ``"user:email:{email}"``, parsed once."""

    __slots__ = ("_matcher", "_single", "fields", "literal_prefix", "text")

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
        self._matcher = _matcher(parsed)
        prefix: list[str] = []  # the text every key starts with: up to the first placeholder
        for literal, field, _, _ in parsed:
            prefix.append(literal)
            if field is not None:
                break
        self.literal_prefix = "".join(prefix)
        self._single: tuple[str, str, str] | None = None
        """A pattern of one placeholder: the text before it, its name, the text after it
        (formatted by concatenation: the planning of every changed row formats keys)."""
        places = [index for index, (_, field, _, _) in enumerate(parsed) if field is not None]
        if len(places) == 1:
            tail = "".join(literal for literal, _, _, _ in parsed[places[0] + 1 :])
            self._single = (self.literal_prefix, fields[0], tail)

    def __repr__(self) -> str:
        return f"KeyPattern({self.text!r})"

    @property
    def regex(self) -> re.Pattern[str]:
        """Matches every key this pattern formats, with or without a digest suffix (the
        extra-filter variants of :func:`with_digest`), also when the pattern is not
        :attr:`decodable` (it tells keys apart, it does not split them: :meth:`match` does)."""
        parts = [
            re.escape(literal) + (_VALUE_TEXT if field is not None else "")
            for literal, field, _, _ in string.Formatter().parse(self.text)
        ]
        return re.compile("".join(parts) + _DIGEST_SUFFIX)

    def missing(self, values: Mapping[str, object]) -> list[str]:
        """The placeholders that ``values`` does not give."""
        return [field for field in self.fields if field not in values]

    def format(self, values: Mapping[str, object]) -> str:
        """The key for ``values`` (raw values; each one is encoded)."""
        if self._single is not None:
            head, field, tail = self._single
            return head + encode_value(values[field]) + tail
        return self.text.format_map({field: encode_value(values[field]) for field in self.fields})

    @property
    def decodable(self) -> bool:
        """Whether every key of this pattern names its values unambiguously: no two
        placeholders are adjacent or apart by only characters that values are written with
        (``{first}.{last}`` is not decodable: ``a.b.c`` could be either split)."""
        return self._matcher is not None

    def match(self, key: str) -> tuple[dict[str, str], bool] | None:
        """The inverse of :meth:`format` (and :func:`with_digest`): each placeholder's encoded
        text in ``key`` and whether a digest suffix follows, or None if ``key`` is not a key
        of this pattern (or the pattern is not :attr:`decodable`). Decode each text with
        :func:`decode_value`."""
        if self._matcher is None:
            return None
        found = self._matcher.fullmatch(key)
        if found is None:
            return None
        texts = found.groupdict()
        digest = texts.pop("_fastrdb_digest") is not None
        return texts, digest


def _matcher(
    parsed: list[tuple[str, str | None, str | None, str | None]],
) -> re.Pattern[str] | None:
    """A regular expression matching exactly the keys a pattern formats (one group per
    placeholder, a repeated placeholder must repeat its text), or None when a key could be
    split into values in more than one way."""
    regex: list[str] = []
    named: set[str] = set()
    after_field = False
    for literal, field, _, _ in parsed:
        regex.append(re.escape(literal))
        if field is None:
            continue
        if after_field and set(literal) <= _VALUE_CHARACTERS:
            return None  # nothing but value characters between two placeholders
        regex.append(f"(?P={field})" if field in named else f"(?P<{field}>{_VALUE_TEXT})")
        named.add(field)
        after_field = True
    return re.compile("".join(regex) + _DIGEST_SUFFIX)


@lru_cache(maxsize=1024)
def parse_pattern(text: str) -> KeyPattern:
    """A parsed pattern, shared by every user of the same text."""
    return KeyPattern(text)


@lru_cache(maxsize=4096)
def _table(name: str) -> str:
    """A table's name as bookkeeping keys write it (asked on every invalidation)."""
    return encode_value(name)


class Namespace:
    """Names of FastRDB's own bookkeeping keys under a configurable prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def schemes(self, table: str) -> str:
        """The set of patterns published for ``table``, for listeners in any process."""
        return f"{self.prefix}:schemes:{_table(table)}"

    def lists(self, table: str) -> str:
        """The registry of list keys that any change of ``table`` makes stale."""
        return f"{self.prefix}:lists:{_table(table)}"

    def embeds(self, table: str) -> str:
        """The registry of entries that embed rows of ``table`` (nested response schemas):
        any change of ``table`` makes them stale."""
        return f"{self.prefix}:embeds:{_table(table)}"

    def narrowed_lists(self, table: str, expanded_prefix: str) -> str:
        """The registry of list keys that only changes matching ``expanded_prefix`` make stale."""
        return f"{self.prefix}:lists:{_table(table)}:{encode_value(expanded_prefix)}"

    def negatives(self, table: str) -> str:
        """The registry of keys that may hold a negative entry of ``table``: drained by a
        change of ``table`` whose values are unknown."""
        return f"{self.prefix}:negatives:{_table(table)}"

    def tables(self) -> str:
        """The set of tables that have cache entries (members: encoded table names), so an
        operator's tools find them without scanning the keyspace (see :func:`tables_index`)."""
        return f"{self.prefix}:tables"

    def families(self) -> str:
        """The set of joined-table inheritance hierarchies whose models have cache entries
        (members: :meth:`fastrdb.schemes.Family.member`), for capture (see
        :func:`families_key`)."""
        return f"{self.prefix}:families"

    def wait(self) -> str:
        """The marker an invalidation writes just before a ``WAIT`` for replicas (one Redis)."""
        return f"{self.prefix}:wait"

    def count(self, table: str) -> str:
        """The key of ``count()`` of ``table`` (a digest suffix holds any filters)."""
        return f"{self.prefix}:count:{_table(table)}"
