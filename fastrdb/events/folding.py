"""The UPDATE statements of a listened flush, as they run: on PostgreSQL and SQLite the UPDATE
reads the row's pre-image itself (one round trip instead of a locked SELECT before it; on
PostgreSQL no post-image read after it either); on every database, a row written again after its
post-image became known (a ``post_update``) is read back after the flush instead.

PostgreSQL: the unit of work's UPDATE of a row by primary key is rewritten, as it is executed,
into::

    WITH old AS MATERIALIZED (SELECT … FROM t WHERE pk = :pk FOR UPDATE)
    UPDATE t SET … FROM old WHERE t.pk = :pk AND t.pk = old.pk
    RETURNING old.…, t.…

The CTE takes the row's write lock before the UPDATE writes it, as the separate
``SELECT … FOR UPDATE`` did: under READ COMMITTED a row another transaction holds is waited
for and then read in its newest committed version (the lock's own re-check), and the UPDATE
applies to that version. So ``old`` is the row as the database held it under the lock, and
``RETURNING t.…`` is the row exactly as stored (SQL expressions, defaults and type conversions
included). The statement changes the same rows as the original (one, or none when the row is
gone, which the unit of work reports as before), so its row count is the same.

Only where that is plainly true: PostgreSQL, a hierarchy of one table with no trigger, rule,
generated column, partition or inheritance child (as :mod:`fastrdb.events.exact` asks the
database) and no version counter, and an UPDATE of one row by its primary key (``onupdate``
columns are fine: the UPDATE sets them and RETURNING shows them). A row the flush defers
here and whose UPDATE comes in another form (several rows in one ``executemany``, an
unexpected WHERE) has its pre-image read under the lock right before that statement runs.

SQLite: the unit of work's UPDATE by primary key (one row or an ``executemany`` of several) gets
one more condition, ``AND fastrdb_old(<every column>)``: a function FastRDB registers on the
connection that keeps its arguments and returns true. SQLite evaluates an UPDATE's WHERE on
each matched row before writing it, and an UPDATE holds the database's write lock before it
reads a row (in WAL mode, a transaction whose snapshot is not the newest cannot take it), so the
arguments are the row as stored, under the lock that serializes every writer: the pre-image
without ``BEGIN IMMEDIATE`` and a SELECT, two trips through the driver's thread fewer. The
values are raw SQLite values and go through the columns' result processors, as a SELECT's
would (not with ``native_datetime=True``, where the driver converts some itself: those rows are
read). The post-image is found as where nothing is folded (:mod:`fastrdb.events.exact`: known
from the pre-image and the values sent, or read back). Hierarchies of one table with at most
100 columns (SQLite's default limit is 127 arguments).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Boolean, ColumnElement, bindparam, func, select
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import BooleanClauseList

from fastrdb._logging import log
from fastrdb.events.exact import plain
from fastrdb.events.images import Row, read_by_identity
from fastrdb.events.shapes import Shape, table_name

__all__ = ["Folding", "after_execute", "before_execute", "foldable"]

Identity = tuple[Any, ...]

_OLD, _NEW = "fastrdb_old_", "fastrdb_new_"

_FUNCTION = "fastrdb_old"
_RECORDER_KEY = "fastrdb.old_rows"
_MAX_ARGUMENTS = 100


class Folding:
    """What the statements of one flush change in its images: the rows whose UPDATE reads
    their own pre-image, and the post-images known without a read that a later statement of
    the flush makes out of date (a ``post_update`` writes a row a second time)."""

    __slots__ = ("after", "before", "connections", "deferred", "expected", "folded", "known")

    def __init__(
        self,
        before: dict[Shape, dict[Identity, Row]],
        known: dict[Shape, dict[Identity, tuple[type, Row]]],
        after: dict[Shape, dict[Identity, type | None]],
    ) -> None:
        self.before = before
        """The flush's pre-images (folded and late-read rows are added)."""
        self.known = known
        """The flush's post-images known without a read."""
        self.after = after
        """The flush's rows to read back after it (out-of-date known rows are moved here)."""
        self.deferred: dict[Shape, set[Identity]] = {}
        """Rows to be updated whose pre-image has not been read yet."""
        self.folded: dict[Shape, dict[Identity, Row]] = {}
        """Post-images returned by folded UPDATEs, until the rows' ``after_update``."""
        self.expected: tuple[Update, Shape, list[Identity]] | None = None
        """A folded UPDATE being executed, and the deferred rows it names."""
        self.connections: list[Connection] = []

    def watch(self, connection: Connection) -> None:
        """See the statements ``connection`` runs until :meth:`end`."""
        if _active.get(connection) is not self:
            _active[connection] = self
            self.connections.append(connection)

    def defer(self, connection: Connection, shape: Shape, identity: Identity) -> None:
        """Leave the row's pre-image to its UPDATE on ``connection``."""
        self.deferred.setdefault(shape, set()).add(identity)
        self.watch(connection)

    def deferred_on(self, connection: Connection, shape: Shape, identity: Identity) -> bool:
        return identity in self.deferred.get(shape, ()) and _active.get(connection) is self

    def undefer(self, shape: Shape, identity: Identity) -> None:
        self.deferred.get(shape, set()).discard(identity)

    def written(self, shape: Shape, identity: Identity) -> bool:
        """Whether the row's UPDATE ran (False: deferred, and no statement wrote it)."""
        return identity not in self.deferred.get(shape, ())

    def end(self) -> None:
        """The flush is over: its connections' statements are left alone."""
        for connection in self.connections:
            if _active.get(connection) is self:
                del _active[connection]
        self.connections.clear()

    def _shape_of(self, statement: Update) -> Shape | None:
        name = table_name(statement.table)
        for shape in (*self.deferred, *self.folded, *self.known):
            if name in shape.tables:
                return shape
        return None

    def _outdate(self, shape: Shape, identities: list[Identity] | None) -> None:
        """The rows ``identities`` (None: every row of ``shape``) are written again: what was
        known of their post-images is read back after the flush instead."""
        known, folded = self.known.get(shape, {}), self.folded.get(shape, {})
        for identity in list(known) + list(folded) if identities is None else identities:
            if identity in known:
                self.after.setdefault(shape, {})[identity] = known.pop(identity)[0]
            if identity in folded:
                del folded[identity]
                self.after.setdefault(shape, {}).setdefault(identity, None)


