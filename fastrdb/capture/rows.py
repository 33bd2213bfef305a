"""One committed row change read from a database log, and how a transaction of them becomes
the same :class:`~fastrdb.events.changes.Changes` the session hooks produce (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fastrdb.capture.typed import scheme_values
from fastrdb.events.changes import Changes

__all__ = ["RowChange", "TableNames", "Transaction", "to_changes"]

Operation = Literal["insert", "update", "delete", "truncate"]


@dataclass(slots=True)
class RowChange:
    """A row a committed transaction changed, with the values the log gives.

    ``before`` is the pre-image (``None`` for an insert); ``before_complete`` says whether it
    holds every column (PostgreSQL's ``REPLICA IDENTITY FULL``, MariaDB's full row image) or
    only some (the primary key). ``after`` is the post-image (``None`` for a delete).
    Not frozen: one is made per logged row, and a frozen dataclass' ``__init__`` costs
    several times more (nothing changes one once read).
    """

    schema: str
    table: str
    operation: Operation
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    before_complete: bool = True


@dataclass(slots=True)
class Transaction:
    """The row changes of one committed transaction, in log order."""

    rows: list[RowChange] = field(default_factory=list)
    committed_at: float | None = None
    """The commit's wall-clock time (seconds since the epoch) when the log gives it (for the
    lag capture logs; PostgreSQL's source reads it for the last transaction of each read
    only: the latest commit of the read)."""
    position: Any = None
    """Where the log resumes after this transaction, for sources that track it per
    transaction."""


class TableNames:
    """The names under which FastRDB knows a logged table.

    SQLAlchemy names a table of the connection's default schema by its bare name and any other
    by ``schema.name``; a row of the default schema counts under both, so a model declared with
    an explicit ``schema=`` meets one declared without. ``only`` keeps the named tables alone.
    """

    __slots__ = ("_cache", "default_schema", "only")

    def __init__(self, default_schema: str, only: Iterable[str] | None = None) -> None:
        self.default_schema = default_schema
        self.only = frozenset(only) if only is not None else None
        self._cache: dict[tuple[str, str], tuple[str, ...]] = {}

    def __call__(self, schema: str, table: str) -> tuple[str, ...]:
        names = self._cache.get((schema, table))
        if names is None:
            qualified = f"{schema}.{table}"
            names = (table, qualified) if schema == self.default_schema else (qualified,)
            if self.only is not None and not self.only.intersection(names):
                names = ()
            self._cache[(schema, table)] = names
        return names


def to_changes(transactions: Sequence[Transaction], names: TableNames) -> Changes:
    """One :class:`Changes` for whole transactions, applied together.

    Each row contributes its pre-image and post-image. A pre-image without every column (the
    table's replica identity is not FULL, a MariaDB session's ``binlog_row_image=MINIMAL``, a
    child row changed by a foreign key action, a truncated table) is recorded as partial: it
    names the keys it can, and the plan sweeps the keys of the patterns it lacks a
    placeholder of, and the table's narrowed pages when it lacks a prefix's placeholder.
    """
    changes = Changes()
    changes.reader = scheme_values  # rows are logged by column name, values in the log's types
    add = changes.add
    schema = table = None
    tables: tuple[str, ...] = ()
    for transaction in transactions:
        for row in transaction.rows:
            if row.table != table or row.schema != schema:  # runs of one table: named once
                schema, table = row.schema, row.table
                tables = names(schema, table)
            if not tables:
                continue
            if row.operation == "truncate":
                changes.add_partial(tables, {})
                continue
            if not row.before_complete:
                if row.operation != "insert":
                    changes.add_partial(tables, row.before or {})
                elif row.before is not None:
                    add(tables, row.before)
                if row.after is not None:
                    add(tables, row.after)
                changes.touch(tables)
                continue
            if row.before is not None:
                add(tables, row.before)
            if row.after is not None:
                add(tables, row.after)
    return changes
