"""The write path of one model: insert, update or delete through the session, commit, and
write the committed row through to its key under a lease; and refill a row's key for a
listener in ``refresh`` mode."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from fastrdb._types import AsyncRedis
from fastrdb.cache import store
from fastrdb.cache.health import ClientHealth
from fastrdb.cache.readthrough import Stats
from fastrdb.errors import FastRDBError
from fastrdb.events.bindings import CHANGES_KEY, binding_of
from fastrdb.events.changes import Changes
from fastrdb.events.collector import changes_of, read_under_lock
from fastrdb.events.shapes import mapper_shape
from fastrdb.plan import Plan
from fastrdb.sessions import Clients
from fastrdb.snapshots import run_read, statement_fresh

__all__ = ["Writes"]

ModelT = TypeVar("ModelT")
ResponseT = TypeVar("ResponseT", bound=BaseModel)


class Writes(Generic[ModelT, ResponseT]):
    """The write path of one ``FastRDB`` instance (see the module's docstring)."""

    def __init__(
        self, plan: Plan[ModelT, ResponseT], stats: Stats, clients: Clients, exp: int
    ) -> None:
        self._plan = plan
        self._stats = stats
        self._clients = clients
        self._exp = exp

    async def create(
        self, db: AsyncSession, redis: AsyncRedis, obj_in: BaseModel, kwargs: Mapping[str, Any]
    ) -> ResponseT:
        plan = self._plan
        given = plan.convert(kwargs)
        plan.check_schema("obj_in", obj_in)
        data = obj_in.model_dump()
        converters = plan.columns.converters
        for name, value in given.items():
            if name not in data:
                raise FastRDBError(name, f"is given but {type(obj_in).__name__} has no such field")
            if converters[name](name, data[name]) != value:
                raise FastRDBError(name, "disagrees with the value obj_in gives")
        obj = self._new_instance(data)
        db.add(obj)
        return await self._commit_and_cache(db, redis, obj)

    async def create_multi(
        self,
        db: AsyncSession,
        redis: AsyncRedis,
        instances: Sequence[BaseModel],
        kwargs: Mapping[str, Any],
    ) -> list[ResponseT]:
        plan = self._plan
        plan.check_columns(kwargs)
        for item in instances:
            plan.check_schema("instances", item)
        objects = [self._new_instance(item.model_dump()) for item in instances]
        await self._clients.ready(db, redis)
        db.add_all(objects)
        try:
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        return [response for response, _ in await self._reload(db, objects)]

    async def update(
        self, db: AsyncSession, redis: AsyncRedis, obj_in: BaseModel, kwargs: Mapping[str, Any]
    ) -> ResponseT:
        self._plan.check_schema("obj_in", obj_in)
        data = obj_in.model_dump(exclude_unset=True)
        obj = await self._fetch_for_write(db, kwargs)
        for name, value in data.items():
            setattr(obj, name, value)
        return await self._commit_and_cache(db, redis, obj)

    async def delete(self, db: AsyncSession, redis: AsyncRedis, kwargs: Mapping[str, Any]) -> None:
        await self._clients.ready(db, redis)
        obj = await self._fetch_for_write(db, kwargs)
        await db.delete(obj)
        try:
            await db.commit()
        except BaseException:
            await db.rollback()
            raise

    async def refresh_row(
        self,
        db: AsyncSession,
        redis: AsyncRedis,
        identity: tuple[Any, ...],
        values: dict[str, Any],
    ) -> None:
        """Fill the key of a row a listener in ``refresh`` mode saw written: lease first, then
        read it in a new transaction, then fill if the lease still holds."""
        plan = self._plan
        health = await self._clients.ready(db, redis, replay_pending=False)
        if plan.row.missing(values) or not health.usable:
            return
        key = plan.row.format(values)
        token = secrets.token_hex(8)
        if not await self._lease(redis, health, key, token):
            return  # a reader is filling it already
        filled = False
        try:
            try:
                obj = await db.get(
                    plan.model, identity, options=plan.embedding.options, populate_existing=True
                )
                response = plan.response(obj) if obj is not None else None
                stored = obj is not None and plan.row_key_of(obj) == key
            finally:
                # The next row gets a transaction that starts after its lease.
                with contextlib.suppress(Exception):
                    await db.rollback()
            payload = response.model_dump_json() if response is not None and stored else None
            if payload is not None:
                filled = await store.fill(redis, health, key, token, payload, self._exp)
        finally:
            if filled:
                self._stats.fills += 1
            else:  # also when cancelled (loop shutdown): leave no lease behind
                await store.release(redis, health, key, token)

    async def _lease(self, redis: AsyncRedis, health: ClientHealth, key: str, token: str) -> bool:
        """Take the fill lease of a row key for a writer (False: another reader holds it, or
        Redis could not be asked)."""
        plan = self._plan
        taken = await store.acquire(
            redis,
            health,
            key,
            token,
            schemes_key=plan.schemes_key,
            schemes=plan.row_schemes,
            registries=plan.embedded[1],
            family=plan.family,
        )
        return bool(taken)

    def _new_instance(self, data: Mapping[str, Any]) -> ModelT:
        """An instance built without the model's ``__init__``: a dataclass-mapped model may
        require fields (``id``, timestamps) that no create schema carries."""
        plan = self._plan
        attributes = plan.columns.attributes
        obj: ModelT = plan.mapper.class_manager.new_instance()
        if dataclasses.is_dataclass(plan.model):
            for field in dataclasses.fields(plan.model):
                if field.name in data or field.name not in attributes:
                    continue
                if field.default is not dataclasses.MISSING:
                    setattr(obj, field.name, field.default)
                elif field.default_factory is not dataclasses.MISSING:
                    setattr(obj, field.name, field.default_factory())
        for name, value in data.items():
            setattr(obj, name, value)
        return obj

    async def _read_back(
        self, db: AsyncSession, obj: Any, *, locked: bool = False, since: int | None = None
    ) -> tuple[ResponseT, str | None]:
        """The row's response and single-row key as the database holds it now (see
        :meth:`_refresh`).

        ``since`` (a mark of the session's changes taken before the flush that wrote ``obj``):
        when that flush recorded the row's post-image, which the session hooks read back (or
        knew exactly) in this transaction under the write lock, it is the row, and no SELECT
        is sent. A flush that wrote nothing for the row recorded none: it is read."""
        plan = self._plan
        if (
            plan.embedding.options
            or since is None
            or not self._from_post_image(db.sync_session, obj, since)
        ):
            await db.run_sync(self._refresh, obj, locked)
        return plan.response(obj), plan.row_key_of(obj)

    def _refresh(self, session: Session, obj: Any, locked: bool = False) -> None:
        """Load ``obj`` again with what the response schema embeds (``refresh()`` would leave
        nested relationships to lazy loads).

        ``locked``: the writer holds the row's lock; read it with ``FOR UPDATE``, which reads
        the latest version even in a REPEATABLE READ snapshot taken before another session's
        commit (MariaDB: a plain read there returns the snapshot's row when this transaction
        sent no UPDATE for it, e.g. an update() that changed nothing)."""
        plan = self._plan
        embedded = plan.embedding.options
        if embedded:  # under REPEATABLE READ its fill is refused (see _embeds_current)
            identity = inspect(obj).identity
            session.get(plan.model, identity, options=embedded, populate_existing=True)
        else:
            session.refresh(obj, with_for_update=locked or None)

    def _from_post_image(self, session: Session, obj: Any, since: int) -> bool:
        """Load ``obj``'s columns from the post-image its flush recorded; False if there is
        none to load them all from (a model of an inheritance hierarchy: refreshed instead)."""
        state = inspect(obj)
        mapper = state.mapper
        changes: Changes | None = session.info.get(CHANGES_KEY)
        if changes is None or mapper.inherits is not None or mapper.polymorphic_map:
            return False
        shape = mapper_shape(mapper)
        identity = tuple(mapper.primary_key_from_instance(obj))
        row = changes.latest(self._plan.table, shape.primary_key, identity, since)
        keys = [prop.key for prop in mapper.column_attrs]
        if row is None or not all(key in row for key in keys):
            return False
        for key in keys:
            set_committed_value(obj, key, row[key])
        return True

    async def _reload(
        self, db: AsyncSession, objects: Sequence[Any]
    ) -> list[tuple[ResponseT, str | None]]:
        """Read committed rows back (server defaults, onupdate values) in a new transaction,
        ended again under REPEATABLE READ like any read FastRDB opens itself: each row's
        response and single-row key, taken from what the refresh read and before that end
        (which expires the instances under ``expire_on_commit``)."""

        plan = self._plan

        def read(
            session: Session, options: Mapping[str, Any]
        ) -> list[tuple[ResponseT, str | None]]:
            read_back = []
            for obj in objects:
                self._refresh(session, obj)
                read_back.append((plan.response(obj), plan.row_key_of(obj)))
            return read_back

        return (await run_read(db, read))[0]

    async def _fetch_for_write(self, db: AsyncSession, kwargs: Mapping[str, Any]) -> ModelT:
        plan = self._plan
        filters = plan.convert(kwargs)
        plan.require(plan.row, filters)
        clauses, params = plan.where(filters)
        # The row as the database holds it under the write lock, not a copy the session
        # held already (its pattern values may be out of date): the flush's pre-image too.
        query = select(plan.model).where(*clauses).with_for_update()
        query = query.execution_options(populate_existing=True)
        obj: ModelT = (await db.execute(query, params)).scalar_one()
        read_under_lock(db.sync_session, obj)
        return obj

    async def _embeds_current(self, db: AsyncSession) -> bool:
        """Whether what the writer's read-back embeds is as new as its lease. Always for a
        schema that embeds nothing (the writer's own row is under its lock) and on SQLite (one
        writer: nothing commits while a transaction holds writes); elsewhere only when each
        statement reads the latest commit, since a REPEATABLE READ snapshot may predate the
        lease, and a rename committed before it would be embedded in its old form."""
        if not self._plan.embedding.options:
            return True
        return bool(await db.run_sync(_reads_latest))

    async def _commit_and_cache(self, db: AsyncSession, redis: AsyncRedis, obj: Any) -> ResponseT:
        """Commit the session and write the row through to its key.

        The lease on the row's key is taken before the commit and recorded with the session's
        changes, so the commit's own invalidation keeps it; any other writer's invalidation
        deletes it, and then this (older) value can no longer land. After the lease (and its
        registration for embedded tables) the row is read back in the writer's own transaction,
        before the commit: under the lock the write holds, the values the database set (server
        defaults, ``onupdate``) are the ones about to commit, and no transaction is opened
        after the commit.

        When the session's invalidations go to ``redis`` itself (one Redis, not a cluster), the
        value rides with the commit's invalidation: one script drops the stale keys, then
        stores it if the lease still holds, before ``commit()`` returns (one round trip for
        both). Otherwise, or if that delivery did not try it, it is stored after the commit.
        """
        plan = self._plan
        health = await self._clients.ready(db, redis)
        binding = binding_of(db.sync_session)
        rides = binding is not None and binding.client is redis and not store.is_cluster(redis)
        changes = changes_of(db.sync_session)
        key: str | None = None
        token = ""
        payload: str | None = None
        try:
            since = changes.versions(plan.table)
            await db.flush()
            key = plan.row_key_of(obj) if plan.row.fields else None  # "todo": no row of its own
            if key is not None and health.usable:
                token = secrets.token_hex(8)  # set first: a cancelled call still releases it
                if await self._lease(redis, health, key, token):
                    changes.own_tokens[key] = token
                else:
                    token = ""
            response, stored_key = await self._read_back(db, obj, locked=True, since=since)
            if key is not None and token and stored_key == key and await self._embeds_current(db):
                payload = response.model_dump_json()
                if rides:
                    changes.fills[key] = (payload, self._exp)
            await db.commit()
        except BaseException:
            with contextlib.suppress(Exception):  # the commit's own exception is the one to raise
                await db.rollback()
            if key is not None and token:
                await store.release(redis, health, key, token)
            raise
        if key is None or not token:
            return response
        filled = False
        held = True  # the lease, until a fill or the invalidation took it
        try:
            if key in changes.filled:  # the invalidation stored it or deleted the lease
                filled, held = changes.filled[key], False
            elif payload is not None:
                filled = await store.fill(redis, health, key, token, payload, self._exp)
        finally:
            if filled:
                self._stats.fills += 1
            else:
                self._stats.fills_refused += 1
                if held:  # also when cancelled during the fill: leave no lease behind
                    await store.release(redis, health, key, token)
        return response


def _reads_latest(session: Session) -> bool:
    """Whether a read in ``session`` now sees the latest commit (SQLite: always, one writer)."""
    connection = session.connection()
    return connection.dialect.name == "sqlite" or statement_fresh(connection)
