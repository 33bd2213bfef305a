"""The read path of one model: ``get``, ``get_multi`` and ``count`` served from the near cache
or Redis, else leased, read from the database and filled (one shape for every miss)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from functools import partial
from typing import Any, Generic, TypeAlias, TypeVar

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastrdb._types import AsyncRedis, Raw
from fastrdb.cache import store
from fastrdb.cache.near import NearCaches
from fastrdb.cache.readthrough import (
    Entry,
    Loaded,
    Stats,
    coalesced,
    corrupt,
    near_hit,
    read_through,
)
from fastrdb.events.bindings import CHANGES_KEY
from fastrdb.events.changes import Changes
from fastrdb.keys import deps_key
from fastrdb.negatives import ABSENT, NEGATIVE_PAYLOAD, Absent, compares_exactly, decoder
from fastrdb.plan import Plan
from fastrdb.sessions import Clients, checks_due
from fastrdb.snapshots import Read as SnapshotRead
from fastrdb.snapshots import run_read

__all__ = ["Reads"]

ModelT = TypeVar("ModelT")
ResponseT = TypeVar("ResponseT", bound=BaseModel)
T = TypeVar("T")
A = TypeVar("A")

Read: TypeAlias = SnapshotRead[Loaded[T]]
"""A database read (see :data:`fastrdb.snapshots.Read`): the value and the text to cache."""

Shaped: TypeAlias = tuple[
    str, Callable[[Raw], T], Callable[[AsyncSession], tuple[Entry, Read[T]]], dict[str, str], str
]
"""What a read call maps to: its key, how to decode a cached value, how to prepare its miss
in a session (the entry to lease and fill, and the database read), the context of its log
events, and the near cache's group of the key (its row key, or the table's lists)."""

Shape: TypeAlias = Callable[[A], Shaped[T]]
"""How a read call (``A``: its arguments) maps to its :data:`Shaped`."""

ListCall: TypeAlias = tuple[int, int, str | None, bool, dict[str, Any]]
"""The arguments of ``get_multi``: limit, page, order_by, ascending and the filters."""


def decode_count(raw: Raw) -> int:
    """A cached count (``int`` raises ``ValueError`` on anything else: a corrupt entry)."""
    total = int(raw)
    if total < 0:
        raise ValueError(f"negative count {total}")
    return total


class Reads(Generic[ModelT, ResponseT]):
    """The read path of one ``FastRDB`` instance (see the module's docstring).

    ``get``, ``get_multi`` and ``count`` are plain methods that return the one coroutine a
    read runs (:meth:`_read`), given the call's *shape*: what it maps to is worked out inside
    that coroutine, so a bad argument raises where the call is awaited, and a hit runs no
    other coroutine of FastRDB's than the Redis ``GET``'s own (:func:`store.get`). On a busy
    event loop each coroutine a hit passes through costs its creation and a step at every
    resumption."""

    def __init__(
        self,
        plan: Plan[ModelT, ResponseT],
        stats: Stats,
        clients: Clients,
        near: NearCaches | None,
        exp: int,
    ) -> None:
        self._plan = plan
        self._stats = stats
        self._clients = clients
        self._near = near
        self._exp = exp
        self._decode_row = decoder(plan.response_schema.model_validate_json, stats)
        self._list_decoder = TypeAdapter(list[plan.response_schema])  # type: ignore[name-defined]
        # Bound once: a bound method is a new object at every attribute access.
        # A row's shape also decodes to ABSENT, which _read raises as NoResultFound.
        self._row_shape: Shape[dict[str, Any], ResponseT] = self._row  # type: ignore[assignment]
        self._list_shape: Shape[ListCall, list[ResponseT]] = self._list
        self._count_shape: Shape[dict[str, Any], int] = self._count

    def get(
        self, db: AsyncSession, redis: AsyncRedis, kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, ResponseT]:
        return self._read(db, redis, self._row_shape, kwargs)

    def get_multi(
        self,
        db: AsyncSession,
        redis: AsyncRedis,
        limit: int,
        page: int,
        order_by: str | None,
        ascending: bool,
        kwargs: dict[str, Any],
    ) -> Coroutine[Any, Any, list[ResponseT]]:
        call = (limit, page, order_by, ascending, kwargs)
        return self._read(db, redis, self._list_shape, call)

    def count(
        self, db: AsyncSession, redis: AsyncRedis | None, kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, int]:
        return self._read(db, redis, self._count_shape, kwargs)

    def _row(self, kwargs: dict[str, Any]) -> Shaped[ResponseT | Absent]:
        # Remembered per distinct call (its values and their types), as the plan's key is: a
        # hit builds one small tuple here. One filter, the common call, is written out.
        if len(kwargs) == 1:
            (item,) = kwargs.items()
            memo: tuple[Any, ...] = ("get", item, type(item[1]))
        else:
            memo = ("get", *kwargs.items(), *map(type, kwargs.values()))
        return self._plan.recall(memo, self._shape_row, kwargs)

    def _shape_row(self, kwargs: dict[str, Any]) -> Shaped[ResponseT | Absent]:
        plan = self._plan
        base, key, filters = plan.row_key(kwargs)
        prepare = partial(self._prepare_row, base, key, filters, {})
        return key, self._decode_row, prepare, plan.context, base

    def _prepare_row(
        self,
        base: str,
        key: str,
        filters: dict[str, Any],
        exact: dict[str, bool],
        db: AsyncSession,
    ) -> tuple[Entry, Read[ResponseT | Absent]]:
        """The miss of a ``get``; ``exact`` remembers, per dialect, whether the database
        matches ``filters`` exactly when their key text matches (a negative entry may be
        cached)."""
        plan = self._plan
        negative_exp = plan.settings.negative_exp
        if negative_exp:
            dialect = db.get_bind(plan.mapper).dialect.name
            fits = exact.get(dialect)
            if fits is None:
                columns = plan.columns
                fits = compares_exactly(dialect, columns.columns, columns.python_types, filters)
                exact[dialect] = fits
            if not fits:
                negative_exp = 0

        def read(session: Session, options: Mapping[str, Any]) -> Loaded[ResponseT | Absent]:
            query, params = plan.select_where(filters)
            obj = session.execute(query, params, execution_options=options).scalar_one_or_none()
            if obj is None:
                return Loaded(ABSENT, NEGATIVE_PAYLOAD if negative_exp else None, negative_exp)
            response = plan.response(obj)
            same_key = plan.row_key_of(obj) == base
            return Loaded(response, response.model_dump_json() if same_key else None)

        registries = list(plan.embedded[1])
        if len(filters) > len(plan.row.fields):
            registries.insert(0, deps_key(base))
        if negative_exp:
            registries.append(plan.namespace.negatives(plan.table))
        return Entry(key, plan.schemes_key, plan.row_schemes, registries, plan.family), read

    def _list(self, call: ListCall) -> Shaped[list[ResponseT]]:
        plan = self._plan
        limit, page, order_by, ascending, kwargs = call
        key, ordering, filters = plan.list_key(limit, page, order_by, ascending, kwargs)

        def prepare(db: AsyncSession) -> tuple[Entry, Read[list[ResponseT]]]:
            narrowed = plan.narrowing(db.get_bind(plan.mapper).dialect.name, filters, key)

            def read(session: Session, options: Mapping[str, Any]) -> Loaded[list[ResponseT]]:
                selected, params = plan.select_where(filters)
                query = (
                    selected.order_by(*(o.asc() if ascending else o.desc() for o in ordering))
                    .limit(limit)
                    .offset((page - 1) * limit)
                )
                rows = session.execute(query, params, execution_options=options).scalars().all()
                responses = [plan.response(row) for row in rows]
                if narrowed is not None and not plan.rows_fit(rows, filters):
                    return Loaded(responses, None)
                return Loaded(
                    responses, "[" + ",".join(r.model_dump_json() for r in responses) + "]"
                )

            embeds = plan.embedded[1]
            if narrowed is None:
                registry = plan.namespace.lists(plan.table)
                return Entry(key, plan.schemes_key, (), (registry, *embeds), plan.family), read
            registry = plan.namespace.narrowed_lists(plan.table, narrowed)
            schemes = plan.prefix_schemes
            return Entry(key, plan.schemes_key, schemes, (registry, *embeds), plan.family), read

        return key, self._list_decoder.validate_json, prepare, plan.list_context, plan.list_group

    def _count(self, kwargs: dict[str, Any]) -> Shaped[int]:
        plan = self._plan
        key, filters = plan.count_key(kwargs)

        def prepare(db: AsyncSession) -> tuple[Entry, Read[int]]:
            def read(session: Session, options: Mapping[str, Any]) -> Loaded[int]:
                clauses, params = plan.where(filters)
                query = select(func.count()).select_from(plan.mapper.local_table).where(*clauses)
                total = int(session.execute(query, params).scalar_one())
                return Loaded(total, str(total))

            registry = plan.namespace.lists(plan.table)
            return Entry(key, plan.schemes_key, (), (registry,), plan.family), read

        return key, decode_count, prepare, plan.list_context, plan.list_group

    async def _read(
        self, db: AsyncSession, redis: AsyncRedis | None, shape: Shape[A, T], call: A
    ) -> T:
        """Serve the key ``shape`` maps ``call`` to from the near cache or Redis, or run its
        ``prepare(db)`` (only a miss pays it): the entry to lease and fill, and the database
        read. Without ``redis``, read the database. ``ABSENT`` (no row) raises
        ``NoResultFound``.

        With a near cache: served from it when it holds the key; else what Redis returned is
        stored in it, unless an invalidation of the key, of its group (its row key, or the
        table's lists) or of the tables its entries embed arrived since before the ``GET``."""
        key, decode, prepare, context, group = shape(call)
        stats = self._stats
        if redis is None:
            value = (await run_read(db, prepare(db)[1]))[0].value
            return _present(value)
        clients = self._clients
        health = clients.bound(db, redis)
        if health.failures or not health.policy_checked or health.server.pending is not None:
            if checks_due(health):
                await clients.check(redis, health)
            usable = health.usable
        else:  # the common case, without a call: the breaker is closed, nothing is pending
            usable = health.safe
        changes: Changes | None = db.sync_session.info.get(CHANGES_KEY)
        if usable and (changes is None or not self._written_in(changes)):
            near = self._near.of(redis) if self._near is not None else None
            ticket = None
            if near is not None:
                served = near_hit(near, key, decode, stats)
                if served is not store.MISS:
                    return _present(served)
                ticket = near.tracker.ticket()
            raw = await store.get(redis, health, key)
            if raw is not store.MISS:
                try:
                    value = decode(raw)
                except ValueError:
                    corrupt(key, stats, context)  # leased and replaced below
                else:
                    stats.hits += 1  # counted, not logged: a log call costs more than a hit
                    if ticket is not None and near is not None:
                        near.store(key, (group, *self._plan.near_groups), raw, ticket)
                    if value is not ABSENT:
                        return value
                    raise _no_row()
            entry, read = prepare(db)
            value = await read_through(
                redis,
                health,
                entry,
                decode=decode,
                load=_loader(db, read),
                exp=self._exp,
                stats=stats,
                context=context,
            )
            return _present(value)
        stats.bypasses += 1
        load = _loader(db, prepare(db)[1])
        session = db.sync_session
        if changes is None and not (session.new or session.dirty or session.deleted):
            # Redis can't be used: concurrent misses of this key in the process share one read.
            return _present(await coalesced(key, decode, load))
        return _present((await load()).value)

    def _written_in(self, changes: Changes) -> bool:
        """Whether ``changes`` touch the model's table or a table its entries embed."""
        plan = self._plan
        return changes.touches(plan.table) or any(map(changes.touches, plan.embedded[0]))


def _present(value: T) -> T:
    """``value``, unless it is ABSENT (a ``get`` of a row that does not exist)."""
    if value is ABSENT:
        raise _no_row()
    return value


def _no_row() -> NoResultFound:
    return NoResultFound("No row was found when one was required")


def _loader(db: AsyncSession, read: Read[T]) -> Callable[[], Awaitable[Loaded[T]]]:
    """``read`` run in ``db`` (:func:`fastrdb.snapshots.run_read`); what it would cache is
    kept only if the read may be cached (not older than its lease, no uncommitted writes)."""

    async def load() -> Loaded[T]:
        loaded, fresh = await run_read(db, read)
        return loaded if fresh else Loaded(loaded.value, None)

    return load
