"""Invalidations an application asks for: ``FastRDB.invalidate`` (one row's keys) and
``FastRDB.invalidate_all`` (a whole table).

They are delivered like a commit's (:func:`fastrdb.events.invalidator.invalidate_now`): a
key goes with its fill lease, so a read that began before can no longer fill it, and what Redis
does not take is kept and replayed (until then this process serves nothing from that server).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper, Session

from fastrdb.cache.health import ClientHealth
from fastrdb.errors import FastRDBError
from fastrdb.events.changes import Changes
from fastrdb.events.invalidator import invalidate_now
from fastrdb.events.shapes import mapper_shape
from fastrdb.plan import Plan
from fastrdb.snapshots import run_read

__all__ = ["invalidate_row", "invalidate_table"]


async def invalidate_row(
    plan: Plan[Any, Any],
    client: Any,
    health: ClientHealth,
    given: Mapping[str, Any],
    *,
    db: AsyncSession | None,
) -> bool:
    """Drop the keys of the row that ``given`` (column values) names, by every published
    pattern of its tables, and the pages and counts that could hold it.

    ``given`` should hold every placeholder of the instance's ``pattern`` and
    ``invalidate_pattern_prefix``; otherwise the rows matching it are read through ``db`` and
    their values name the keys. Raises ``FastRDBError`` naming an unknown column, or the
    first missing placeholder when there is no ``db`` to read or no row matches. True if Redis
    took the invalidation (else it is kept for replay).
    """
    values = plan.convert(given)
    mapper = plan.mapper
    patterns = [pattern for pattern in (plan.row, plan.prefix) if pattern is not None]
    missing = [field for pattern in patterns for field in pattern.missing(values)]
    snapshots = [dict(values)]
    if missing:
        if db is None or not values:
            raise FastRDBError(
                missing[0],
                f"is needed to name the keys of a {mapper.class_.__name__} row: give it, or "
                "db= and other values of the row to read it from the database "
                "(invalidate_all() drops the whole table)",
            )
        rows = await _read_rows(db, mapper, values)
        if not rows:
            raise FastRDBError(
                missing[0],
                f"no {mapper.class_.__name__} row matches {sorted(values)}: its keys can't be "
                "named without this field (give it)",
            )
        snapshots += rows
    changes = Changes()
    tables = mapper_shape(mapper).tables
    for snapshot in snapshots:
        changes.add(tables, snapshot)
    return await invalidate_now(client, health, changes)


async def invalidate_table(client: Any, health: ClientHealth, mapper: Mapper[Any]) -> bool:
    """Drop every entry of the mapper's tables (a scan: see :mod:`fastrdb.cache.wipe`).
    True if Redis took it; otherwise it is kept and replayed, as a whole table."""
    changes = Changes()
    changes.wipe(mapper_shape(mapper).tables)
    return await invalidate_now(client, health, changes)


async def _read_rows(
    db: AsyncSession, mapper: Mapper[Any], values: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every column value of the rows matching ``values``, as the database holds them."""
    shape = mapper_shape(mapper)
    clauses: list[ColumnElement[bool]] = [
        shape.column(name).is_(None) if value is None else shape.column(name) == value
        for name, value in values.items()
    ]
    query = shape.select_values().where(*clauses)

    def read(session: Session, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [dict(row._mapping) for row in session.execute(query)]

    return (await run_read(db, read))[0]
