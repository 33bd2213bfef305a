"""Exchange logs and the stale-response check.

A log line is one HTTP exchange: ``kind row status started finished name`` (kind ``G`` or
``P``, times in microseconds of CLOCK_MONOTONIC), or ``S`` for a PATCH as it was sent (its name
may show up even if the load generator stopped before the answer came). Every PATCH writes a
name no other PATCH writes, so a GET's answer names the PATCH it shows (or the seeded row).

A GET is stale when the value it shows had been overwritten before the GET was sent: some PATCH
``w`` of that row finished before the GET started, and the PATCH that wrote the value shown had
finished before ``w`` started (so ``w`` committed after it). The seeded value counts as written
before everything. Overlapping PATCHes may commit in either order, so they are never held
against each other.

A write whose outcome is unknown (only ``S`` was seen: the client stopped, the answer was an
error, or the writer was killed mid-commit) may or may not have committed, so it is never held
against a GET, until a successful read shows its value: it committed before that read
finished, and from then on it counts as a write that finished then.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Exchange:
    kind: str
    row: int
    status: int
    started: float
    finished: float
    name: str


def read_logs(paths: list[Path]) -> list[Exchange]:
    exchanges = []
    for path in paths:
        for line in path.read_text().splitlines():
            kind, row, status, started, finished, name = line.split(" ", 5)
            exchanges.append(
                Exchange(kind, int(row), int(status), float(started), float(finished), name)
            )
    return exchanges


@dataclass
class History:
    """The PATCHes of one app so far, across rounds: answers whether a GET was stale."""

    written: dict[tuple[int, str], tuple[float, float]] = field(default_factory=dict)
    """(row, name) -> (started, finished) of the PATCH that wrote it."""
    by_row: dict[int, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    """row -> (finished, started) of its PATCHes."""
    _index: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)

    def add(self, exchanges: list[Exchange]) -> None:
        for ex in exchanges:
            if ex.kind == "S":  # sent; until its answer is seen it may have finished any time
                self.written.setdefault((ex.row, ex.name), (ex.started, math.inf))
            elif ex.kind == "P" and ex.status == 200:
                self.written[ex.row, ex.name] = (ex.started, ex.finished)
                self.by_row[ex.row].append((ex.finished, ex.started))
        settled: dict[tuple[int, str], float] = {}
        for ex in exchanges:  # a read showing an unknown write settles it: it committed
            shown = self.written.get((ex.row, ex.name))
            if ex.kind == "G" and ex.status == 200 and shown is not None and shown[1] == math.inf:
                settled[ex.row, ex.name] = min(
                    settled.get((ex.row, ex.name), math.inf), ex.finished
                )
        for (row, name), finished in settled.items():
            started = self.written[row, name][0]
            self.written[row, name] = (started, finished)
            self.by_row[row].append((finished, started))
        self._index.clear()

    def _latest_start_before(self, row: int, moment: float) -> float:
        """The latest start among the row's PATCHes that finished before ``moment``."""
        index = self._index.get(row)
        if index is None:
            patches = sorted(self.by_row.get(row, ()))
            ends = [end for end, _ in patches]
            starts: list[float] = []
            for _, start in patches:
                starts.append(max(start, starts[-1]) if starts else start)
            index = self._index[row] = (ends, starts)
        ends, starts = index
        position = bisect.bisect_left(ends, moment)
        return starts[position - 1] if position else -math.inf

    def stale(self, exchanges: list[Exchange]) -> int:
        count = 0
        for ex in exchanges:
            if ex.kind != "G" or ex.status != 200:
                continue
            overwriter_start = self._latest_start_before(ex.row, ex.started)
            shown = self.written.get((ex.row, ex.name))
            shown_finished = shown[1] if shown is not None else -math.inf
            if shown_finished < overwriter_start:
                count += 1
        return count
