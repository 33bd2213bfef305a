"""FastRDB: async CRUD over SQLAlchemy sessions with a Redis read-through cache."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import cached_property
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import ColumnElement, Select, bindparam, func, inspect, select
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, Mapper

from fastrdb._types import AsyncRedis, Raw
from fastrdb.cache import store
from fastrdb.cache.health import ClientHealth, health_of
from fastrdb.cache.near import NearCaches, embeds_group, list_group
from fastrdb.cache.policy import check_memory_policy
from fastrdb.cache.readthrough import Entry, Loaded, Stats, cached, coalesced, read_through
from fastrdb.errors import ConfigurationError, FastRDBError
from fastrdb.events.bindings import CHANGES_KEY, Binding, bind_session, register_refresher
from fastrdb.events.changes import Changes
from fastrdb.events.collector import changes_of, table_name
from fastrdb.events.hooks import install_hooks
from fastrdb.events.invalidator import delivered, replay
from fastrdb.keys import KeyPattern, Namespace, deps_key, encode_value, glob_covers, with_digest
from fastrdb.negatives import ABSENT, NEGATIVE_PAYLOAD, Absent, compares_exactly, decoder
from fastrdb.pagination import PaginatedResponse
from fastrdb.relations import Embedding, embedding
from fastrdb.schemes import Scheme
from fastrdb.settings import DEFAULT_SETTINGS, Settings
from fastrdb.setup_checks import check_placeholders, check_schema_fields, check_schemas, key_pattern
from fastrdb.values import Converter, compares_as_text, convert_filters, converter_for

__all__ = ["FastRDB"]

ModelT = TypeVar("ModelT")
CreateT = TypeVar("CreateT", bound=BaseModel)
UpdateT = TypeVar("UpdateT", bound=BaseModel)
ResponseT = TypeVar("ResponseT", bound=BaseModel)
T = TypeVar("T")

_FRESH_ISOLATION = frozenset({"READ COMMITTED", "READ UNCOMMITTED", "AUTOCOMMIT"})
_POPULATE = {"populate_existing": True}
_MEMO_SIZE = 4096  # distinct get()/get_multi() argument sets whose keys are remembered


class _Columns:
    """The mapped columns of a model, looked up once."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        self.attributes: dict[str, InstrumentedAttribute[Any]] = {
            prop.key: getattr(mapper.class_, prop.key) for prop in mapper.column_attrs
        }
        self.python_types: dict[str, type | None] = {}
        for prop in mapper.column_attrs:
            try:
                self.python_types[prop.key] = prop.columns[0].type.python_type
            except NotImplementedError:
                self.python_types[prop.key] = None
        self.converters: dict[str, Converter] = {
            prop.key: converter_for(prop.columns[0]) for prop in mapper.column_attrs
        }
        self.columns = {prop.key: prop.columns[0] for prop in mapper.column_attrs}
        self.primary_key = [
            self.attributes[mapper.get_property_by_column(column).key]
            for column in mapper.primary_key
        ]


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
        self._mapper = mapper
        self._name = mapper.class_.__name__
        self.table = table_name(mapper.local_table)
        self._row = key_pattern(pattern, "pattern")
        self._list = key_pattern(
            list_pattern
            if list_pattern is not None
            else f"{self.table}:page:{{page}}:limit:{{limit}}",
            "list_pattern",
        )
        self._prefix = (
            key_pattern(invalidate_pattern_prefix, "invalidate_pattern_prefix")
            if invalidate_pattern_prefix
            else None
        )
        # Declarative mappers know their columns before they are configured: check now.
        check_placeholders(self._name, mapper.columns.keys(), self._key_patterns())
        self._namespace = Namespace(self.settings.namespace)
        self._schemes_key = self._namespace.schemes(self.table)
        self._row_schemes = (Scheme("row", pattern),)
        self._prefix_schemes = (Scheme("prefix", self._prefix.text),) if self._prefix else ()
        self._list_decoder = TypeAdapter(list[response_schema])  # type: ignore[valid-type]
        self._stats = Stats()
        self._memo: dict[tuple[Any, ...], Any] = {}
        self._checked_schemas: set[type] = set()
        self._healths: weakref.WeakSet[ClientHealth] = weakref.WeakSet()
        self._last_health: ClientHealth | None = None
        self._where_cache: dict[tuple[tuple[str, bool], ...], tuple[ColumnElement[bool], ...]] = {}
        self._context = {"model": mapper.class_.__name__, "pattern": pattern}
        self._list_context = {"model": mapper.class_.__name__, "pattern": self._list.text}
        self._decode_row = decoder(response_schema.model_validate_json, self._stats)
        self._near = (
            NearCaches(self.settings.near_cache_size, (pattern, self._list.text))
            if self.settings.near_cache_size
            else None
        )
        self._list_group = list_group(self.table)
        register_refresher(mapper.class_, self)
        if mapper.configured:
            self._embedding  # noqa: B018 -- refuse an untraceable schema now, if mappers allow

    def __repr__(self) -> str:
        return f"FastRDB({self._name}, pattern={self._row.text!r})"

    @property
    def pattern(self) -> str:
        return self._row.text

    @property
    def list_pattern(self) -> str:
        return self._list.text

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
            "redis_errors": sum(health.errors for health in self._healths),
            "redis_overloads": sum(health.overloads for health in self._healths),
            "near_invalidations": self._near.invalidations if self._near is not None else 0,
        }

    # -- set-up done once, at first use (mappers may not be configured at construction) --

    @cached_property
    def _columns(self) -> _Columns:
        columns = _Columns(self._mapper)
        check_placeholders(self._name, columns.attributes, self._key_patterns())
        check_schemas(self._name, columns.attributes, self)
        return columns

    @cached_property
    def _embedding(self) -> Embedding:
        """What entries embed besides the model's own row (nested response schemas)."""
        return embedding(self._mapper, self.response_schema)

    @cached_property
    def _embedded(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(the embedded tables' names, the registries an entry joins for them)."""
        names = tuple(table_name(table) for table in self._embedding.tables)
        return names, tuple(self._namespace.embeds(name) for name in names)

    @cached_property
    def _near_groups(self) -> tuple[str, ...]:
        """The near-cache groups of the tables every entry embeds."""
        return tuple(embeds_group(name) for name in self._embedded[0])

    def _select(self) -> Select[Any]:
        """``select(model)``, loading what the response schema embeds in the same read (the
        read's ``populate_existing`` refreshes those rows too)."""
        options = self._embedding.options
        return select(self.model).options(*options) if options else select(self.model)

    def _key_patterns(self) -> tuple[tuple[str, KeyPattern | None], ...]:
        return (
            ("pattern", self._row),
            ("list_pattern", self._list),
            ("invalidate_pattern_prefix", self._prefix),
        )

    # -- argument checks --

    def _check_columns(self, kwargs: Mapping[str, Any]) -> None:
        """Refuse any keyword that is not a mapped column (cheap: the hit path runs it)."""
        attributes = self._columns.attributes
        if attributes.keys() >= kwargs.keys():
            return
        unknown = next(name for name in kwargs if name not in attributes)
        raise FastRDBError(unknown, f"is not a column of {self._name}")

    def _convert(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Checked column filters, each value in its column's Python type (exact conversions
        only, else ``FastRDBError`` naming the field): the SQL gets the type the column holds
        and the key text is what the writer formats from the database's value."""
        self._check_columns(kwargs)
        return convert_filters(self._columns.converters, kwargs)

    def _where(
        self, kwargs: Mapping[str, Any]
    ) -> tuple[tuple[ColumnElement[bool], ...], dict[str, Any]]:
        """WHERE clauses for checked column filters, and their bound values.

        The clauses use bound parameters and are built once per set of filter names (building
        SQL expressions costs more than a cache hit)."""
        shape = tuple((name, kwargs[name] is None) for name in kwargs)
        clauses = self._where_cache.get(shape)
        if clauses is None:
            attributes = self._columns.attributes
            clauses = self._where_cache[shape] = tuple(
                attributes[name].is_(None)
                if is_none
                else attributes[name] == bindparam(f"fastrdb_{name}")
                for name, is_none in shape
            )
        params = {f"fastrdb_{name}": value for name, value in kwargs.items() if value is not None}
        return clauses, params

    def _remember(self, memo: tuple[Any, ...] | None, value: Any) -> None:
        """Keep a checked call's keys (the memo holds argument types too: ``1 == True``)."""
        if memo is not None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[memo] = value

    def _row_key(self, kwargs: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """(the pattern's key, the key with a digest of any extra filters, the converted
        filters) for a ``get``.

        Checked, converted and formatted once per distinct call, then remembered: the hit path
        of a hot key does no conversion or formatting at all.
        """
        memo: tuple[Any, ...] | None
        try:
            memo = (*kwargs.items(), *map(type, kwargs.values()))
            known = self._memo.get(memo)
        except TypeError:  # an unhashable value: check and format every time
            memo = known = None
        if known is not None:
            return cast(tuple[str, str, dict[str, Any]], known)
        kwargs = self._convert(kwargs)
        self._require(self._row, kwargs)
        base = self._row.format(kwargs)
        fields = self._row.fields
        extras = {name: value for name, value in kwargs.items() if name not in fields}
        known = (base, with_digest(base, extras), kwargs)
        self._remember(memo, known)
        return known

    def _list_key(
        self,
        limit: int,
        page: int,
        order_by: str | None,
        ascending: bool,
        kwargs: dict[str, Any],
    ) -> tuple[str, list[InstrumentedAttribute[Any]], dict[str, Any]]:
        """(the key, the ordering columns, the converted filters) of a ``get_multi``, checked,
        and remembered."""
        call = (limit, page, order_by, ascending, *kwargs.values())
        memo: tuple[Any, ...] | None
        try:
            memo = ("list", *kwargs, *call, *map(type, call))
            known = self._memo.get(memo)
        except TypeError:
            memo = known = None
        if known is not None:
            return cast(tuple[str, list[InstrumentedAttribute[Any]], dict[str, Any]], known)
        _check_positive_int("limit", limit)
        _check_positive_int("page", page)
        if limit > self.settings.max_limit:
            raise FastRDBError("limit", f"must be at most {self.settings.max_limit}, got {limit}")
        kwargs = self._convert(kwargs)
        columns = self._columns
        if order_by is None:
            ordering = list(columns.primary_key)
        else:
            attribute = columns.attributes.get(order_by) if isinstance(order_by, str) else None
            if attribute is None:
                raise FastRDBError("order_by", f"{order_by!r} is not a column of {self._name}")
            ordering = [attribute]
        params = {**kwargs, "page": page, "limit": limit}
        self._require(self._list, params)
        extras = {name: value for name, value in params.items() if name not in self._list.fields}
        if order_by is not None:
            extras["order_by"] = order_by
        if not ascending:
            extras["ascending"] = False
        known = (with_digest(self._list.format(params), extras), ordering, kwargs)
        self._remember(memo, known)
        return known

    def _require(self, key_pattern: KeyPattern, values: Mapping[str, Any]) -> None:
        missing = key_pattern.missing(values)
        if missing:
            raise FastRDBError(
                missing[0], f"placeholder {{{missing[0]}}} of {key_pattern.text!r} must be given"
            )

    def _row_key_of(self, obj: Any) -> str | None:
        """The single-row key of a loaded instance, or None if a pattern field isn't loaded."""
        state = inspect(obj)
        values = state.dict
        if any(field not in values for field in self._row.fields):
            return None
        return self._row.format(values)

    def _response(self, obj: Any) -> ResponseT:
        return self.response_schema.model_validate(obj, from_attributes=True)

    def _check_schema(self, argument: str, obj_in: Any) -> None:
        """Every field of ``obj_in``'s schema is a column (checked once per schema class)."""
        schema = type(obj_in)
        if schema in self._checked_schemas:
            return
        if not isinstance(obj_in, BaseModel):
            raise ConfigurationError(argument, f"must be a pydantic model, got {schema.__name__}")
        check_schema_fields(self._name, self._columns.attributes, argument, schema)
        self._checked_schemas.add(schema)

    def _new_instance(self, data: Mapping[str, Any]) -> ModelT:
        """An instance built without the model's ``__init__``: a dataclass-mapped model may
        require fields (``id``, timestamps) that no create schema carries."""
        attributes = self._columns.attributes
        obj: ModelT = self._mapper.class_manager.new_instance()
        if dataclasses.is_dataclass(self.model):
            for field in dataclasses.fields(self.model):
                if field.name in data or field.name not in attributes:
                    continue
                if field.default is not dataclasses.MISSING:
                    setattr(obj, field.name, field.default)
                elif field.default_factory is not dataclasses.MISSING:
                    setattr(obj, field.name, field.default_factory())
        for name, value in data.items():
            setattr(obj, name, value)
        return obj

    # -- the read path --

    def _health_of(self, redis: AsyncRedis, binding: Binding) -> ClientHealth:
        health = binding.health if binding.client is redis else health_of(redis, self.settings)
        if health is not self._last_health:
            self._healths.add(health)
            self._last_health = health
        return health

    async def _health(self, db: AsyncSession, redis: AsyncRedis) -> ClientHealth:
        """The client's health, after binding the session so FastRDB's writes invalidate, after
        checking the server's memory policy (first use), and after replaying invalidations that
        Redis could not take before."""
        health = self._health_of(
            redis, bind_session(db.sync_session, redis, self.settings, install_hooks)
        )
        if not health.policy_checked:
            await check_memory_policy(redis, health)
        if health.pending is not None:
            await replay(redis, health)
        return health

    async def _read(
        self,
        db: AsyncSession,
        redis: AsyncRedis,
        key: str,
        decode: Callable[[Raw], T],
        prepare: Callable[[], tuple[Entry, Callable[[], Awaitable[Loaded[T]]]]],
        context: dict[str, str],
        groups: tuple[str, ...],
    ) -> T:
        """Serve ``key`` from the near cache or Redis, or ``prepare()`` the miss path (only a
        miss pays it). ``context`` goes with the log events (the model, and the row or list
        pattern); ``groups``: what else invalidates ``key`` in the near cache (its row key or
        the table's lists; the tables its entries embed)."""
        near = self._near.of(redis) if self._near is not None else None
        health = await self._health(db, redis)
        changes: Changes | None = db.sync_session.info.get(CHANGES_KEY)
        if health.usable and (changes is None or not self._written_in(changes)):
            value = await cached(redis, health, key, decode, self._stats, context, near, groups)
            if value is not store.MISS:
                return value
            entry, load = prepare()
            return await read_through(
                redis,
                health,
                entry,
                decode=decode,
                load=load,
                exp=self.exp,
                stats=self._stats,
                context=context,
            )
        self._stats.bypasses += 1
        session = db.sync_session
        if changes is None and not (session.new or session.dirty or session.deleted):
            # Redis can't be used: concurrent misses of this key in the process share one read.
            return await coalesced(key, decode, prepare()[1])
        return (await prepare()[1]()).value

    def _written_in(self, changes: Changes) -> bool:
        """Whether ``changes`` touch the model's table or a table its entries embed."""
        return changes.touches(self.table) or any(map(changes.touches, self._embedded[0]))

    async def _before_read(self, db: AsyncSession) -> tuple[bool, bool, Mapping[str, Any]]:
        """(may the read about to run be cached, should FastRDB end the transaction after it,
        the execution options of its SELECT).

        A read may be cached when it cannot see uncommitted writes of its own session and
        cannot be older than the lease taken just before it: it opens the transaction itself,
        or the isolation level in force for this checkout reads the latest commit on every
        statement. Under REPEATABLE READ a transaction that FastRDB opened for its read is
        committed right after, so the next read of the session gets a new snapshot (and can be
        cached) too. A cacheable read refreshes the identity map (``populate_existing``): what
        it returns is what its SELECT read, never an object the session held from before.
        """
        session = db.sync_session
        if session.info.get(CHANGES_KEY) or session.new or session.dirty or session.deleted:
            return False, False, {}  # populate_existing would overwrite unflushed changes
        began = not session.in_transaction()
        fresh = await _statement_fresh(await db.connection())
        return began or fresh, began and not fresh, _POPULATE

    async def _run_read(
        self, db: AsyncSession, read: Callable[[Mapping[str, Any]], Awaitable[T]]
    ) -> tuple[T, bool]:
        """Run ``read`` (given its SELECT's execution options); also return whether its result
        may be cached. ``read`` serializes what it loaded itself: the transaction FastRDB may
        end after it expires every instance (``expire_on_commit``)."""
        cacheable, end, options = await self._before_read(db)
        try:
            result = await read(options)
        except BaseException:
            if end:
                # Roll back, not commit: the driver may have dropped the connection (a cancelled
                # read on MariaDB), and the read's own exception is the one to raise.
                with contextlib.suppress(Exception):
                    await db.rollback()
            raise
        if end:
            await db.commit()
        return result, cacheable

    async def get(self, *, db: AsyncSession, redis: AsyncRedis, **kwargs: Any) -> ResponseT:
        """The row matching ``kwargs`` (every placeholder of ``pattern``, plus any other column
        filters). Raises ``sqlalchemy.exc.NoResultFound`` if there is none, and remembers that
        for ``Settings.negative_exp`` seconds (see :mod:`fastrdb.negatives`)."""
        base, key, filters = self._row_key(kwargs)

        def prepare() -> tuple[Entry, Callable[[], Awaitable[Loaded[ResponseT | Absent]]]]:
            negative_exp = self.settings.negative_exp
            if negative_exp and not compares_exactly(
                db.get_bind(self._mapper).dialect.name,
                self._columns.columns,
                self._columns.python_types,
                filters,
            ):
                negative_exp = 0

            async def read(options: Mapping[str, Any]) -> tuple[ResponseT | Absent, bool]:
                clauses, params = self._where(filters)
                query = self._select().where(*clauses)
                result = await db.execute(query, params, execution_options=options)
                obj = result.scalar_one_or_none()
                if obj is None:
                    return ABSENT, True
                return self._response(obj), self._row_key_of(obj) == base

            async def load() -> Loaded[ResponseT | Absent]:
                (response, same_key), fresh = await self._run_read(db, read)
                if isinstance(response, Absent):
                    payload = NEGATIVE_PAYLOAD if fresh and negative_exp else None
                    return Loaded(response, payload, negative_exp)
                cacheable = fresh and same_key
                return Loaded(response, response.model_dump_json() if cacheable else None)

            registries = list(self._embedded[1])
            if len(filters) > len(self._row.fields):
                registries.insert(0, deps_key(base))
            if negative_exp:
                registries.append(self._namespace.negatives(self.table))
            return Entry(key, self._schemes_key, self._row_schemes, registries), load

        found = await self._read(
            db, redis, key, self._decode_row, prepare, self._context, (base, *self._near_groups)
        )
        if found is ABSENT:
            raise NoResultFound("No row was found when one was required")
        return found

    async def get_multi(
        self,
        *,
        db: AsyncSession,
        redis: AsyncRedis,
        limit: int = 10,
        page: int = 1,
        order_by: str | None = None,
        ascending: bool = True,
        **kwargs: Any,
    ) -> list[ResponseT]:
        """A page of rows matching the column filters in ``kwargs``, ordered by ``order_by``
        (the primary key when not given)."""
        key, ordering, filters = self._list_key(limit, page, order_by, ascending, kwargs)

        def prepare() -> tuple[Entry, Callable[[], Awaitable[Loaded[list[ResponseT]]]]]:
            narrowed = self._narrowing(db, filters, key)

            async def read(options: Mapping[str, Any]) -> tuple[list[ResponseT], bool]:
                clauses, params = self._where(filters)
                query = (
                    self._select()
                    .where(*clauses)
                    .order_by(*(o.asc() if ascending else o.desc() for o in ordering))
                    .limit(limit)
                    .offset((page - 1) * limit)
                )
                result = await db.execute(query, params, execution_options=options)
                rows = result.scalars().all()
                fit = narrowed is None or self._rows_fit(rows, filters)
                return [self._response(row) for row in rows], fit

            async def load() -> Loaded[list[ResponseT]]:
                (responses, fit), fresh = await self._run_read(db, read)
                payload = "[" + ",".join(r.model_dump_json() for r in responses) + "]"
                return Loaded(responses, payload if fresh and fit else None)

            embeds = self._embedded[1]
            if narrowed is None:
                registry = self._namespace.lists(self.table)
                return Entry(key, self._schemes_key, (), (registry, *embeds)), load
            assert self._prefix is not None
            registry = self._namespace.narrowed_lists(self.table, narrowed)
            schemes = self._prefix_schemes
            return Entry(key, self._schemes_key, schemes, (registry, *embeds)), load

        decode = self._list_decoder.validate_json
        groups = (self._list_group, *self._near_groups)
        return await self._read(db, redis, key, decode, prepare, self._list_context, groups)

    def _narrowing(self, db: AsyncSession, filters: Mapping[str, Any], key: str) -> str | None:
        """The expanded ``invalidate_pattern_prefix`` that may stand for this list entry, or None
        when the entry must be dropped by any change of the table.

        Narrowing needs every prefix placeholder among the filters, each filter value of its
        column's own Python type, each column one whose key text provably matches what the
        database compares (:func:`fastrdb.values.compares_as_text`: not a case-insensitive
        or padding collation, an Enum, a Decimal...), and the expansion to cover the key.
        Otherwise the page goes to the table-wide registry: correctness before savings.
        """
        prefix = self._prefix
        if prefix is None or not prefix.fields or prefix.missing(filters):
            return None
        columns = self._columns
        dialect = db.get_bind(self._mapper).dialect.name
        for field in prefix.fields:
            value = filters[field]
            if value is None or type(value) is not columns.python_types.get(field):
                return None
            if not compares_as_text(columns.columns[field], dialect):
                return None
        expanded = prefix.format(filters)
        return expanded if glob_covers(expanded, key) else None

    def _rows_fit(self, rows: Sequence[Any], filters: Mapping[str, Any]) -> bool:
        """Whether every row's prefix fields encode like the filters (collations may differ)."""
        assert self._prefix is not None
        if not rows:
            return False
        wanted = {field: encode_value(filters[field]) for field in self._prefix.fields}
        return all(
            encode_value(getattr(row, field)) == text
            for row in rows
            for field, text in wanted.items()
        )

    async def count(
        self, *, db: AsyncSession, redis: AsyncRedis | None = None, **kwargs: Any
    ) -> int:
        """The number of rows matching the column filters in ``kwargs``.

        Cached when ``redis`` is given, like a page of ``get_multi``: any insert, update or
        delete of the table drops it before the writer's ``commit()`` returns, and concurrent
        misses cost one database read."""
        key, filters = self._count_key(kwargs)

        async def read(options: Mapping[str, Any]) -> int:
            clauses, params = self._where(filters)
            query = select(func.count()).select_from(self._mapper.local_table).where(*clauses)
            return int((await db.execute(query, params)).scalar_one())

        if redis is None:
            return (await self._run_read(db, read))[0]

        def prepare() -> tuple[Entry, Callable[[], Awaitable[Loaded[int]]]]:
            async def load() -> Loaded[int]:
                total, fresh = await self._run_read(db, read)
                return Loaded(total, str(total) if fresh else None)

            registry = self._namespace.lists(self.table)
            return Entry(key, self._schemes_key, (), (registry,)), load

        return await self._read(
            db,
            redis,
            key,
            _decode_count,
            prepare,
            self._list_context,
            (self._list_group, *self._near_groups),
        )

    def _count_key(self, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(the key, the converted filters) of a ``count``, checked, and remembered."""
        memo: tuple[Any, ...] | None
        try:
            memo = ("count", *kwargs.items(), *map(type, kwargs.values()))
            known = self._memo.get(memo)
        except TypeError:
            memo = known = None
        if known is not None:
            return cast(tuple[str, dict[str, Any]], known)
        filters = self._convert(kwargs)
        known = (with_digest(self._namespace.count(self.table), filters), filters)
        self._remember(memo, known)
        return known

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

    # -- the write path --

    async def create(
        self, *, db: AsyncSession, redis: AsyncRedis, obj_in: CreateT, **kwargs: Any
    ) -> ResponseT:
        """Insert a row from ``obj_in``, commit, and cache it under its ``pattern`` key.

        ``kwargs`` (the pattern's values, as the seed API passes them) must be columns that
        ``obj_in`` sets to the same values; the key is computed from the stored row.
        """
        given = self._convert(kwargs)
        self._check_schema("obj_in", obj_in)
        data = obj_in.model_dump()
        converters = self._columns.converters
        for name, value in given.items():
            if name not in data:
                raise FastRDBError(name, f"is given but {type(obj_in).__name__} has no such field")
            if converters[name](name, data[name]) != value:
                raise FastRDBError(name, "disagrees with the value obj_in gives")
        obj = self._new_instance(data)
        db.add(obj)
        return await self._commit_and_cache(db, redis, obj)

    async def create_multi(
        self, *, db: AsyncSession, redis: AsyncRedis, instances: Sequence[CreateT], **kwargs: Any
    ) -> list[ResponseT]:
        """Insert every row of ``instances`` in one transaction and commit."""
        self._check_columns(kwargs)
        for item in instances:
            self._check_schema("instances", item)
        objects = [self._new_instance(item.model_dump()) for item in instances]
        await self._health(db, redis)
        db.add_all(objects)
        try:
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        return [response for response, _ in await self._reload(db, objects)]

    async def update(
        self, *, db: AsyncSession, redis: AsyncRedis, obj_in: UpdateT, **kwargs: Any
    ) -> ResponseT:
        """Set the fields given in ``obj_in`` on the row matching ``kwargs``, commit, and cache
        the new row. Raises ``NoResultFound`` if no row matches."""
        self._check_schema("obj_in", obj_in)
        data = obj_in.model_dump(exclude_unset=True)
        obj = await self._fetch_for_write(db, kwargs)
        for name, value in data.items():
            setattr(obj, name, value)
        return await self._commit_and_cache(db, redis, obj)

    async def delete(self, *, db: AsyncSession, redis: AsyncRedis, **kwargs: Any) -> None:
        """Delete the row matching ``kwargs`` and commit; its keys are dropped at commit.
        Raises ``NoResultFound`` if no row matches."""
        await self._health(db, redis)
        obj = await self._fetch_for_write(db, kwargs)
        await db.delete(obj)
        try:
            await db.commit()
        except BaseException:
            await db.rollback()
            raise

    def paginate(
        self, *, data: list[T], limit: int, page: int, total: int | None = None
    ) -> PaginatedResponse[T]:
        """Wrap a page of results (as ``get_multi`` returns it) with its paging parameters.

        ``total`` is what you pass (e.g. from ``count``); without it, it is ``len(data)``, the
        length of this page only, as in the seed API. ``get_page`` gives the real total."""
        _check_positive_int("limit", limit)
        _check_positive_int("page", page)
        if total is None:
            total = len(data)
        elif isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise FastRDBError("total", f"must be an integer, 0 or more, got {total!r}")
        return PaginatedResponse[T](data=data, total=total, limit=limit, page=page)

    async def _read_back(self, db: AsyncSession, obj: Any) -> tuple[ResponseT, str | None]:
        """The row's response and single-row key as the database holds it now, with what the
        response schema embeds (``refresh()`` would leave nested relationships to lazy loads)."""
        embedded = self._embedding.options
        if embedded:
            identity = inspect(obj).identity
            await db.get(self.model, identity, options=embedded, populate_existing=True)
        else:
            await db.refresh(obj)
        return self._response(obj), self._row_key_of(obj)

    async def _reload(
        self, db: AsyncSession, objects: Sequence[Any]
    ) -> list[tuple[ResponseT, str | None]]:
        """Read committed rows back (server defaults, onupdate values) in a new transaction,
        ended again under REPEATABLE READ like any read FastRDB opens itself: each row's
        response and single-row key, taken from what the refresh read and before that end
        (which expires the instances under ``expire_on_commit``)."""

        async def read(options: Mapping[str, Any]) -> list[tuple[ResponseT, str | None]]:
            return [await self._read_back(db, obj) for obj in objects]

        return (await self._run_read(db, read))[0]

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
        health = self._health_of(
            redis, bind_session(db.sync_session, redis, self.settings, install_hooks)
        )
        if not health.policy_checked:
            await check_memory_policy(redis, health)
        if self._row.missing(values) or not health.usable:
            return
        key = self._row.format(values)
        token = secrets.token_hex(8)
        taken = await store.acquire(
            redis,
            health,
            key,
            token,
            schemes_key=self._schemes_key,
            schemes=self._row_schemes,
            registries=self._embedded[1],
        )
        if not taken:
            return  # a reader is filling it already
        filled = False
        try:
            try:
                obj = await db.get(
                    self.model, identity, options=self._embedding.options, populate_existing=True
                )
                response = self._response(obj) if obj is not None else None
                stored = obj is not None and self._row_key_of(obj) == key
            finally:
                # The next row gets a transaction that starts after its lease.
                with contextlib.suppress(Exception):
                    await db.rollback()
            payload = response.model_dump_json() if response is not None and stored else None
            if payload is not None:
                filled = await store.fill(redis, health, key, token, payload, self.exp)
        finally:
            if filled:
                self._stats.fills += 1
            else:  # also when cancelled (loop shutdown): leave no lease behind
                await store.release(redis, health, key, token)

    async def _fetch_for_write(self, db: AsyncSession, kwargs: Mapping[str, Any]) -> ModelT:
        kwargs = self._convert(kwargs)
        self._require(self._row, kwargs)
        clauses, params = self._where(kwargs)
        # The row as the database holds it under the write lock, not a copy the session
        # held already (its pattern values may be out of date).
        query = select(self.model).where(*clauses).with_for_update()
        query = query.execution_options(populate_existing=True)
        obj: ModelT = (await db.execute(query, params)).scalar_one()
        return obj

    async def _embeds_current(self, db: AsyncSession) -> bool:
        """Whether what the writer's read-back embeds is as new as its lease. Always for a
        schema that embeds nothing (the writer's own row is under its lock) and on SQLite (one
        writer: nothing commits while a transaction holds writes); elsewhere only when each
        statement reads the latest commit, since a REPEATABLE READ snapshot may predate the
        lease, and a rename committed before it would be embedded in its old form."""
        if not self._embedding.options:
            return True
        connection = await db.connection()
        return connection.dialect.name == "sqlite" or await _statement_fresh(connection)

    async def _commit_and_cache(self, db: AsyncSession, redis: AsyncRedis, obj: Any) -> ResponseT:
        """Commit the session and write the row through to its key.

        The lease on the row's key is taken before the commit and recorded with the session's
        changes, so the commit's own invalidation keeps it; any other writer's invalidation
        deletes it, and then this (older) value can no longer land. After the lease (and its
        registration for embedded tables) the row is read back in the writer's own transaction,
        before the commit: under the lock the write holds, the values the database set (server
        defaults, ``onupdate``) are the ones about to commit, and no transaction is opened
        after the commit.
        """
        health = await self._health(db, redis)
        key: str | None = None
        token = ""
        try:
            await db.flush()
            key = self._row_key_of(obj) if self._row.fields else None  # "todo": no row of its own
            if key is not None and health.usable:
                token = secrets.token_hex(8)
                taken = await store.acquire(
                    redis,
                    health,
                    key,
                    token,
                    schemes_key=self._schemes_key,
                    schemes=self._row_schemes,
                    registries=self._embedded[1],
                )
                if taken:
                    changes_of(db.sync_session).own_tokens[key] = token
                else:
                    token = ""
            response, stored_key = await self._read_back(db, obj)
            current = await self._embeds_current(db)
            await db.commit()
        except BaseException:
            with contextlib.suppress(Exception):  # the commit's own exception is the one to raise
                await db.rollback()
            if key is not None and token:
                await store.release(redis, health, key, token)
            raise
        filled = False
        try:
            if key is not None and token and stored_key == key and current:
                payload = response.model_dump_json()
                filled = await store.fill(redis, health, key, token, payload, self.exp)
        finally:
            if key is not None and token:
                if filled:
                    self._stats.fills += 1
                else:  # also when cancelled during the fill: leave no lease behind
                    self._stats.fills_refused += 1
                    await store.release(redis, health, key, token)
        return response


def _decode_count(raw: Raw) -> int:
    """A cached count (``int`` raises ``ValueError`` on anything else: a corrupt entry)."""
    total = int(raw)
    if total < 0:
        raise ValueError(f"negative count {total}")
    return total


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FastRDBError(name, f"must be an integer, got {value!r}")
    if value < 1:
        raise FastRDBError(name, f"must be at least 1, got {value}")


async def _statement_fresh(connection: AsyncConnection) -> bool:
    """Whether each statement on ``connection`` reads the latest commit even inside an open
    transaction. SQLite: only while the driver has no transaction open. Others: under READ
    COMMITTED, not under REPEATABLE READ or SERIALIZABLE.

    Decided for this checkout, from the level in force on it: the connection's (session's,
    engine's) ``isolation_level`` execution option, else the level every pooled connection
    is reset to. Never remembered on the pooled connection: the next checkout may run under
    another engine's options."""
    if connection.dialect.name == "sqlite":
        raw = await connection.get_raw_connection()
        return getattr(raw.driver_connection, "in_transaction", True) is False
    return str(_isolation_level(connection)).upper() in _FRESH_ISOLATION


def _isolation_level(connection: AsyncConnection) -> str | None:
    """The isolation level SQLAlchemy put in force for this checkout of ``connection``."""
    level = (
        connection.sync_connection.get_execution_options().get("isolation_level")
        if connection.sync_connection is not None
        else None
    )
    if level is None:
        dialect = connection.dialect
        level = getattr(dialect, "_on_connect_isolation_level", None)
        level = level or dialect.default_isolation_level
    return str(level) if level is not None else None