_active: weakref.WeakKeyDictionary[Connection, Folding] = weakref.WeakKeyDictionary()
_statements: weakref.WeakKeyDictionary[Update, dict[str, Update | None]] = (
    weakref.WeakKeyDictionary()
)


class _Recorder:
    """``fastrdb_old(…)`` on one SQLite connection: called by a folded UPDATE's WHERE with a
    matched row's columns as stored before the write, it keeps them and returns true."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def __call__(self, *values: Any) -> int:
        self.rows.append(values)
        return 1


def foldable(connection: Connection, shape: Shape) -> bool:
    """Whether an UPDATE of a row of ``shape`` (with no version counter: the caller checks)
    on ``connection`` can read its own pre-image."""
    if len(shape.tables) != 1 or shape.selectable is not shape.lock_table:
        return False
    dialect = connection.dialect
    if dialect.name == "sqlite":
        return (
            len(shape.columns) <= _MAX_ARGUMENTS
            and not getattr(dialect, "native_datetime", False)
            and _recorder(connection) is not None
        )
    return (
        dialect.name == "postgresql"
        and (dialect.server_version_info or (0,)) >= (12,)  # AS MATERIALIZED
        and plain(connection, shape, by_metadata=False)  # RETURNING shows what onupdate set
    )


def _recorder(connection: Connection) -> _Recorder | None:
    """The connection's ``fastrdb_old`` function, registered on first use (None: the driver
    cannot register functions)."""
    info = connection.connection.info
    recorder: _Recorder | None = info.get(_RECORDER_KEY, False) or None
    if _RECORDER_KEY not in info:
        recorder = _Recorder()
        try:
            connection.connection.dbapi_connection.create_function(  # type: ignore[union-attr]
                _FUNCTION, -1, recorder
            )
        except Exception as error:  # a driver without create_function: pre-images are read
            log.debug("cache_fold_unavailable", error=repr(error))
            recorder = None
        info[_RECORDER_KEY] = recorder or False
    return recorder


def before_execute(
    connection: Connection,
    statement: Any,
    multiparams: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    execution_options: Any,
) -> tuple[Any, Sequence[Mapping[str, Any]], Mapping[str, Any]]:
    """``before_execute`` (``retval=True``) during a flush: fold a deferred row's UPDATE;
    before an UPDATE of another form, read the pre-images of the deferred rows it writes; and
    note rows written again after their post-image became known."""
    folding = _active.get(connection) if isinstance(statement, Update) else None
    if folding is None:
        return statement, multiparams, params
    assert isinstance(statement, Update)
    shape = folding._shape_of(statement)
    if shape is None:
        return statement, multiparams, params
    identities = _named(shape, statement, list(multiparams) or [params])
    folding._outdate(shape, identities)
    pending = folding.deferred.get(shape)
    if not pending:
        return statement, multiparams, params
    sqlite = connection.dialect.name == "sqlite"
    named = [identity for identity in identities or () if identity in pending]
    if named and (sqlite or len(named) == len(identities or ()) == 1):
        rewritten = _folded(shape, statement, sqlite=sqlite)
        if rewritten is not None:
            recorder = _recorder(connection) if sqlite else None
            if recorder is not None:
                recorder.rows.clear()  # nothing left over from a statement that failed
            folding.expected = (rewritten, shape, named)
            return rewritten, multiparams, params
    if identities is None:
        hit = list(pending)  # rows not named by the parameters: read every deferred one
    else:
        hit = [identity for identity in identities if identity in pending]
    if hit:
        folding.before.setdefault(shape, {}).update(
            read_by_identity(connection, shape, hit, lock=True)
        )
        pending.difference_update(hit)
    return statement, multiparams, params


def after_execute(
    connection: Connection,
    statement: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
    result: CursorResult[Any],
) -> None:
    """``after_execute``: record the pre-images a folded UPDATE saw and, on PostgreSQL, the
    post-images it returned (nothing: the row is gone)."""
    folding = _active.get(connection)
    if folding is None or folding.expected is None or folding.expected[0] is not statement:
        return
    _, shape, identities = folding.expected
    folding.expected = None
    folding.deferred[shape].difference_update(identities)
    if connection.dialect.name == "sqlite":
        before = folding.before.setdefault(shape, {})
        wanted = set(identities)
        for old in _recorded(connection, shape):
            identity = shape.identity(old)
            if identity in wanted:
                before.setdefault(identity, old)
        return
    keys = [key for key, _ in shape.columns]
    count = len(keys)
    for row in result.fetchall():  # RETURNING the old columns, then the new (see _folded)
        values = tuple(row)
        old = dict(zip(keys, values[:count], strict=True))
        new = dict(zip(keys, values[count:], strict=True))
        folding.before.setdefault(shape, {})[shape.identity(old)] = old
        folding.folded.setdefault(shape, {})[shape.identity(old)] = new


def _named(
    shape: Shape, statement: Update, sets: Sequence[Mapping[str, Any]]
) -> list[Identity] | None:
    """The rows an UPDATE of the unit of work names by primary key (its parameters), or None
    when it does not name them so."""
    if statement.table is not shape.lock_table:
        return None
    labels = [str(shape.column(key)._label) for key in shape.primary_key]
    identities = [tuple(values.get(label) for label in labels) for values in sets]
    if any(None in identity for identity in identities):
        return None
    return identities


def _recorded(connection: Connection, shape: Shape) -> list[Row]:
    """The rows ``fastrdb_old`` kept on ``connection`` since the last call (then forgotten),
    their values through the columns' result processors."""
    recorder = _recorder(connection)
    if recorder is None or not recorder.rows:
        return []
    dialect = connection.dialect
    processors = [
        column.type._cached_result_processor(dialect, None) for _, column in shape.columns
    ]
    rows = [
        {
            key: value if processor is None else processor(value)
            for (key, _), processor, value in zip(shape.columns, processors, values, strict=True)
        }
        for values in recorder.rows
    ]
    recorder.rows.clear()
    return rows


