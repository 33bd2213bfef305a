"""Rows as the database holds them, read in the writer's transaction: the pre-image of a write
(under the lock the write takes anyway) and its post-image (read back after it).

Values come back through the columns' types, so they are in each column's Python type as the
database returns them, whatever the session held or the statement was given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.engine import Connection

from fastrdb.events.shapes import Shape

__all__ = ["Row", "read_by_identity", "read_where"]

Row = dict[str, Any]

_BATCH = 500  # identities per SELECT


def read_by_identity(
    connection: Connection, shape: Shape, identities: Iterable[Sequence[Any]], *, lock: bool
) -> dict[tuple[Any, ...], Row]:
    """The rows of ``identities`` that exist, by identity; ``lock``: take their write lock."""
    wanted = list(dict.fromkeys(tuple(identity) for identity in identities))
    found: dict[tuple[Any, ...], Row] = {}
    for start in range(0, len(wanted), _BATCH):
        query = shape.select_values().where(shape.by_primary_key(wanted[start : start + _BATCH]))
        if lock:
            query = shape.locked(query)
        for row in connection.execute(query):
            values = dict(row._mapping)
            found[shape.identity(values)] = values
    return found


def read_where(
    connection: Connection,
    shape: Shape,
    where: ColumnElement[bool] | None,
    *,
    lock: bool,
    params: Iterable[Mapping[str, Any]] = (),
    extra: Sequence[ColumnElement[Any]] = (),
) -> list[Row]:
    """The rows matching ``where`` (once per parameter set), with ``extra`` labelled columns."""
    query = shape.select_values(*extra)
    if where is not None:
        query = query.where(where)
    if lock:
        query = shape.locked(query)
    rows: dict[tuple[Any, ...], Row] = {}
    for values in list(params) or [{}]:
        for row in connection.execute(query, dict(values)):
            mapping = dict(row._mapping)
            rows[shape.identity(mapping)] = mapping
    return list(rows.values())
