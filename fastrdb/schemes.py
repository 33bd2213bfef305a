"""The key patterns published per table, so any listening process can compute the keys."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fastrdb._types import Raw
from fastrdb.keys import KeyPattern, parse_pattern

__all__ = ["KINDS", "Family", "Field", "Scheme", "parse_members"]

SchemeKind = Literal["row", "prefix"]

KINDS = frozenset(
    {"int", "str", "bool", "dec", "float", "uuid", "uuid_text", "datetime", "date", "time"}
    | {"bytes", "enum", "other"}
)
"""What a placeholder's values are in the app (the Python type its column reads as): ``enum``
an ``Enum`` member, ``uuid_text`` a ``Uuid(as_uuid=False)``'s hyphenated string, ``other`` a
type FastRDB does not know (a ``TypeDecorator``, JSON...)."""


@dataclass(frozen=True, slots=True)
class Field:
    """What a placeholder stands for in the database: its column's name and the Python type
    the app reads its values as, so that a process without the models (capture) turns a logged
    value into the same key text. ``labels``: for an ``enum``, stored text → member name."""

    column: str
    kind: str
    labels: tuple[tuple[str, str], ...] = ()

    def dump(self) -> list[object]:
        if self.labels:
            return [self.column, self.kind, dict(self.labels)]
        return [self.column, self.kind]

    @classmethod
    def load(cls, raw: object) -> Field | None:
        if not isinstance(raw, list) or len(raw) not in (2, 3):
            return None
        column, kind, *rest = raw
        if not isinstance(column, str) or kind not in KINDS:
            return None
        labels = rest[0] if rest else {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            return None
        return cls(column, kind, tuple(sorted(labels.items())))


@functools.lru_cache(maxsize=1024)
def _members(scheme: Scheme) -> tuple[str, ...]:
    plain = Scheme(scheme.kind, scheme.text).member()
    return (plain,) if scheme.fields is None else (plain, scheme.member())


@dataclass(frozen=True, slots=True)
class Scheme:
    """One pattern in use for a table.

    ``row``: a single-row key pattern, formatted from a changed row's values.
    ``prefix``: an ``invalidate_pattern_prefix`` that narrows which list entries a change drops.
    ``fields``: per placeholder, its column and type (None: published by a version that did not
    say; a placeholder is then taken to name its column, its values as logged).
    """

    kind: SchemeKind
    text: str
    fields: tuple[tuple[str, Field], ...] | None = None

    @property
    def pattern(self) -> KeyPattern:
        return parse_pattern(self.text)

    def member(self) -> str:
        """The form stored in Redis (a member of the table's schemes set): ``[kind, text]``,
        plus ``{placeholder: [column, kind(, labels)]}`` when the fields are known."""
        if self.fields is None:
            return json.dumps([self.kind, self.text], separators=(",", ":"))
        fields = {name: field.dump() for name, field in self.fields}
        return json.dumps([self.kind, self.text, fields], separators=(",", ":"), sort_keys=True)

    def members(self) -> tuple[str, ...]:
        """What to publish: the plain ``[kind, text]`` member that every version reads, and
        the one with the fields (versions before them ignore a member they cannot read).
        Remembered: every lease publishes them."""
        return _members(self)

    @classmethod
    def from_member(cls, raw: bytes | str) -> Scheme | None:
        """The scheme a stored member names, or None for a member this version cannot read."""
        try:
            kind, text, *rest = json.loads(raw)
        except (ValueError, TypeError):
            return None
        if kind not in ("row", "prefix") or not isinstance(text, str) or len(rest) > 1:
            return None
        try:
            names = parse_pattern(text).fields
        except ValueError:
            return None
        if not rest:
            return cls(kind, text)
        raw_fields = rest[0]
        if not isinstance(raw_fields, dict) or set(raw_fields) != set(names):
            return None
        fields: list[tuple[str, Field]] = []
        for name in names:
            field = Field.load(raw_fields[name])
            if field is None:
                return None
            fields.append((name, field))
        return cls(kind, text, tuple(fields))


def parse_members(members: Iterable[Raw]) -> list[Scheme]:
    """The schemes a table's published members name: unreadable members are skipped, and a
    plain member is dropped when a member of the same pattern says its fields."""
    schemes = [scheme for scheme in map(Scheme.from_member, members) if scheme is not None]
    described = {(s.kind, s.text) for s in schemes if s.fields is not None}
    return sorted(
        (s for s in schemes if s.fields is not None or (s.kind, s.text) not in described),
        key=Scheme.member,
    )


@dataclass(frozen=True, slots=True)
class Family:
    """The tables of a joined-table inheritance hierarchy, as published for capture: a row of
    one of them is a row of the hierarchy, whose keys (by every pattern published for any of
    the tables) are made of columns of all of them.

    ``links``: per table (as FastRDB names it), its columns holding the base table's primary
    key, in the base key's order; the first table is the base. Published in the namespace's
    set of families (:meth:`fastrdb.keys.Namespace.families`) before any lease of an entry of
    the hierarchy's models is taken, so a capture that reads the set after a commit knows
    every hierarchy a reader could have leased an entry of."""

    links: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(table for table, _ in self.links)

    def member(self) -> str:
        return json.dumps(["family", [[t, list(c)] for t, c in self.links]], separators=(",", ":"))

    @classmethod
    def from_member(cls, raw: bytes | str) -> Family | None:
        """The family a stored member names, or None for one this version cannot read."""
        try:
            kind, links, *rest = json.loads(raw)
        except (ValueError, TypeError):
            return None
        if kind != "family" or rest or not isinstance(links, list) or len(links) < 2:
            return None
        parsed: list[tuple[str, tuple[str, ...]]] = []
        width: int | None = None
        for link in links:
            if not (isinstance(link, list) and len(link) == 2 and isinstance(link[0], str)):
                return None
            columns = link[1]
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                return None
            if not columns or (width is not None and len(columns) != width):
                return None
            width = len(columns)
            parsed.append((link[0], tuple(columns)))
        return cls(tuple(parsed))
