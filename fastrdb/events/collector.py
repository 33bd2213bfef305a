"""Hooks that record what each flush and DML statement changes, from what the DATABASE holds
(nothing is sent here; the invalidator acts on it at commit).

The session's state is not evidence: attributes may be expired, a copy out of date, and the
unit of work writes rows that are in none of ``session.new/dirty/deleted`` (delete-orphan,
cascades). So, per row the flush writes:

- pre-image (UPDATE, DELETE): the row as the database holds it, read under the write lock
  (``SELECT … FOR UPDATE`` by primary key): in one SELECT per hierarchy in ``before_flush``
  for the modified and deleted instances, and in ``before_update``/``before_delete`` (mapper
  events, which fire for every row the flush writes) for any row not read yet. A row that
  FastRDB's own ``update``/``delete`` just loaded with ``SELECT … FOR UPDATE`` in the same
  transaction (:func:`read_under_lock`; not on SQLite) is taken from that load instead. On
  PostgreSQL and SQLite a row of a single-table hierarchy (plain, on PostgreSQL) is left to its
  UPDATE, which reads it itself (:mod:`fastrdb.events.folding`);
- post-image (INSERT, UPDATE): read back by primary key in ``after_flush``, one SELECT per
  hierarchy, so server defaults, ``onupdate`` columns and SQL expressions are seen as stored;
  except an UPDATE that returned it (folded) or whose result is known exactly from the
  pre-image and the values it sent (:mod:`fastrdb.events.exact`).

DML statements run through the session are handled in :mod:`fastrdb.events.statements`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    UOWTransaction,
    attributes,
    object_session,
)
from sqlalchemy.orm.base import PassiveFlag
from sqlalchemy.sql.dml import Delete, Insert, Update

from fastrdb._logging import log
from fastrdb.events.bindings import CHANGES_KEY, Binding, binding_of
from fastrdb.events.changes import Changes
from fastrdb.events.exact import known_post_image
from fastrdb.events.folding import Folding, foldable
from fastrdb.events.images import Row, read_by_identity
from fastrdb.events.shapes import Shape, mapper_shape, table_name, table_shape
from fastrdb.events.statements import Statement, param_sets, statement_table

__all__ = [
    "after_flush",
    "after_write",
    "before_flush",
    "before_delete",
    "before_update",
    "changes_of",
    "do_orm_execute",
    "read_under_lock",
    "table_name",
]

_FLUSH_KEY = "fastrdb.flush"
_LOCKED_KEY = "fastrdb.locked"

Identity = tuple[Any, ...]


class _Flush:
    """Images gathered during one flush, per hierarchy shape and identity."""

    __slots__ = ("after", "before", "connection", "folding", "known", "unseen")

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.before: dict[Shape, dict[Identity, Row]] = {}
        self.after: dict[Shape, dict[Identity, type | None]] = {}
        """Rows to read back after the flush."""
        self.known: dict[Shape, dict[Identity, tuple[type, Row]]] = {}
        """Rows whose post-image is known without reading it back."""
        self.folding = Folding(self.before, self.known, self.after)
        """Rows whose UPDATE reads their pre-image itself (PostgreSQL, SQLite); rows written
        again."""
        self.unseen: set[Shape] = set()
        """Hierarchies a deferred row of which was updated by a statement FastRDB did not see
        (another ``before_execute`` listener replaced it): their entries are all dropped."""


def changes_of(session: Session) -> Changes:
    """The changes recorded so far in ``session``'s transaction, created on first use."""
    changes: Changes | None = session.info.get(CHANGES_KEY)
    if changes is None:
        changes = session.info[CHANGES_KEY] = Changes()
    return changes


def _flush_of(session: Session) -> _Flush:
    flush: _Flush | None = session.info.get(_FLUSH_KEY)
    if flush is None:
        flush = session.info[_FLUSH_KEY] = _Flush()
    return flush


def _identity(state: InstanceState[Any]) -> Identity:
    """The row's primary key as the database holds it (before this flush changes it)."""
    if state.key is not None:
        return tuple(state.key[1])
    return tuple(state.mapper.primary_key_from_instance(state.obj()))


def _written(state: InstanceState[Any]) -> bool:
    """Whether the flush writes the row's own columns: what
    ``Session.is_modified(obj, include_collections=False)`` answers, asking only the attributes
    that have a history (those in ``committed_state``; it asks every attribute of the class)."""
    if not state.modified:
        return False
    manager, values = state.manager, state.dict
    for key in state.committed_state:
        impl = manager[key].impl
        if hasattr(impl, "get_collection"):
            continue
        added, _, deleted = impl.get_history(state, values, passive=PassiveFlag.NO_CHANGE)
        if added or deleted:
            return True
    return False


