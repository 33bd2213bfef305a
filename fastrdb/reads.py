"""The read path of one model: ``get``, ``get_multi`` and ``count`` served from the near cache
or Redis, else leased, read from the database and filled (one shape for every miss)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeAlias, TypeVar

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession

from fastrdb._types import AsyncRedis, Raw
from fastrdb.cache import store
from fastrdb.cache.near import NearCaches
from fastrdb.cache.readthrough import Entry, Loaded, Stats, cached, coalesced, read_through
from fastrdb.events.bindings import CHANGES_KEY
from fastrdb.events.changes import Changes
from fastrdb.keys import deps_key
from fastrdb.negatives import ABSENT, NEGATIVE_PAYLOAD, Absent, compares_exactly, decoder
from fastrdb.plan import Plan
from fastrdb.sessions import Clients
from fastrdb.snapshots import run_read

__all__ = ["Reads"]

ModelT = TypeVar("ModelT")
ResponseT = TypeVar("ResponseT", bound=BaseModel)
T = TypeVar("T")

Read: TypeAlias = Callable[[Mapping[str, Any]], Awaitable[Loaded[T]]]
"""A database read, given its SELECT's execution options: the value and the text to cache."""


def decode_count(raw: Raw) -> int:
    """A cached count (``int`` raises ``ValueError`` on anything else: a corrupt entry)."""
    total = int(raw)
    if total < 0:
        raise ValueError(f"negative count {total}")
    return total


class Reads(Generic[ModelT, ResponseT]):
    """The read path of one ``FastRDB`` instance (see the module's docstring)."""

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

    async def get(self, db: AsyncSession, redis: AsyncRedis, kwargs: dict[str, Any]) -> ResponseT:
        plan = self._plan
        base, key, filters = plan.row_key(kwargs)

        def prepare() -> tuple[Entry, Read[ResponseT | Absent]]:
            negative_exp = plan.settings.negative_exp
            if negative_exp and not compares_exactly(
                db.get_bind(plan.mapper).dialect.name,
                plan.columns.columns,
                plan.columns.python_types,
                filters,
            ):
                negative_exp = 0

            async def read(options: Mapping[str, Any]) -> Loaded[ResponseT | Absent]:
                clauses, params = plan.where(filters)
                query = plan.select().where(*clauses)
                result = await db.execute(query, params, execution_options=options)
                obj = result.scalar_one_or_none()
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

        found = await self._read(
            db, redis, key, self._decode_row, prepare, plan.context, (base, *plan.near_groups)
        )
        if found is ABSENT:
            raise NoResultFound("No row was found when one was required")
        return found

    async def get_multi(
        self,
        db: AsyncSession,
        redis: AsyncRedis,
        limit: int,
        page: int,
        order_by: str | None,
        ascending: bool,
        kwargs: dict[str, Any],
    ) -> list[ResponseT]:
        plan = self._plan
        key, ordering, filters = plan.list_key(limit, page, order_by, ascending, kwargs)

        def prepare() -> tuple[Entry, Read[list[ResponseT]]]:
            narrowed = plan.narrowing(db.get_bind(plan.mapper).dialect.name, filters, key)

            async def read(options: Mapping[str, Any]) -> Loaded[list[ResponseT]]:
                clauses, params = plan.where(filters)
                query = (
                    plan.select()
                    .where(*clauses)
                    .order_by(*(o.asc() if ascending else o.desc() for o in ordering))
                    .limit(limit)
                    .offset((page - 1) * limit)
                )
                result = await db.execute(query, params, execution_options=options)
                rows = result.scalars().all()
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

        decode = self._list_decoder.validate_json
        groups = (plan.list_group, *plan.near_groups)
        return await self._read(db, redis, key, decode, prepare, plan.list_context, groups)

    async def count(
        self, db: AsyncSession, redis: AsyncRedis | None, kwargs: dict[str, Any]
    ) -> int:
        plan = self._plan
        key, filters = plan.count_key(kwargs)

        async def read(options: Mapping[str, Any]) -> Loaded[int]:
            clauses, params = plan.where(filters)
            query = select(func.count()).select_from(plan.mapper.local_table).where(*clauses)
            total = int((await db.execute(query, params)).scalar_one())
            return Loaded(total, str(total))

        if redis is None:
            return (await run_read(db, read))[0].value

        def prepare() -> tuple[Entry, Read[int]]:
            registry = plan.namespace.lists(plan.table)
            return Entry(key, plan.schemes_key, (), (registry,), plan.family), read

        groups = (plan.list_group, *plan.near_groups)
        return await self._read(db, redis, key, decode_count, prepare, plan.list_context, groups)

    async def _read(
        self,
        db: AsyncSession,
        redis: AsyncRedis,
        key: str,
        decode: Callable[[Raw], T],
        prepare: Callable[[], tuple[Entry, Read[T]]],
        context: dict[str, str],
        groups: tuple[str, ...],
    ) -> T:
        """Serve ``key`` from the near cache or Redis, or ``prepare()`` the miss path (only a
        miss pays it): the entry to lease and fill, and the database read. ``context`` goes with
        the log events (the model, and the row or list pattern); ``groups``: what else
        invalidates ``key`` in the near cache (its row key or the table's lists; the tables its
        entries embed)."""
        near = self._near.of(redis) if self._near is not None else None
        health = await self._clients.ready(db, redis)
        changes: Changes | None = db.sync_session.info.get(CHANGES_KEY)
        if health.usable and (changes is None or not self._written_in(changes)):
            value = await cached(redis, health, key, decode, self._stats, context, near, groups)
            if value is not store.MISS:
                return value
            entry, read = prepare()
            return await read_through(
                redis,
                health,
                entry,
                decode=decode,
                load=_loader(db, read),
                exp=self._exp,
                stats=self._stats,
                context=context,
            )
        self._stats.bypasses += 1
        load = _loader(db, prepare()[1])
        session = db.sync_session
        if changes is None and not (session.new or session.dirty or session.deleted):
            # Redis can't be used: concurrent misses of this key in the process share one read.
            return await coalesced(key, decode, load)
        return (await load()).value

    def _written_in(self, changes: Changes) -> bool:
        """Whether ``changes`` touch the model's table or a table its entries embed."""
        plan = self._plan
        return changes.touches(plan.table) or any(map(changes.touches, plan.embedded[0]))


def _loader(db: AsyncSession, read: Read[T]) -> Callable[[], Awaitable[Loaded[T]]]:
    """``read`` run in ``db`` (:func:`fastrdb.snapshots.run_read`); what it would cache is
    kept only if the read may be cached (not older than its lease, no uncommitted writes)."""

    async def load() -> Loaded[T]:
        loaded, fresh = await run_read(db, read)
        return loaded if fresh else Loaded(loaded.value, None)

    return load
