"""Negative entries: a ``get`` that found no row is remembered under the row's own key.

The entry holds the JSON text ``null`` (other programs reading the key see "no row"), lives
``Settings.negative_exp`` seconds, and is filled through the same lease as any entry. It sits
under the key a matching row would have, so a commit that makes a row match drops it with the
row's post-image keys; the key also joins the table's registry of negative entries, which a
commit drains when it changes the table with values it cannot know (``Changes.touch``).

A negative entry is only kept when the database compares the filters exactly as their key
text does: otherwise a row the database finds equal (a case-insensitive collation, a padded
string, a float) could be inserted under a different key and leave the entry standing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from fastrdb._types import Raw
from fastrdb.cache.readthrough import Stats
from fastrdb.values import compares_as_text

__all__ = ["ABSENT", "NEGATIVE_PAYLOAD", "Absent", "compares_exactly", "decoder"]

T = TypeVar("T")


class Absent(enum.Enum):
    """The type of :data:`ABSENT`."""

    ABSENT = enum.auto()


ABSENT: Final = Absent.ABSENT
"""What a read returns for "no row", from the database or from a negative entry."""

NEGATIVE_PAYLOAD: Final = "null"
"""The text stored under a key whose row does not exist."""


def decoder(validate: Callable[[Raw], T], stats: Stats) -> Callable[[Raw], T | Absent]:
    """``validate`` for cached values, except that a negative entry's text decodes to
    :data:`ABSENT` (and counts as a negative hit)."""

    def decode(raw: Raw) -> T | Absent:
        if raw == b"null" or raw == "null":
            stats.negative_hits += 1
            return ABSENT
        return validate(raw)

    return decode


def compares_exactly(
    dialect: str,
    columns: Mapping[str, Any],
    python_types: Mapping[str, type | None],
    filters: Mapping[str, Any],
) -> bool:
    """Whether the database matches ``filters`` exactly when their key text matches: every
    value is of its column's own Python type (not None) and the column compares as its text
    (:func:`fastrdb.values.compares_as_text`: integers, booleans, UUIDs, and strings under a
    binary comparison — not MariaDB's default collations, CHAR, CITEXT or an Enum)."""
    for name, value in filters.items():
        if value is None or type(value) is not python_types.get(name):
            return False
        if not compares_as_text(columns[name], dialect):
            return False
    return True
