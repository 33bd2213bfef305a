"""The key patterns published per table, so any listening process can compute the keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from fastrdb.keys import KeyPattern, parse_pattern

__all__ = ["Scheme"]

SchemeKind = Literal["row", "prefix"]


@dataclass(frozen=True, slots=True)
class Scheme:
    """One pattern in use for a table.

    ``row``: a single-row key pattern, formatted from a changed row's values.
    ``prefix``: an ``invalidate_pattern_prefix`` that narrows which list entries a change drops.
    """

    kind: SchemeKind
    text: str

    @property
    def pattern(self) -> KeyPattern:
        return parse_pattern(self.text)

    def member(self) -> str:
        """The form stored in Redis (a member of the table's schemes set)."""
        return json.dumps([self.kind, self.text], separators=(",", ":"))

    @classmethod
    def from_member(cls, raw: bytes | str) -> Scheme | None:
        """The scheme a stored member names, or None for a member this version cannot read."""
        try:
            kind, text = json.loads(raw)
        except (ValueError, TypeError):
            return None
        if kind not in ("row", "prefix") or not isinstance(text, str):
            return None
        try:
            parse_pattern(text)
        except ValueError:
            return None
        return cls(kind, text)