def before_flush(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    """Lock and read, in one SELECT per hierarchy, the rows this flush will update or delete,
    except those whose UPDATE will read them itself (:mod:`fastrdb.events.folding`)."""
    failed: _Flush | None = session.info.pop(_FLUSH_KEY, None)
    if failed is not None:  # left by a flush that failed: its rows were not written
        failed.folding.end()
    if binding_of(session) is None:
        return
    flush = _flush_of(session)
    handed = _handed_over(session)
    rows: dict[Shape, tuple[Mapper[Any], list[Identity], list[Identity]]] = {}
    """Per hierarchy: a mapper of it, the rows to read now, the rows its UPDATE may read."""
    for obj in session.deleted:
        state = attributes.instance_state(obj)
        if state.key is not None:
            shape = mapper_shape(state.mapper)
            rows.setdefault(shape, (state.mapper, [], []))[1].append(_identity(state))
    for obj in session.dirty:
        state = attributes.instance_state(obj)
        if state.key is not None and _written(state):
            shape = mapper_shape(state.mapper)
            deferred = state.mapper.version_id_col is None
            entry = rows.setdefault(shape, (state.mapper, [], []))
            (entry[2] if deferred else entry[1]).append(_identity(state))
    for shape, (mapper, unread, updated) in rows.items():
        connection = session.connection(bind_arguments={"mapper": mapper})
        known = handed.get(shape, {})
        if updated and not foldable(connection, shape):
            unread, updated = unread + updated, []
        for identity in updated:  # its UPDATE returns it (a row noted as loaded too)
            flush.folding.defer(connection, shape, identity)
        before = flush.before.setdefault(shape, {})
        before.update({identity: known[identity] for identity in unread if identity in known})
        unread = [identity for identity in unread if identity not in known]
        if unread:
            before.update(read_by_identity(connection, shape, unread, lock=True))


def read_under_lock(session: Session, obj: Any) -> None:
    """Note that ``obj`` was just loaded in full by a ``SELECT … FOR UPDATE`` in the session's
    transaction (FastRDB's own update and delete): the next flush takes its pre-image from it
    instead of reading the row again. Not on SQLite (``FOR UPDATE`` takes no lock there), nor
    for a row of an inheritance hierarchy or one with unloaded columns: those are read.

    Call it before changing ``obj``. What is noted holds only for this transaction's next
    flush."""
    state = attributes.instance_state(obj)
    mapper = state.mapper
    if state.key is None or mapper.inherits is not None or mapper.polymorphic_map:
        return
    if session.get_bind(mapper=mapper).dialect.name == "sqlite":
        return
    shape = mapper_shape(mapper)
    loaded = state.dict
    if not all(key in loaded for key, _ in shape.columns):
        return
    row = {key: loaded[key] for key, _ in shape.columns}
    transaction, rows = session.info.get(_LOCKED_KEY, (None, {}))
    if transaction is not session.get_transaction():
        rows = {}
    rows.setdefault(shape, {})[_identity(state)] = row
    session.info[_LOCKED_KEY] = (session.get_transaction(), rows)


def _handed_over(session: Session) -> dict[Shape, dict[Identity, Row]]:
    """The rows :func:`read_under_lock` noted in the current transaction (then forgotten)."""
    transaction, rows = session.info.pop(_LOCKED_KEY, (None, {}))
    if transaction is None or transaction is not session.get_transaction():
        return {}
    return rows  # type: ignore[no-any-return]


def before_update(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    """Read the row's pre-image if ``before_flush`` did not (rows modified during the flush)."""
    session = object_session(target)
    if session is not None:
        _read_before(session, mapper, connection, target, update=True)


def before_delete(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    """Read the row's pre-image if ``before_flush`` did not (orphans, cascades)."""
    session = object_session(target)
    if session is not None:
        _read_before(session, mapper, connection, target, update=False)


def _read_before(
    session: Session, mapper: Mapper[Any], connection: Connection, target: Any, *, update: bool
) -> None:
    state = attributes.instance_state(target)
    if state.key is None or binding_of(session) is None:
        return
    flush = _flush_of(session)
    shape = mapper_shape(mapper)
    known = flush.before.setdefault(shape, {})
    identity = _identity(state)
    if identity in known or flush.folding.deferred_on(connection, shape, identity):
        return  # read, or deferred to its UPDATE on this connection
    if update and not _written(state):
        return  # the flush writes no column of it
    if update and mapper.version_id_col is None and foldable(connection, shape):
        flush.folding.defer(connection, shape, identity)
    else:
        known.update(read_by_identity(connection, shape, [identity], lock=True))
        flush.folding.undefer(shape, identity)


def after_write(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    """``after_insert``/``after_update``: remember the row, read back after the flush."""
    session = object_session(target)
    if session is None or binding_of(session) is None:
        return
    state = attributes.instance_state(target)
    if state.key is not None and not _written(state):
        return
    flush = _flush_of(session)
    flush.connection = connection
    shape = mapper_shape(mapper)
    identity = tuple(mapper.primary_key_from_instance(target))
    known = None
    if state.key is not None:  # an UPDATE (an INSERT has no pre-image)
        if not flush.folding.written(shape, identity):
            # Written (the flush sends its changed columns), but its UPDATE never came by the
            # engine's before_execute: its pre-image is unknown, so every entry of its tables
            # goes (a SCAN of their patterns, the rare path).
            flush.unseen.add(shape)
            return
        if identity in flush.after.get(shape, {}):
            flush.after[shape][identity] = state.class_  # written again: read back
            return
        known = flush.folding.folded.get(shape, {}).pop(identity, None)
        if known is None:
            before = flush.before.get(shape, {}).get(identity)
            known = known_post_image(state, shape, before, connection)
    if known is None:
        flush.after.setdefault(shape, {})[identity] = state.class_
        flush.known.get(shape, {}).pop(identity, None)
    else:
        flush.known.setdefault(shape, {})[identity] = (state.class_, known)
        flush.after.get(shape, {}).pop(identity, None)
        flush.folding.watch(connection)  # a later UPDATE of the row makes it out of date


def after_flush(session: Session, flush_context: UOWTransaction) -> None:
    flush: _Flush | None = session.info.pop(_FLUSH_KEY, None)
    binding = binding_of(session)
    if flush is None:
        return
    flush.folding.end()
    if binding is None:
        return
    changes = changes_of(session)
    _touch_association_tables(session, changes)
    for shape in flush.unseen:
        log.warning("cache_pre_image_unseen", tables=list(shape.tables))
        changes.wipe(shape.tables)
    for shape, rows in flush.before.items():
        for row in rows.values():
            changes.add(shape.tables, row)
    for shape, folded in flush.folding.folded.items():
        for row in folded.values():  # written under another identity (its key changed)
            changes.add(shape.tables, row)
    for shape, known in flush.known.items():
        for identity, (cls, row) in known.items():
            _add_after(changes, binding, shape, flush, identity, cls, row)
    if not flush.after:
        return
    connection = flush.connection or session.connection()
    for shape, written in flush.after.items():
        rows = read_by_identity(connection, shape, written, lock=False)
        for identity, row in rows.items():
            _add_after(changes, binding, shape, flush, identity, written.get(identity), row)


def _add_after(
    changes: Changes,
    binding: Binding,
    shape: Shape,
    flush: _Flush,
    identity: Identity,
    cls: type | None,
    row: Row,
) -> None:
    """Record a row's post-image (unless it equals its pre-image)."""
    if row != flush.before.get(shape, {}).get(identity):
        changes.add(shape.tables, row)
    if binding.refresh and cls is not None:
        changes.note_written(cls, identity, row)


def _touch_association_tables(session: Session, changes: Changes) -> None:
    """The unit of work writes association rows (``secondary``) that no mapper event sees: a
    collection changed, or its owner deleted, touches the association table."""
    for obj in (*session.dirty, *session.deleted):
        state = attributes.instance_state(obj)
        for prop in state.mapper.relationships:
            secondary = prop.secondary
            if secondary is None or not hasattr(secondary, "name"):
                continue
            if (
                state.deleted
                or obj in session.deleted
                or state.attrs[prop.key].history.has_changes()
            ):
                changes.touch([table_name(secondary)])


def do_orm_execute(execute_state: ORMExecuteState) -> Any:
    if not (execute_state.is_update or execute_state.is_delete or execute_state.is_insert):
        return None
    session = execute_state.session
    binding = binding_of(session)
    if binding is None:
        return None
    statement = execute_state.statement
    if not isinstance(statement, Update | Delete | Insert):
        return None
    mapper = execute_state.bind_mapper
    shape = mapper_shape(mapper) if mapper is not None else table_shape(statement_table(statement))
    changes = changes_of(session)
    dml = Statement(shape, statement, param_sets(execute_state.parameters))
    connection = session.connection()
    dml.read_before(connection)
    result = execute_state.invoke_statement()
    changes.touch(shape.tables)
    for row in dml.before:
        changes.add(shape.tables, row)
    for values in dml.hints():
        changes.add(shape.tables, values)
    for row in dml.read_after(connection, result):
        changes.add(shape.tables, row)
        if binding.refresh and mapper is not None:
            changes.note_written(mapper.class_, shape.identity(row), row)
    return result
