"""FastRDB: async CRUD over SQLAlchemy sessions with a Redis read-through cache.

The public class only: it checks its set-up and hands each call to the plan
(:mod:`fastrdb.plan`), the read path (:mod:`fastrdb.reads`) or the write path
(:mod:`fastrdb.writes`).
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper

from fastrdb._types import AsyncRedis
from fastrdb.cache.near import NearCaches
from fastrdb.cache.readthrough import Stats
from fastrdb.errors import ConfigurationError, FastRDBError
from fastrdb.events.bindings import register_refresher
from fastrdb.events.invalidator import delivered
from fastrdb.instances import track
from fastrdb.invalidation import invalidate_row, invalidate_table
from fastrdb.pagination import PaginatedResponse
from fastrdb.plan import Plan, check_positive_int
from fastrdb.reads import Reads
from fastrdb.sessions import Clients
from fastrdb.settings import DEFAULT_SETTINGS, Settings
from fastrdb.writes import Writes

__all__ = ["FastRDB"]

ModelT = TypeVar("ModelT")
CreateT = TypeVar("CreateT", bound=BaseModel)
UpdateT = TypeVar("UpdateT", bound=BaseModel)
ResponseT = TypeVar("ResponseT", bound=BaseModel)
T = TypeVar("T")


class FastRDB(Generic[ModelT, CreateT, UpdateT, ResponseT]):
    """CRUD for one SQLAlchemy model, cached in Redis under user-defined key patterns.

    ``pattern`` names the key of one row (``"user:email:{email}"``); ``list_pattern`` the key of
    a page of ``get_multi`` (``"user:page:{page}:limit:{limit}"``); ``invalidate_pattern_prefix``
    (``"verse:chapter_id:{chapter_id}:*"``) may narrow which cached pages a change drops to the
    ones it can affect. ``exp`` is the lifetime of an entry in seconds: a last line of defence,
    since every commit drops the entries it makes stale.
    """

    def __init__(
        self,
        model: type[ModelT],
        response_schema: type[ResponseT],
        pattern: str,
        list_pattern: str | None = None,
        invalidate_pattern_prefix: str | None = None,
        exp: int = 3600,
        *,
        settings: Settings | None = None,
    ) -> None:
        mapper = inspect(model, raiseerr=False)
        if not isinstance(mapper, Mapper):
            raise ConfigurationError("model", f"{model!r} is not a mapped SQLAlchemy class")
        if not (isinstance(response_schema, type) and issubclass(response_schema, BaseModel)):
            raise ConfigurationError("response_schema", "must be a pydantic model class")
        if isinstance(exp, bool) or not isinstance(exp, int) or exp < 1:
            raise ConfigurationError("exp", f"must be a positive number of seconds, got {exp!r}")
        self.model = model
        self.response_schema = response_schema
        self.exp = exp
        self.settings = settings or DEFAULT_SETTINGS
        self._plan: Plan[ModelT, ResponseT] = Plan(
            self,
            mapper,
            response_schema,
            pattern,
            list_pattern,
            invalidate_pattern_prefix,
            self.settings,
        )
        self.table = self._plan.table
        self._stats = Stats()
        self._clients = Clients(self.settings)
        self._near = (
            NearCaches(self.settings.near_cache_size, (pattern, self._plan.list.text))
            if self.settings.near_cache_size
            else None
        )
        self._reads = Reads(self._plan, self._stats, self._clients, self._near, exp)
        self._writes = Writes(self._plan, self._stats, self._clients, exp)
        register_refresher(mapper.class_, self)
        track(self)
        if mapper.configured:
            self._plan.embedding  # noqa: B018 -- refuse an untraceable schema now, if mappers allow

    def __repr__(self) -> str:
        return f"FastRDB({self._plan.name}, pattern={self.pattern!r})"

    @property
    def pattern(self) -> str:
        return self._plan.row.text

    @property
    def list_pattern(self) -> str:
        return self._plan.list.text

    def stats(self) -> dict[str, int]:
        """What this instance's cache did: hits (``negative_hits`` of them on negative entries,
        ``near_hits`` served by the near cache without Redis), misses, fills, refused fills, lease
        waits, bypasses and corrupt entries; plus ``near_invalidations`` (near entries dropped
        because they changed), ``invalidations`` (commits of this process that dropped keys of the
        model's table), ``redis_errors`` (failed calls on the Redis clients this instance was
        given) and ``redis_overloads`` (calls on them that found the connection pool full past
        ``redis_timeout`` and went without Redis: not failures). See docs/logging.md."""
        return {
            **self._stats.as_dict(),
            "invalidations": delivered[self.table],
            "redis_errors": self._clients.errors,
            "redis_overloads": self._clients.overloads,
            "near_invalidations": self._near.invalidations if self._near is not None else 0,
        }

    # -- reads --

    # The read methods return the read's coroutine rather than awaiting it in one of their own
    # (a coroutine a hit passes through costs CPU on a busy loop); nothing runs until it is
    # awaited, so errors are raised where the call is awaited, as from an ``async def``.

    def get(
        self, *, db: AsyncSession, redis: AsyncRedis, **kwargs: Any
    ) -> Coroutine[Any, Any, ResponseT]:
        """The row matching ``kwargs`` (every placeholder of ``pattern``, plus any other column
        filters). Raises ``sqlalchemy.exc.NoResultFound`` if there is none, and remembers that
        for ``Settings.negative_exp`` seconds (see :mod:`fastrdb.negatives`). A coroutine:
        ``await`` it."""
        return self._reads.get(db, redis, kwargs)

    def get_multi(
        self,
        *,
        db: AsyncSession,
        redis: AsyncRedis,
        limit: int = 10,
        page: int = 1,
        order_by: str | None = None,
        ascending: bool = True,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, list[ResponseT]]:
        """A page of rows matching the column filters in ``kwargs``, ordered by ``order_by``
        (the primary key when not given). A coroutine: ``await`` it."""
        return self._reads.get_multi(db, redis, limit, page, order_by, ascending, kwargs)

    def count(
        self, *, db: AsyncSession, redis: AsyncRedis | None = None, **kwargs: Any
    ) -> Coroutine[Any, Any, int]:
        """The number of rows matching the column filters in ``kwargs``. A coroutine: ``await``
        it.

        Cached when ``redis`` is given, like a page of ``get_multi``: any insert, update or
        delete of the table drops it before the writer's ``commit()`` returns, and concurrent
        misses cost one database read."""
        return self._reads.count(db, redis, kwargs)

    async def get_page(
        self,
        *,
        db: AsyncSession,
        redis: AsyncRedis,
        limit: int = 10,
        page: int = 1,
        order_by: str | None = None,
        ascending: bool = True,
        **kwargs: Any,
    ) -> PaginatedResponse[ResponseT]:
        """A page of ``get_multi`` with ``total``, the number of rows matching the filters
        across all pages (``count``). When both are cached this is two cache hits.

        The page and the total are two reads: a commit between them can make them disagree
        by the rows it changed, as two requests would."""
        data = await self.get_multi(
            db=db,
            redis=redis,
            limit=limit,
            page=page,
            order_by=order_by,
            ascending=ascending,
            **kwargs,
        )
        total = await self.count(db=db, redis=redis, **kwargs)
        return PaginatedResponse[ResponseT](data=data, total=total, limit=limit, page=page)

    def paginate(
        self, *, data: list[T], limit: int, page: int, total: int | None = None
    ) -> PaginatedResponse[T]:
        """Wrap a page of results (as ``get_multi`` returns it) with its paging parameters.

        ``total`` is what you pass (e.g. from ``count``); without it, it is ``len(data)``, the
        length of this page only, as in the seed API. ``get_page`` gives the real total."""
        check_positive_int("limit", limit)
        check_positive_int("page", page)
        if total is None:
            total = len(data)
        elif isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise FastRDBError("total", f"must be an integer, 0 or more, got {total!r}")
        return PaginatedResponse[T](data=data, total=total, limit=limit, page=page)

    # -- writes --

    async def create(
        self, *, db: AsyncSession, redis: AsyncRedis, obj_in: CreateT, **kwargs: Any
    ) -> ResponseT:
        """Insert a row from ``obj_in``, commit, and cache it under its ``pattern`` key.

        ``kwargs`` (the pattern's values, as the seed API passes them) must be columns that
        ``obj_in`` sets to the same values; the key is computed from the stored row.
        """
        return await self._writes.create(db, redis, obj_in, kwargs)

    async def create_multi(
        self, *, db: AsyncSession, redis: AsyncRedis, instances: Sequence[CreateT], **kwargs: Any
    ) -> list[ResponseT]:
        """Insert every row of ``instances`` in one transaction and commit."""
        return await self._writes.create_multi(db, redis, instances, kwargs)

    async def update(
        self, *, db: AsyncSession, redis: AsyncRedis, obj_in: UpdateT, **kwargs: Any
    ) -> ResponseT:
        """Set the fields given in ``obj_in`` on the row matching ``kwargs``, commit, and cache
        the new row. Raises ``NoResultFound`` if no row matches."""
        return await self._writes.update(db, redis, obj_in, kwargs)

    async def delete(self, *, db: AsyncSession, redis: AsyncRedis, **kwargs: Any) -> None:
        """Delete the row matching ``kwargs`` and commit; its keys are dropped at commit.
        Raises ``NoResultFound`` if no row matches."""
        await self._writes.delete(db, redis, kwargs)

    # -- explicit invalidation --

    async def invalidate(
        self, *, redis: AsyncRedis, db: AsyncSession | None = None, **values: Any
    ) -> None:
        """Drop the cached entries of the row that ``values`` name (column values): its keys by
        every pattern published for the table, their fill leases and extra-filter variants, and
        the pages and counts that could hold it; the next read of them is a miss.

        ``values`` should give every placeholder of ``pattern`` and of
        ``invalidate_pattern_prefix``; if not, every row they match is read through ``db`` and
        its values name the keys. Without ``db`` (or with no matching row) a missing
        placeholder raises ``FastRDBError`` naming it. A Redis failure does not raise: the
        invalidation is kept and replayed like a commit's, and until then this process serves
        nothing from that Redis server."""
        health = self._clients.health(redis)
        await invalidate_row(self._plan, redis, health, values, db=db)

    async def invalidate_all(self, *, redis: AsyncRedis) -> None:
        """Drop every cached entry of the model's table: single-row keys of any value (found by
        a ``SCAN`` restricted to the published patterns' prefixes, twice: its cost grows with
        the whole keyspace; see docs/operations.md), pages, counts, negative entries, leases
        and registries. A Redis failure does not raise: it is kept and replayed."""
        await invalidate_table(redis, self._clients.health(redis), self._plan.mapper)

    async def refresh_row(
        self,
        *,
        db: AsyncSession,
        redis: AsyncRedis,
        identity: tuple[Any, ...],
        values: dict[str, Any],
    ) -> None:
        """Fill the key of a row a listener in ``refresh`` mode saw written: lease first, then
        read it in a new transaction, then fill if the lease still holds."""
        await self._writes.refresh_row(db, redis, identity, values)
