"""Rows of joined-table inheritance hierarchies in a log: the keys of a row of one table are
made of columns of all the hierarchy's tables (pure; the runner does the reading).

A ``Manager`` row lives in ``employee`` (``email``) and ``manager`` (``level``). A transaction
that writes only ``manager`` logs only that table's columns, yet ``FastRDB(Manager)``'s
``manager:email:{email}`` must go, and a write of ``employee`` alone makes
``manager:level:{level}`` stale. The apps publish each hierarchy that spans tables
(:class:`~fastrdb.schemes.Family`): per table, the columns holding the base table's key.

For every row of such a table in a batch, :class:`Rows` keeps, per table of its hierarchy, the
row's images the batch logs (before and after each change). A table the batch logs nothing of
for that row is read from the database by key (:meth:`Rows.unread`, :meth:`Rows.read`): its
current state. The runner then reads the log on up to a position taken after those reads, so
that every transaction that changed the row before the read is in the batch too. Then every
state each table's row had during the batch is among its images: the first change's pre-image
(or, for a table no transaction of the batch changed before the read, the value read), and
each change's post-image. The keys of every combination of one image per table
(:meth:`Rows.apply`) are a superset of the keys of the states the row went through, so no key
a reader could have filled from an earlier state survives. Combinations past a bound, or a
row that could not be read within a few rounds, sweep the hierarchy's patterns instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastrdb._types import Raw
from fastrdb.capture.rows import TableNames, Transaction
from fastrdb.events.changes import Changes
from fastrdb.schemes import Family

__all__ = ["MAX_COMBINATIONS", "Rows"]

MAX_COMBINATIONS = 64
"""Per row of a hierarchy, combinations of its tables' images named key by key; past it
the hierarchy's patterns are swept."""

Identity = tuple[Any, ...]


@dataclass(slots=True)
class _Row:
    """What is known of one row of a hierarchy: per table, its images (and whether each holds
    every column), and which tables were read from the database."""

    images: dict[str, list[tuple[dict[str, Any], bool]]] = field(default_factory=dict)
    read: set[str] = field(default_factory=set)
    swept: bool = False


class Rows:
    """The rows of inheritance hierarchies a batch of transactions changed."""

    def __init__(self, names: TableNames) -> None:
        self.names = names
        self._families: set[Family] = set()
        self._by_table: dict[str, list[Family]] = {}
        self._rows: dict[tuple[Family, Identity], _Row] = {}

    def learn(self, members: Iterable[Raw]) -> set[Family]:
        """Know the hierarchies the published ``members`` name; the ones new to it."""
        new: set[Family] = set()
        for member in members:
            family = Family.from_member(member)
            if family is not None and family not in self._families:
                new.add(family)
        for family in sorted(new, key=Family.member):
            self._families.add(family)
            for table in family.tables:
                self._by_table.setdefault(table, []).append(family)
        return new

    def collect(self, transactions: Sequence[Transaction], only: set[Family] | None = None) -> None:
        """Note the images of every row of a hierarchy's table in ``transactions`` (of the
        hierarchies ``only``, if given)."""
        if not self._by_table or only == set():
            return
        for transaction in transactions:
            for change in transaction.rows:
                if change.operation == "truncate":
                    continue
                for name in self.names(change.schema, change.table):
                    for family in self._by_table.get(name, ()):
                        if only is not None and family not in only:
                            continue
                        columns = dict(family.links)[name]
                        if change.before is not None:
                            self._note(family, name, columns, change.before, change.before_complete)
                        if change.after is not None:
                            self._note(family, name, columns, change.after, True)

    def _note(
        self,
        family: Family,
        table: str,
        columns: Sequence[str],
        image: Mapping[str, Any],
        complete: bool,
    ) -> None:
        if any(column not in image for column in columns):
            return
        row = self._row(family, tuple(image[column] for column in columns))
        row.images.setdefault(table, []).append((dict(image), complete))

    def _row(self, family: Family, identity: Identity) -> _Row:
        row = self._rows.get((family, identity))
        if row is None:
            row = self._rows[family, identity] = _Row()
        return row

    def unread(self) -> dict[tuple[str, tuple[str, ...]], list[Identity]]:
        """Per table (its name and the columns holding the base key), the rows to read: those
        of which the batch logs nothing in that table, and that were not read yet."""
        todo: dict[tuple[str, tuple[str, ...]], dict[Identity, None]] = {}
        for (family, identity), row in self._rows.items():
            if row.swept:
                continue
            for table, columns in family.links:
                if table not in row.images and table not in row.read:
                    todo.setdefault((table, columns), {})[identity] = None
        return {target: list(identities) for target, identities in todo.items()}

    def read(
        self,
        table: str,
        columns: Sequence[str],
        identities: Iterable[Identity],
        found: Iterable[Mapping[str, Any]],
    ) -> None:
        """Note what reading ``identities`` from ``table`` found (a row not found has no
        image there: it is absent from that table)."""
        asked = set(identities)
        for image in found:
            identity = tuple(image[column] for column in columns)
            for family in self._by_table.get(table, ()):
                row = self._rows.get((family, identity))
                if row is not None:
                    row.images.setdefault(table, []).append((dict(image), True))
        for family in self._by_table.get(table, ()):
            for identity in asked:
                row = self._rows.get((family, identity))
                if row is not None:
                    row.read.add(table)

    def give_up(self) -> None:
        """Rows still unread: their hierarchy's patterns are swept."""
        for (family, _), row in self._rows.items():
            if any(t not in row.images and t not in row.read for t in family.tables):
                row.swept = True

    def apply(self, changes: Changes) -> None:
        """Record, for every table of each row's hierarchy, each combination of one image per
        table (merged: see :func:`_merged`); a combination with a partial image is recorded
        as partial (its missing patterns are swept)."""
        for (family, _), row in self._rows.items():
            tables = family.tables
            if row.swept:
                changes.add_partial(tables, {})
                continue
            options = [_distinct(row.images.get(table, [])) or [({}, True)] for table in tables]
            count = 1
            for images in options:
                count *= len(images)
            if count > MAX_COMBINATIONS:
                changes.add_partial(tables, {})
                continue
            for combination in itertools.product(*options):
                complete = all(whole for _, whole in combination)
                for merged in _merged([image for image, _ in combination]):
                    if complete:
                        changes.add(tables, merged)
                    else:
                        changes.add_partial(tables, merged)


def _merged(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row of the tables' images (base first): the base table's values win a column name
    two tables share; if such values differ (a subclass column named like a base column,
    which a pattern's published column name cannot tell apart), the row with the other
    tables' values winning is named too."""
    merged: dict[str, Any] = {}
    for image in reversed(images):
        merged.update(image)
    other: dict[str, Any] = {}
    for image in images:
        other.update(image)
    return [merged] if other == merged else [merged, other]


def _distinct(
    images: list[tuple[dict[str, Any], bool]],
) -> list[tuple[dict[str, Any], bool]]:
    """``images`` without repeats (by content)."""
    seen: set[Any] = set()
    kept: list[tuple[dict[str, Any], bool]] = []
    for image, complete in images:
        try:
            mark: Any = (frozenset(image.items()), complete)
        except TypeError:  # an unhashable value: keep it
            kept.append((image, complete))
            continue
        if mark not in seen:
            seen.add(mark)
            kept.append((image, complete))
    return kept