def _folded(shape: Shape, statement: Update, *, sqlite: bool) -> Update | None:
    """``statement`` (the unit of work's UPDATE by primary key) reading its own pre-image, or
    None when it is not of that form."""
    dialect = "sqlite" if sqlite else "postgresql"
    cached = _statements.setdefault(statement, {})
    if dialect in cached:
        return cached[dialect]
    folded: Update | None = None
    keys = [shape.column(key) for key in shape.primary_key]
    by_key: list[ColumnElement[bool]] = [
        column == bindparam(column._label, type_=column.type) for column in keys
    ]
    criteria = statement._where_criteria
    if len(criteria) == 1 and isinstance(criteria[0], BooleanClauseList):
        criteria = tuple(criteria[0].clauses)  # the unit of work's AND of its own making
    by_primary_key = len(criteria) == len(by_key) and all(
        c.compare(k) for c, k in zip(criteria, by_key, strict=True)
    )
    if by_primary_key and sqlite:
        folded = statement.where(
            func.fastrdb_old(*(column for _, column in shape.columns), type_=Boolean)
        )
    elif by_primary_key and not statement._returning and not statement._return_defaults:
        # The CTE's columns get names no table has, so that a SQL expression in the SET
        # (``literal_column("seq") + 1``) still names the updated table's column alone.
        names = [f"{_OLD}{i}" for i in range(len(shape.columns))]
        old = (
            select(*(column.label(n) for n, (_, column) in zip(names, shape.columns, strict=True)))
            .select_from(shape.selectable)
            .where(*by_key)
            .with_for_update()
            .cte("fastrdb_old")
            .prefix_with("MATERIALIZED")
        )
        position = {key: i for i, (key, _) in enumerate(shape.columns)}
        folded = statement.where(
            *(
                column == old.c[names[position[key]]]
                for key, column in zip(shape.primary_key, keys, strict=True)
            )
        ).returning(
            *(old.c[name] for name in names),
            *(column.label(f"{_NEW}{i}") for i, (_, column) in enumerate(shape.columns)),
        )
    cached[dialect] = folded
    return folded
