"""What a transaction changed, as the cache sees it: per table, rows' old and new values."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastrdb.cache.store import InvalidationPlan, Sweep
from fastrdb.keys import Namespace
from fastrdb.schemes import Scheme

__all__ = ["Changes", "ValuesReader", "Written"]

ValuesReader = Callable[[Scheme, Mapping[str, Any]], Mapping[str, Any] | None]
"""``(scheme, recorded row) -> the values of the scheme's placeholders`` (None: unknown)."""

_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Written:
    """A row a transaction inserted or updated: its class, primary key and column values."""

    model: type
    identity: tuple[Any, ...]
    values: dict[str, Any]


class Changes:
    """Rows a session wrote, kept until its root transaction ends.

    Each changed row contributes its column values before the change and after it (one
    version for an insert or a delete). Values are only encoded into key text when the plan
    needs them, so wide rows cost nothing beyond their pattern fields.
    """

    __slots__ = (
        "everything",
        "filled",
        "fills",
        "own_tokens",
        "partial",
        "reader",
        "rows",
        "touched",
        "whole",
        "written",
    )

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.own_tokens: dict[str, str] = {}
        """Keys whose fill lease the writing session took itself (write-through): key → token."""
        self.fills: dict[str, tuple[str, int]] = {}
        """Of those keys, the ones whose write-through the invalidation itself stores (same
        round trip, after the drops, while the lease holds): key → value and expiry. Only a
        commit that the database confirmed may store them."""
        self.filled: dict[str, bool] = {}
        """What the delivery did with each of ``fills`` it tried (True: stored)."""
        self.written: list[Written] = []
        """Rows inserted or updated, for listeners that refresh instead of only invalidating."""
        self.touched: set[str] = set()
        """Tables changed in rows whose values are unknown: their negative entries go too."""
        self.partial: dict[str, list[dict[str, Any]]] = {}
        """Pre-images known only in part (a log without the old row's every column): a
        pattern they lack a placeholder of cannot name its key, so the plan asks for a sweep
        of that pattern's keys (:attr:`InvalidationPlan.sweeps`)."""
        self.whole: set[str] = set()
        """Tables whose every entry goes, found by a scan (:mod:`fastrdb.cache.wipe`)."""
        self.everything = False
        """Every entry of every table goes (:meth:`bound` found too many tables)."""
        self.reader: ValuesReader | None = None
        """How a recorded row gives a pattern's values, when rows are not recorded by the
        placeholders' names (capture records them by column): None if they are."""

    def __bool__(self) -> bool:
        return bool(self.rows) or self.everything

    def size(self) -> int:
        """How many items are kept: row versions, plus tables changed in unknown rows or kept
        whole; one for everything."""
        if self.everything:
            return 1
        return sum(len(snapshots) for snapshots in self.rows.values()) + len(self.touched)

    def scope(self) -> str:
        """``rows``: the exact keys of each row are known; ``tables``: some tables are kept
        whole (:meth:`wipe`); ``everything``: every entry goes."""
        if self.everything:
            return "everything"
        return "tables" if self.whole else "rows"

    def bound(self, limit: int) -> None:
        """Keep at most ``limit`` items (:meth:`size`): past it, the tables with the most row
        versions are kept whole instead (one item each, dropping more than the versions would);
        if there are still too many tables, everything. Both are safe: they drop a superset
        of the keys the row versions name."""
        size = self.size()
        if size <= limit:
            return
        by_versions = sorted(
            (table for table in self.rows if table not in self.whole),
            key=lambda table: len(self.rows[table]),
            reverse=True,
        )
        for table in by_versions:
            if size <= limit:
                return
            size -= len(self.rows[table]) - (0 if table in self.touched else 1)
            self.wipe((table,))
        if size > limit:
            self.rows.clear()
            self.touched.clear()
            self.whole.clear()
            self.partial.clear()
            self.everything = True

    def tables(self) -> list[str]:
        return sorted(self.rows)

    def touches(self, table: str) -> bool:
        return table in self.rows

    def add(self, tables: Iterable[str], values: Mapping[str, object]) -> None:
        """Record one version of a changed row of ``tables`` (a row of a subclass spans more)."""
        snapshot = dict(values)
        for table in tables:
            self.rows.setdefault(table, []).append(snapshot)

    def add_partial(self, tables: Iterable[str], values: Mapping[str, object]) -> None:
        """Record a pre-image of which only ``values`` are known (maybe none: a truncated
        table, an update logged without old values). It names the keys it can; the keys and
        narrowed pages of patterns it lacks a placeholder of are swept (see :meth:`plan`)."""
        snapshot = dict(values)
        tables = list(tables)
        self.touch(tables)
        for table in tables:
            self.rows[table].append(snapshot)
            self.partial.setdefault(table, []).append(snapshot)

    def versions(self, table: str) -> int:
        """How many row versions of ``table`` are recorded (a mark for :meth:`latest`)."""
        return len(self.rows.get(table, ()))

    def latest(
        self, table: str, primary_key: Sequence[str], identity: tuple[Any, ...], since: int
    ) -> dict[str, Any] | None:
        """The newest version of the row ``identity`` of ``table`` recorded after the first
        ``since`` versions (:meth:`versions`), as the database holds it after the write: a
        post-image, or the pre-image of a write that changed nothing. None if there is none
        (or the table's versions were given up for keeping it whole)."""
        snapshots: list[dict[str, Any]] = self.rows.get(table, [])
        if table in self.whole or self.everything or len(snapshots) < since:
            return None
        for index in range(len(snapshots) - 1, since - 1, -1):
            row = snapshots[index]
            if tuple(row.get(key, _ABSENT) for key in primary_key) == identity:
                return row
        return None

    def note_written(
        self, model: type, identity: tuple[Any, ...], values: Mapping[str, object]
    ) -> None:
        """Remember a row that now exists with ``values``, to refresh its keys after commit."""
        self.written.append(Written(model, identity, dict(values)))

    def touch(self, tables: Iterable[str]) -> None:
        """Record that ``tables`` changed in rows whose values are unknown (lists, counts and
        negative entries go stale)."""
        for table in tables:
            self.rows.setdefault(table, [])
            self.touched.add(table)

    def wipe(self, tables: Iterable[str]) -> None:
        """Record that every entry of ``tables`` must go, single-row keys of any value too
        (their row versions are no longer needed)."""
        tables = list(tables)
        self.touch(tables)
        self.whole.update(tables)
        for table in tables:
            self.rows[table] = []
            self.partial.pop(table, None)

    def merge(self, other: Changes) -> None:
        """Fold ``other`` in; its write-through leases and fills are not carried over."""
        if self.everything:
            return
        if other.everything:
            self.rows.clear()
            self.touched.clear()
            self.whole.clear()
            self.partial.clear()
            self.everything = True
            return
        for table, snapshots in other.rows.items():
            kept = self.rows.setdefault(table, [])
            if table not in self.whole:
                kept.extend(snapshots)
        self.touched |= other.touched
        for table, snapshots in other.partial.items():
            if table not in self.whole:
                self.partial.setdefault(table, []).extend(snapshots)
        self.wipe(other.whole - self.whole)

    def plan(self, schemes: Mapping[str, list[Scheme]], namespace: Namespace) -> InvalidationPlan:
        """The keys to drop, given the patterns published for each changed table.

        A partial pre-image (:meth:`add_partial`) that lacks a placeholder of a row pattern
        asks for a sweep of that pattern's keys; one that lacks a placeholder of an
        ``invalidate_pattern_prefix`` asks for a sweep of the table's narrowed pages (any of
        them may hold the row's old value)."""
        row_keys: dict[str, str] = {}
        registries: dict[str, None] = {}
        sweeps: dict[str, Sweep] = {}
        reader = self.reader
        for table, snapshots in self.rows.items():
            registries[namespace.lists(table)] = None
            registries[namespace.embeds(table)] = None  # entries that embed rows of the table
            if table in self.touched:
                registries[namespace.negatives(table)] = None
            # Each scheme's parsed pattern looked up once per table, not per row version.
            table_schemes = [(scheme, scheme.pattern) for scheme in schemes.get(table, ())]
            for snapshot in snapshots:
                for scheme, pattern in table_schemes:
                    values = snapshot if reader is None else reader(scheme, snapshot)
                    if values is None or pattern.missing(values):
                        continue
                    text = pattern.format(values)
                    if scheme.kind == "row":
                        row_keys.setdefault(text, self.own_tokens.get(text, ""))
                    else:
                        registries[namespace.narrowed_lists(table, text)] = None
            for snapshot in self.partial.get(table, ()):
                for scheme, pattern in table_schemes:
                    values = snapshot if reader is None else reader(scheme, snapshot)
                    if values is not None and not pattern.missing(values):
                        continue
                    sweep = sweeps.setdefault(table, Sweep())
                    if scheme.kind == "row":
                        sweep.patterns[scheme.text] = None
                    else:
                        sweep.narrowed = True
        return InvalidationPlan(
            row_keys=list(row_keys),
            own_tokens=list(row_keys.values()),
            registries=list(registries),
            fills=self.fills,
            filled=self.filled,
            sweeps=sweeps,
        )
