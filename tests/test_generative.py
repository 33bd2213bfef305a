"""Generative coherence checker (issue 11): random ORM and FastRDB sequences, and after every
step, every cached entry equals a fresh database read of the query that produced it.

A Hypothesis state machine drives several listened sessions of every kind at once — asyncio
sessions with ``expire_on_commit`` True and False, a sync ``Session`` with the blocking Redis
client (a worker), and, on PostgreSQL and MariaDB, an asyncio session on another isolation
level of the same pool — against the real database and the real Redis. Sessions keep what
they loaded (stale copies, open read snapshots) between steps. Steps: FastRDB's ``get``,
``get_multi``, ``count``, ``create``, ``update``, ``delete`` through many patterns (typed
fields, ``None``, a renamed column, an ``onupdate`` column, narrowed pages); ORM attribute
writes on fresh, expired and out-of-date copies; deletes; inserts; ``merge``; bulk
``update()``/``delete()``; Core table statements through the session; ``insert().values()``;
every dialect's upsert; primary-key changes; savepoints released or rolled back; rollbacks;
joined and single-table inheritance; delete-orphan; books embedding their author; a second
``listen()``; a ``FLUSHDB``.

The check: every key in Redis that one of the machine's reads (or write-throughs) produced is
decoded and compared with a fresh read, in a new unlistened session, of each query that
produced it; and a read served to a fresh session equals the fresh read.

Every family of issue 11 is on in every profile (rule docstrings name the families they
exercise). A step the database legitimately refuses (a duplicate key, a value the driver
cannot bind, a serialization failure, a lock wait on a lock a held session keeps) is rolled
back; anything else fails the run.

Profiles (``FASTRDB_FUZZ_PROFILE``): ``ci`` (default; derandomized, a bounded number of
examples per database) and ``fuzz`` (``scripts/fuzz``: random, ``FASTRDB_FUZZ_MINUTES``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import Engine, create_engine, delete, insert, select, update
from sqlalchemy.exc import (
    CompileError,
    DataError,
    DBAPIError,
    IntegrityError,
    MultipleResultsFound,
    NoResultFound,
    SAWarning,
    StatementError,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as make_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError

from fastrdb import FastRDB
from fastrdb.cache.health import health_of
from fastrdb.events import ListenHandle, listen
from fastrdb.keys import KeyPattern
from tests.conftest import Database, async_redis_client, sync_redis_client
from tests.models import (
    Color,
    GenAnimal,
    GenAnimalOut,
    GenAuthor,
    GenBase,
    GenBook,
    GenBookOut,
    GenDog,
    GenDogOut,
    GenEmployee,
    GenEmployeeOut,
    GenKid,
    GenKidOut,
    GenManager,
    GenManagerOut,
    GenParent,
    GenUser,
    GenUserCreate,
    GenUserOut,
    GenUserUpdate,
)

T = TypeVar("T")

# -- what the machine reads through ------------------------------------------------------------

_U = "gu"
CRUDS: dict[str, FastRDB[Any, Any, Any, Any]] = {
    "id": FastRDB(
        GenUser,
        GenUserOut,
        pattern=_U + ":id:{id}",
        list_pattern=_U + ":p{page}:{limit}",
    ),
    "email": FastRDB(
        GenUser,
        GenUserOut,
        pattern=_U + ":email:{email}",
        list_pattern=_U + ":e{page}:{limit}",
    ),
    "code": FastRDB(GenUser, GenUserOut, pattern=_U + ":code:{code}"),  # 7
    "token": FastRDB(GenUser, GenUserOut, pattern=_U + ":token:{token}"),  # 11
    "amount": FastRDB(GenUser, GenUserOut, pattern=_U + ":amount:{amount}:{id}"),  # 11
    "flag": FastRDB(GenUser, GenUserOut, pattern=_U + ":flag:{flag}:{id}"),  # 11
    "color": FastRDB(GenUser, GenUserOut, pattern=_U + ":color:{color}:{id}"),  # 11
    "mail": FastRDB(GenUser, GenUserOut, pattern=_U + ":mail:{mail}"),  # 6
    "seq": FastRDB(GenUser, GenUserOut, pattern=_U + ":seq:{seq}"),  # 12
    "cat": FastRDB(  # 8: pages narrowed by a text column
        GenUser,
        GenUserOut,
        pattern=_U + ":cat-row:{id}",
        list_pattern=_U + ":cat:{cat}:p{page}:{limit}",
        invalidate_pattern_prefix=_U + ":cat:{cat}:*",
    ),
    "colors": FastRDB(  # 8: pages narrowed by an Enum column
        GenUser,
        GenUserOut,
        pattern=_U + ":col-row:{id}",
        list_pattern=_U + ":col:{color}:p{page}:{limit}",
        invalidate_pattern_prefix=_U + ":col:{color}:*",
    ),
    "idpage": FastRDB(  # 13: pages narrowed by the primary key (a row moved by a bulk UPDATE)
        GenUser,
        GenUserOut,
        pattern=_U + ":id-row:{id}",
        list_pattern=_U + ":idp:{id}:p{page}:{limit}",
        invalidate_pattern_prefix=_U + ":idp:{id}:*",
    ),
    "employee": FastRDB(
        GenEmployee,
        GenEmployeeOut,
        pattern="ge:{id}",
        list_pattern="ge:p{page}:{limit}",
    ),
    "manager": FastRDB(
        GenManager, GenManagerOut, pattern="gm:{id}", list_pattern="gm:p{page}:{limit}"
    ),
    "animal": FastRDB(
        GenAnimal, GenAnimalOut, pattern="ga:{id}", list_pattern="ga:p{page}:{limit}"
    ),
    "dog": FastRDB(GenDog, GenDogOut, pattern="gd:{id}", list_pattern="gd:p{page}:{limit}"),
    "kid": FastRDB(GenKid, GenKidOut, pattern="gk:{id}", list_pattern="gk:p{page}:{limit}"),
    "book": FastRDB(
        GenBook, GenBookOut, pattern="gb:{id}", list_pattern="gb:p{page}:{limit}"
    ),  # 16
}

SLOTS = st.integers(0, 3)
"""Which long-lived session a step uses (asyncio, asyncio keeping copies, sync, and on
PostgreSQL and MariaDB asyncio on another isolation level); FastRDB calls in the sync slot
use a new asyncio session."""
USER_IDS = (1, 2, 3, 4, 5)
EMAILS = ("a@x.io", "b@x.io", "c@x.io", "d@x.io", "e@x.io")
NAMES = ("n1", "n2", "n3")
CODES = (None, "x", "y", "None")  # 7
CATS = ("a", "b", "A", "B")  # 8
TOKENS = (
    uuid.UUID("5f1d8c2e-0c4b-4f0e-9a55-1b2c3d4e5f60"),
    uuid.UUID(int=7),
    uuid.UUID(int=8),
)
AMOUNTS = (Decimal("9.50"), Decimal("1.00"))
MAILS = ("m1@x.io", "m2@x.io", "m3@x.io")


def _assigned(name: str, value: Any) -> st.SearchStrategy[Any]:
    """``value`` as it is stored, or (family 11) in a form that stores as it."""
    forms: list[Any] = [value]
    if name == "color":
        forms += [value.name]  # family 8: an Enum page and a value assigned by name
    elif name == "token":
        forms += [str(value).upper(), value.hex]
    elif name == "amount":
        forms += [value.normalize()]
    elif name == "flag":
        forms += [int(value)]
    return st.sampled_from(forms)


def _field(name: str) -> st.SearchStrategy[Any]:
    pools: dict[str, tuple[Any, ...]] = {
        "email": EMAILS,
        "name": NAMES,
        "code": CODES,
        "cat": CATS,
        "color": tuple(Color),
        "token": TOKENS,
        "amount": AMOUNTS,
        "flag": (False, True),
        "mail": MAILS,
    }
    return st.sampled_from(pools[name]).flatmap(lambda value: _assigned(name, value))


ROW_NAMES = (
    "id",
    "email",
    "code",
    "token",
    "amount",
    "flag",
    "color",
    "cat",
    "colors",
    "mail",
    "seq",
)
"""The FastRDB instances on users, by name (their row patterns)."""
USER_FIELDS = (
    "email",
    "name",
    "code",
    "cat",
    "color",
    "token",
    "amount",
    "flag",
    "mail",
)
WRITABLE = USER_FIELDS


@st.composite
def user_changes(draw: st.DrawFn, fields: tuple[str, ...] = WRITABLE) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
    return {name: draw(_field(name)) for name in sorted(names)}


@st.composite
def user_rows(draw: st.DrawFn) -> dict[str, Any]:
    row = {name: draw(_field(name)) for name in USER_FIELDS}
    row["id"] = draw(st.sampled_from(USER_IDS))
    return row


def canonical(row: dict[str, Any]) -> dict[str, Any]:
    """A row with every value in its stored form (what a schema takes)."""
    out = dict(row)
    if "token" in out and not isinstance(out["token"], uuid.UUID):
        out["token"] = uuid.UUID(out["token"])
    if "amount" in out:
        out["amount"] = Decimal(out["amount"]).quantize(Decimal("0.01"))
    if "color" in out and not isinstance(out["color"], Color):
        out["color"] = Color[out["color"]]
    if "flag" in out:
        out["flag"] = bool(out["flag"])
    return out


# -- queries: what produced a key, and its fresh result ---------------------------------------

ABSENT = "<absent>"


@dataclass(frozen=True)
class Query:
    crud: str
    filters: tuple[tuple[str, Any], ...]
    page: tuple[int, int, str | None, bool] | None = None  # limit, page, order_by, ascending

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.filters)
        if self.page is None:
            return f"{self.crud}.get({args})"
        limit, page, order_by, ascending = self.page
        return (
            f"{self.crud}.get_multi({args}, limit={limit}, page={page}, "
            f"order_by={order_by!r}, ascending={ascending})"
        )


_list_adapters: dict[type[BaseModel], TypeAdapter[Any]] = {}


def decode(query: Query, raw: bytes) -> Any:
    crud = CRUDS[query.crud]
    schema = crud.response_schema
    try:
        if query.page is None:
            return schema.model_validate_json(raw).model_dump(mode="json")
        adapter = _list_adapters.setdefault(schema, TypeAdapter(list[schema]))  # type: ignore[valid-type]
        return [item.model_dump(mode="json") for item in adapter.validate_json(raw)]
    except ValidationError:
        return ABSENT  # not a value: a negative entry, which stands for "no such row"


async def fresh(session: AsyncSession, query: Query) -> Any:
    """What the database returns for ``query`` now, as the response schema dumps it."""
    crud = CRUDS[query.crud]
    model = crud.model
    clauses = [
        getattr(model, name).is_(None) if value is None else getattr(model, name) == value
        for name, value in query.filters
    ]
    schema = crud.response_schema
    if query.page is None:
        rows = (await session.execute(select(model).where(*clauses))).scalars().all()
        if len(rows) != 1:
            return ABSENT
        return schema.model_validate(rows[0], from_attributes=True).model_dump(mode="json")
    limit, page, order_by, ascending = query.page
    column = getattr(model, order_by or "id")
    stmt = (
        select(model)
        .where(*clauses)
        .order_by(column.asc() if ascending else column.desc())
        .limit(limit)
        .offset((page - 1) * limit)
    )
    rows = (await session.execute(stmt)).scalars().all()
    return [schema.model_validate(r, from_attributes=True).model_dump(mode="json") for r in rows]


# -- the world one test run shares across examples ---------------------------------------------


@dataclass
class World:
    database: Database
    runner: asyncio.Runner
    engine: AsyncEngine
    sync_engine: Engine
    other_isolation: str | None
    examples: int = 0
    checked: int = 0
    """Cached entries compared with the database (a check that compares nothing proves nothing)."""
    served: int = 0
    """Values served to fresh sessions compared with the database."""

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return self.runner.run(wrapped())


@dataclass
class Slot:
    """A long-lived session of one kind; it keeps what it loaded between steps."""

    kind: str  # "async", "async_keep", "async_iso", "sync"
    maker: Any
    session: Any
    kept: list[Any] = field(default_factory=list)
    """Instances the app holds on to (a session's identity map only keeps them weakly)."""

    @property
    def is_async(self) -> bool:
        return self.kind != "sync"


SYNC_ERRORS = (
    IntegrityError,
    DataError,
    CompileError,
    DBAPIError,
    StaleDataError,
    ObjectDeletedError,
)
"""What the database may refuse in a random step: duplicate ids, values of a wrong type, a
statement the dialect cannot compile (an UPDATE through a joined subclass that sets a parent
column, on PostgreSQL), a write that REPEATABLE READ cannot serialize after another session's
commit or that waits for a lock a held session keeps, and a write through a held copy whose
row another session deleted. Any other DBAPIError is re-raised (see :func:`refused`)."""

_SERIALIZATION = (
    "could not serialize access",
    "deadlock",
    "Deadlock found",
    "Lock wait timeout",
    "canceling statement due to lock timeout",
)


def refused(exc: Exception) -> bool:
    """Whether ``exc`` is the database refusing a random step, not a failure to report."""
    if isinstance(
        exc, IntegrityError | DataError | CompileError | StaleDataError | ObjectDeletedError
    ):
        return True
    return any(text in str(exc) for text in _SERIALIZATION)


@contextmanager
def identity_conflicts_allowed() -> Iterator[None]:
    """Let a flush work through copies the session holds of rows another session changed: an
    INSERT of a primary key the session holds as another instance (SQLAlchemy warns and sends
    it: the database refuses it if the row exists, accepts it if it was deleted meanwhile, and
    SQLAlchemy warns again as it replaces the held instance), and a delete-orphan of a row
    another session deleted (SQLAlchemy warns that the DELETE matched no row). The warnings
    are errors in the test configuration; here they are what an app would see."""
    with warnings.catch_warnings():
        for message in (
            "New instance .* conflicts with persistent instance",
            "Identity map already had an identity for",
            "DELETE statement on table .* expected to delete",
        ):
            warnings.filterwarnings("ignore", message=message, category=SAWarning)
        yield


def make_machine(world: World) -> type[RuleBasedStateMachine]:
    dialect = world.database.name

    class Coherence(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.registry: dict[str, set[Query]] = {}
            self.seen: dict[str, bytes] = {}
            """What the last check compared, per key."""
            self.wrote = True
            """A step may have written the database since the last check (reads only fill)."""
            self.handles: list[ListenHandle] = []
            self.slots: list[Slot] = []
            self.published: set[str] = set(CRUDS)
            """FastRDB instances read through since the last FLUSHDB (their patterns are
            published): priming reads through these only, so a partial pattern set stays
            partial (family 15)."""
            world.examples += 1
            world.run(self._start())

        # -- set-up and tear-down --

        async def _start(self) -> None:
            self.redis = async_redis_client()
            self.sync_redis = sync_redis_client()
            await self.redis.flushdb()
            with world.sync_engine.begin() as connection:
                for table in reversed(GenBase.metadata.sorted_tables):
                    connection.execute(table.delete())
            self.plain = async_sessionmaker(world.engine, expire_on_commit=False)
            self.makers: dict[str, Any] = {
                "async": async_sessionmaker(world.engine),
                "async_keep": async_sessionmaker(world.engine, expire_on_commit=False),
                "sync": sessionmaker(world.sync_engine),
            }
            if world.other_isolation is not None:
                iso = world.engine.execution_options(isolation_level=world.other_isolation)
                # expire_on_commit on PostgreSQL: outside a transaction it holds nothing fresh
                # (family 1 cannot bite), so family 9 alone decides whether it reads held.
                self.makers["async_iso"] = async_sessionmaker(
                    iso, expire_on_commit=dialect != "mariadb"
                )
            for kind, maker in self.makers.items():
                client = self.sync_redis if kind == "sync" else self.redis
                self.handles.append(listen(maker, client))
            for kind in ("async", "async_keep", "sync", "async_iso"):
                if kind in self.makers:
                    self.slots.append(Slot(kind, self.makers[kind], self.makers[kind]()))
            async with self.plain() as s:
                for i in (1, 2, 3):
                    s.add(
                        GenUser(
                            id=i,
                            email=EMAILS[i - 1],
                            name=NAMES[0],
                            code=CODES[i - 1],
                            cat=CATS[i % 2],
                            color=Color.RED,
                            token=TOKENS[i - 1],
                            amount=AMOUNTS[0],
                            flag=True,
                            mail=MAILS[i - 1],
                            seq=i,  # distinct: a pattern names one row
                        )
                    )
                s.add_all(
                    [
                        GenEmployee(id=1, name="e1"),
                        GenManager(id=2, name="e2", level=1),
                        GenManager(id=3, name="e3", level=2),
                        GenAnimal(id=1, name="a1"),
                        GenDog(id=2, name="a2", breed="x"),
                        GenParent(
                            id=1,
                            name="p1",
                            kids=[GenKid(id=1, label="k1"), GenKid(id=2, label="k2")],
                        ),
                        GenParent(id=2, name="p2", kids=[GenKid(id=3, label="k3")]),
                        GenAuthor(id=1, name="au1"),
                        GenAuthor(id=2, name="au2"),
                    ]
                )
                await s.flush()
                s.add_all(
                    [
                        GenBook(id=1, title="b1", author_id=1),
                        GenBook(id=2, title="b2", author_id=1),
                        GenBook(id=3, title="b3", author_id=2),
                    ]
                )
                await s.commit()

        def teardown(self) -> None:
            world.run(self._stop())

        async def _stop(self) -> None:
            for slot in self.slots:
                if slot.is_async:
                    await slot.session.close()
                else:
                    slot.session.close()
            for handle in self.handles:
                handle.remove()
            await self.redis.aclose()
            self.sync_redis.close()

        # -- helpers --

        def in_slot(self, index: int, work: Callable[[Session], Any]) -> Any:
            """Run sync ORM code in slot ``index``'s session (through ``run_sync`` if async);
            a refused write is rolled back."""
            self.wrote = True
            slot = self.slots[index % len(self.slots)]
            try:
                with identity_conflicts_allowed():
                    if slot.is_async:
                        return world.run(slot.session.run_sync(work))
                    return work(slot.session)
            except SYNC_ERRORS as exc:
                if not refused(exc):
                    raise
                self._rollback(slot)
                return None

        def _rollback(self, slot: Slot) -> None:
            if slot.is_async:
                world.run(slot.session.rollback())
            else:
                slot.session.rollback()

        @contextmanager
        def crud_session(self, index: int | None) -> Iterator[AsyncSession]:
            """An asyncio session for a FastRDB call: the long-lived session of the slot (it
            may hold copies: families 1 and 3), or a new one if the slot is the worker's sync
            session or ``index`` is None."""
            if index is not None:
                slot = self.slots[index % len(self.slots)]
                if slot.is_async:
                    yield slot.session
                    return
            session = self.makers["async"]()
            try:
                yield session
            finally:
                world.run(session.close())

        async def _keys(self) -> set[str]:
            return {
                k.decode()
                for k in await self.redis.keys("*")
                if not k.startswith((b"{", b"fastrdb:"))
            }

        def read(
            self,
            index: int | None,
            query: Query,
            call: Callable[[AsyncSession], Awaitable[Any]],
        ) -> None:
            """Run a FastRDB read, register the keys it produced, and check what it served if
            the session could not have an older view than the database (not for priming reads,
            ``index`` None: the check after the step compares what they cached)."""
            with self.crud_session(index) as session:
                fresh_session = not session.in_transaction() and not session.identity_map
                before = world.run(self._keys())
                try:
                    served: Any = world.run(call(session))
                except (NoResultFound, MultipleResultsFound):
                    served = ABSENT
                after = world.run(self._keys())
                for key in after - before:
                    self.registry.setdefault(key, set()).add(query)
                    self.seen.pop(key, None)  # a new query for it: compare again
            self.published.add(query.crud)
            if fresh_session and index is not None:
                if isinstance(served, list):
                    served = [item.model_dump(mode="json") for item in served]
                elif isinstance(served, BaseModel):
                    served = served.model_dump(mode="json")
                expected = world.run(self._fresh(query))
                world.served += 1
                assert served == expected, (
                    f"{query} served {served!r}, the database has {expected!r}"
                )

        async def _fresh(self, query: Query) -> Any:
            async with self.plain() as session:
                return await fresh(session, query)

        def write_through(self, index: int, name: str, call: Callable[[AsyncSession], Any]) -> None:
            """Run a FastRDB create or update; register the key its write-through filled as
            the ``get`` of the written row's pattern values."""
            self.wrote = True
            crud = CRUDS[name]
            with self.crud_session(index) as db:
                before = world.run(self._keys())
                try:
                    with identity_conflicts_allowed():
                        out = world.run(call(db))
                except NoResultFound:
                    return
                except SYNC_ERRORS as exc:
                    if not refused(exc):
                        raise
                    world.run(db.rollback())  # as the app would (a failed locked read)
                    return
                after = world.run(self._keys())
            self.published.add(name)
            fields = KeyPattern(crud.pattern).fields
            query = Query(name, tuple((f, getattr(out, f)) for f in fields))
            for key in after - before:
                self.registry.setdefault(key, set()).add(query)
                self.seen.pop(key, None)  # a new query for it: compare again

        # -- priming: what a write may make stale is in the cache before it runs --

        def prime(
            self, uids: list[int] | None = None, values: Mapping[str, Any] | None = None
        ) -> None:
            """Before a write to users: read the rows it may change (``None``: all) through
            every published pattern, and the keys of the values it may set (a negative entry,
            or another row's), each in a new session. So the entries a missed invalidation
            would leave stale are there for the check right after the write, whatever ran
            before it."""
            names = self.published & {*ROW_NAMES, "idpage"}
            if not names:
                return
            self._warm_users(None, uids, names)
            stored = canonical(dict(values or {}))
            ids = uids or list(USER_IDS)
            for name in sorted(names):
                fields = KeyPattern(CRUDS[name].pattern).fields
                wanted = set(fields) - {"id"}
                if not wanted or not wanted <= stored.keys():
                    continue
                for user_id in ids if "id" in fields else [None]:
                    filters = {f: user_id if f == "id" else stored[f] for f in fields}
                    self.read(
                        None,
                        Query(name, tuple(filters.items())),
                        lambda db, crud=CRUDS[name], filters=filters: crud.get(
                            db=db, redis=self.redis, **filters
                        ),
                    )
            for name, column in (("cat", "cat"), ("colors", "color")):
                if name in names and column in stored:
                    filters = {column: stored[column]}
                    self.read(
                        None,
                        Query(name, tuple(filters.items()), (3, 1, None, True)),
                        lambda db, crud=CRUDS[name], filters=filters: crud.get_multi(
                            db=db, redis=self.redis, limit=3, **filters
                        ),
                    )

        def follow(self, slot: int, uids: list[int]) -> None:
            """After a write in ``slot``: the next slot's session, which may hold the rows from
            before (an app's ``current_user``), reads them through FastRDB (family 1)."""
            for user_id in uids:
                self.read(
                    slot + 1,
                    Query("id", (("id", user_id),)),
                    lambda db, user_id=user_id: CRUDS["id"].get(
                        db=db, redis=self.redis, id=user_id
                    ),
                )

        def prime_others(self, *names: str) -> None:
            """Before a write to the hierarchies, kids or authors: read their published rows."""
            self._warm_others(None, [n for n in names if n in self.published])

        # -- the check --

        @invariant()
        def cache_matches_database(self) -> None:
            world.run(self._check())

        async def _check(self) -> None:
            """Compare every registered entry with the database; after a step that only read,
            only the entries it filled or changed (the database is as the last check saw it)."""
            if any(health_of(c).pending is not None for c in (self.redis, self.sync_redis)):
                return  # an invalidation timed out (a loaded machine): nothing is served now
            keys = sorted(k for k in await self._keys() if self.registry.get(k))
            raws = await self.redis.mget(keys) if keys else []
            seen, self.seen = self.seen, {}
            wrote, self.wrote = self.wrote, False
            async with self.plain() as session:  # one snapshot for the whole check
                for key, raw in zip(keys, raws, strict=True):
                    if raw is None:
                        continue
                    self.seen[key] = raw
                    if not wrote and seen.get(key) == raw:
                        continue
                    for query in sorted(self.registry[key], key=str):
                        cached = decode(query, raw)
                        expected = await fresh(session, query)
                        world.checked += 1
                        assert cached == expected, (
                            f"stale entry {key!r} for {query}: cached {cached!r}, "
                            f"the database has {expected!r}"
                        )

        # -- sessions: hold copies, end transactions ---------------------------------------

        @rule(slot=SLOTS, uid=st.none() | st.sampled_from(USER_IDS))
        def hold(self, slot: int, uid: int | None) -> None:
            """A session loads a user and keeps it (an app's current_user; a stale copy later),
            or every row it can reach."""

            kept = self.slots[slot % len(self.slots)].kept

            def work(s: Session) -> None:
                if uid is not None:
                    kept.append(s.get(GenUser, uid))
                    return
                for model in (GenUser, GenEmployee, GenAnimal, GenParent, GenBook):
                    kept.extend(s.execute(select(model)).scalars().all())

            self.in_slot(slot, work)

        @rule(
            slot=SLOTS,
            how=st.sampled_from(["commit", "rollback", "close", "expire_all"]),
        )
        def end(self, slot: int, how: str) -> None:
            """A session ends its transaction (or drops or expires what it holds)."""

            def work(s: Session) -> None:
                if how == "expire_all":
                    s.expire_all()
                else:
                    getattr(s, how)()

            self.in_slot(slot, work)
            if how == "close":
                self.slots[slot % len(self.slots)].kept.clear()

        # -- FastRDB reads ------------------------------------------------------------------

        @rule(
            slot=SLOTS,
            uid=st.none() | st.sampled_from(USER_IDS),
            names=st.none() | st.lists(st.sampled_from(ROW_NAMES), min_size=1, unique=True),
        )
        def warm_users(self, slot: int, uid: int | None, names: list[str] | None) -> None:
            """Read every user (or one) through every pattern (or some), with its values as
            stored, and its pages: hot rows, so an entry a missed invalidation leaves behind is
            there to be found; a subset publishes a partial pattern set (family 15)."""
            self._warm_users(slot, None if uid is None else [uid], names)

        def _warm_users(
            self, slot: int | None, uids: list[int] | None, names: Collection[str] | None
        ) -> None:
            if uids is None:
                with world.sync_engine.connect() as connection:
                    uids = list(connection.scalars(select(GenUser.id)))
            enabled = [n for n in ROW_NAMES if names is None or n in names]
            for user_id in uids:
                user = world.run(self._fresh(Query("id", (("id", user_id),))))
                if names is None or "idpage" in names:  # the page an insert or a move enters
                    self.read(
                        slot,
                        Query("idpage", (("id", user_id),), (3, 1, None, True)),
                        lambda db, user_id=user_id: CRUDS["idpage"].get_multi(
                            db=db, redis=self.redis, limit=3, id=user_id
                        ),
                    )
                if user == ABSENT:
                    if "id" in enabled:  # a negative entry, which an insert or a move must drop
                        self.read(
                            slot,
                            Query("id", (("id", user_id),)),
                            lambda db, user_id=user_id: CRUDS["id"].get(
                                db=db, redis=self.redis, id=user_id
                            ),
                        )
                    continue
                for name in enabled:
                    crud = CRUDS[name]
                    filters = {f: _stored(f, user[f]) for f in KeyPattern(crud.pattern).fields}
                    self.read(
                        slot,
                        Query(name, tuple(filters.items())),
                        lambda db, crud=crud, filters=filters: crud.get(
                            db=db, redis=self.redis, **filters
                        ),
                    )
                pages: list[tuple[str, dict[str, Any]]] = [
                    ("cat", {"cat": user["cat"]}),
                    ("colors", {"color": Color(user["color"])}),
                ]
                for name, filters in pages:
                    if names is not None and name not in names:
                        continue
                    crud = CRUDS[name]
                    self.read(
                        slot,
                        Query(name, tuple(filters.items()), (3, 1, None, True)),
                        lambda db, crud=crud, filters=filters: crud.get_multi(
                            db=db, redis=self.redis, limit=3, **filters
                        ),
                    )
            if names is None or "id" in names:
                crud = CRUDS["id"]
                self.read(
                    slot,
                    Query("id", (), (3, 1, None, True)),
                    lambda db: crud.get_multi(db=db, redis=self.redis, limit=3),
                )

        @rule(slot=SLOTS)
        def warm_others(self, slot: int) -> None:
            """Read every row of the hierarchies, the kids and the books, and a page of each."""
            self._warm_others(slot, ("employee", "manager", "animal", "dog", "kid", "book"))

        def _warm_others(self, slot: int | None, names: Collection[str]) -> None:
            for name in names:
                crud = CRUDS[name]
                for rid in (1, 2, 3):
                    self.read(
                        slot,
                        Query(name, (("id", rid),)),
                        lambda db, crud=crud, rid=rid: crud.get(db=db, redis=self.redis, id=rid),
                    )
                self.read(
                    slot,
                    Query(name, (), (2, 1, None, True)),
                    lambda db, crud=crud: crud.get_multi(db=db, redis=self.redis, limit=2),
                )

        @rule(
            slot=SLOTS,
            name=st.sampled_from(
                [
                    "id",
                    "email",
                    "code",
                    "token",
                    "amount",
                    "flag",
                    "color",
                    "mail",
                    "seq",
                ]
            ),
            uid=st.sampled_from(USER_IDS),
            extra=st.sampled_from([None, ("name", "n1"), ("flag", True), ("cat", "a")]),
            data=st.data(),
        )
        def get_user(self, slot: int, name: str, uid: int, extra: Any, data: st.DataObject) -> None:
            """FastRDB get through one of the user patterns (families 6, 7, 11, 12 by pattern)."""
            crud = CRUDS[name]
            filters: dict[str, Any] = {}
            for f in KeyPattern(crud.pattern).fields:
                if f == "id":
                    filters[f] = uid
                elif f == "seq":
                    seqs = [0, *self._seqs()]  # drawn by position: the values vary per run
                    filters[f] = seqs[data.draw(st.integers(0, 5), label="seq") % len(seqs)]
                else:
                    filters[f] = data.draw(st.sampled_from(_pool(f)), label=f)
            if extra is not None and extra[0] not in filters:
                filters[extra[0]] = extra[1]
            query = Query(name, tuple(filters.items()))
            self.read(slot, query, lambda db: crud.get(db=db, redis=self.redis, **filters))

        def _ids(self) -> list[int]:
            with world.sync_engine.connect() as c:
                return sorted(c.scalars(select(GenUser.id)))

        def _seqs(self) -> list[int]:
            with world.sync_engine.connect() as c:
                return sorted({r[0] for r in c.execute(select(GenUser.seq))})

        @rule(
            slot=SLOTS,
            name=st.sampled_from(["id", "email", "cat", "colors"]),
            limit=st.integers(1, 3),
            page=st.integers(1, 2),
            order=st.sampled_from([(None, True), ("id", False), ("id", True)]),
            data=st.data(),
        )
        def list_users(
            self,
            slot: int,
            name: str,
            limit: int,
            page: int,
            order: Any,
            data: st.DataObject,
        ) -> None:
            """FastRDB get_multi, plain or narrowed by invalidate_pattern_prefix (family 8)."""
            filters: dict[str, Any] = {}
            if name == "cat":
                filters["cat"] = data.draw(st.sampled_from(CATS), label="cat")
            elif name == "colors":
                filters["color"] = data.draw(st.sampled_from(tuple(Color)), label="color")
            elif data.draw(st.booleans(), label="filtered"):
                filters["flag"] = data.draw(st.booleans(), label="flag")
            order_by, ascending = order
            query = Query(name, tuple(filters.items()), (limit, page, order_by, ascending))
            crud = CRUDS[name]
            self.read(
                slot,
                query,
                lambda db: crud.get_multi(
                    db=db,
                    redis=self.redis,
                    limit=limit,
                    page=page,
                    order_by=order_by,
                    ascending=ascending,
                    **filters,
                ),
            )

        @rule(slot=SLOTS, flag=st.booleans())
        def count_users(self, slot: int, flag: bool) -> None:
            """FastRDB count (with a filter)."""
            with self.crud_session(slot) as db:
                world.run(CRUDS["id"].count(db=db, redis=self.redis, flag=flag))

        # -- FastRDB writes -----------------------------------------------------------------

        @rule(slot=SLOTS, name=st.sampled_from(["id", "email"]), row=user_rows())
        def crud_create(self, slot: int, name: str, row: dict[str, Any]) -> None:
            """FastRDB create (write-through)."""
            self.prime([row["id"]], row)
            crud = CRUDS[name]
            obj_in = GenUserCreate(**canonical(row))
            self.write_through(
                slot,
                name,
                lambda db: crud.create(db=db, redis=self.redis, obj_in=obj_in),
            )

        @rule(slot=SLOTS, uid=st.sampled_from(USER_IDS), changes=user_changes())
        def crud_update(self, slot: int, uid: int, changes: dict[str, Any]) -> None:
            """FastRDB update by id (write-through, in the slot's session: maybe an old copy)."""
            self.prime([uid], changes)
            crud = CRUDS["id"]
            obj_in = GenUserUpdate(**canonical(changes))
            self.write_through(
                slot,
                "id",
                lambda db: crud.update(db=db, redis=self.redis, obj_in=obj_in, id=uid),
            )
            self.follow(slot, [uid])

        @rule(slot=SLOTS, uid=st.sampled_from(USER_IDS))
        def crud_delete(self, slot: int, uid: int) -> None:
            """FastRDB delete by id."""
            self.prime([uid])
            self.wrote = True
            with self.crud_session(slot) as db, suppress(NoResultFound):
                try:
                    world.run(CRUDS["id"].delete(db=db, redis=self.redis, id=uid))
                except SYNC_ERRORS as exc:
                    if not refused(exc):
                        raise
                    world.run(db.rollback())  # as the app would (a failed locked read)

        # -- plain ORM writes -------------------------------------------------------------

        def _user_for_write(self, s: Session, uid: int, how: str) -> GenUser | None:
            """The session's copy of a user, as ``how`` leaves it (family 3: stale or expired)."""
            user = s.get(GenUser, uid)
            if user is None:
                return None
            if how == "expire":
                s.expire(user)
            elif how == "commit_first":
                s.commit()
            return user

        @rule(
            slot=SLOTS,
            uid=st.sampled_from(USER_IDS),
            how=st.sampled_from(["held", "expire", "commit_first"]),
            changes=user_changes(),
        )
        def orm_update(self, slot: int, uid: int, how: str, changes: dict[str, Any]) -> None:
            """Set attributes on the session's copy of a user and commit."""
            self.prime([uid], changes)

            def work(s: Session) -> None:
                user = self._user_for_write(s, uid, how)
                if user is None:
                    return
                for k, v in changes.items():
                    setattr(user, k, v)
                s.commit()

            self._assigned(slot, work, changes)
            self.follow(slot, [uid])

        def _assigned(
            self, slot: int, work: Callable[[Session], None], *values: dict[str, Any]
        ) -> None:
            """Run a write whose values (one dict per row) may be in an assigned form that a
            driver refuses (a UUID given as ``str`` to a driver that takes ``uuid.UUID``)."""
            if all(canonical(row) == row for row in values):
                self.in_slot(slot, work)
                return
            s = self.slots[slot % len(self.slots)]
            try:
                self.in_slot(slot, work)
            except StatementError:
                self._rollback(s)

        @rule(
            slot=SLOTS,
            uid=st.sampled_from(USER_IDS),
            how=st.sampled_from(["held", "expire", "commit_first"]),
        )
        def orm_delete(self, slot: int, uid: int, how: str) -> None:
            """Delete the session's copy of a user and commit."""
            self.prime([uid])

            def work(s: Session) -> None:
                user = self._user_for_write(s, uid, how)
                if user is None:
                    return
                s.delete(user)
                s.commit()

            self.in_slot(slot, work)

        @rule(slot=SLOTS, row=user_rows(), merge=st.booleans())
        def orm_insert(self, slot: int, row: dict[str, Any], merge: bool) -> None:
            """Add (or merge) a whole user and commit."""
            self.prime([row["id"]], row)

            def work(s: Session) -> None:
                if merge:
                    s.merge(GenUser(**row))
                else:
                    if s.get(GenUser, row["id"]) is not None:
                        return
                    s.add(GenUser(**row))
                s.commit()

            self._assigned(slot, work, row)

        @rule(
            slot=SLOTS,
            where=st.sampled_from(["id", "cat", "email", "all"]),
            arg=SLOTS,
            changes=user_changes(),
            sync=st.sampled_from([False, "fetch"]),
            kind=st.sampled_from(["update", "delete"]),
        )
        def bulk(
            self,
            slot: int,
            where: str,
            arg: int,
            changes: dict[str, Any],
            sync: Any,
            kind: str,
        ) -> None:
            """Bulk ORM update() / delete() with a WHERE."""
            self.prime(None, changes if kind == "update" else None)
            clause: Any
            if where == "id":
                clause = GenUser.id == USER_IDS[arg % len(USER_IDS)]
            elif where == "cat":
                clause = GenUser.cat == CATS[arg % len(CATS)]
            elif where == "email":
                clause = GenUser.email == EMAILS[arg % len(EMAILS)]
            else:
                clause = GenUser.id > 0
            stmt: Any = update(GenUser).values(**changes) if kind == "update" else delete(GenUser)
            stmt = stmt.where(clause).execution_options(synchronize_session=sync)

            def work(s: Session) -> None:
                s.execute(stmt)
                s.commit()

            self._assigned(slot, work, changes if kind == "update" else {})

        @rule(slot=SLOTS, uid=st.sampled_from(USER_IDS), mail=st.sampled_from(MAILS))
        def core_update(self, slot: int, uid: int, mail: str) -> None:
            """Family 6: a Core update() of the table (renamed column) through the session."""
            self.prime([uid], {"mail": mail})
            table = GenUser.__table__

            def work(s: Session) -> None:
                s.execute(update(table).where(table.c.id == uid).values(mail_col=mail))
                s.commit()

            self.in_slot(slot, work)

        @rule(slot=SLOTS, row=user_rows())
        def insert_values(self, slot: int, row: dict[str, Any]) -> None:
            """Family 4: insert(User).values(...)."""
            self.prime([row["id"]], row)

            def work(s: Session) -> None:
                s.execute(insert(GenUser).values(**row))
                s.commit()

            self._assigned(slot, work, row)

        @rule(
            slot=SLOTS,
            rows=st.lists(user_rows(), min_size=1, max_size=2, unique_by=lambda r: r["id"]),
            fields=st.lists(
                st.sampled_from(WRITABLE[:-1] if "mail" in WRITABLE else WRITABLE),
                min_size=1,
                max_size=3,
                unique=True,
            ),
            form=st.sampled_from(["values", "params"]),
        )
        def upsert(
            self, slot: int, rows: list[dict[str, Any]], fields: list[str], form: str
        ) -> None:
            """Family 4: the dialect's upsert, with .values() or a parameter list."""
            for row in rows:
                self.prime([row["id"]], row)
            stmt: Any
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            elif dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
            else:
                from sqlalchemy.dialects.mysql import insert as dialect_insert  # type: ignore[assignment]
            stmt = dialect_insert(GenUser)
            if form == "values":
                stmt = stmt.values(**rows[0])
                new = {f: rows[0][f] for f in fields}
            else:
                proposed = stmt.inserted if dialect == "mariadb" else stmt.excluded
                new = {f: proposed[f] for f in fields}
            if dialect == "mariadb":
                stmt = stmt.on_duplicate_key_update(**new)
            else:
                stmt = stmt.on_conflict_do_update(index_elements=[GenUser.id], set_=new)

            def work(s: Session) -> None:
                if form == "values":
                    s.execute(stmt)
                else:
                    s.execute(stmt, rows)
                s.commit()

            self._assigned(slot, work, *(rows if form == "params" else rows[:1]))

        @rule(slot=SLOTS, old=st.integers(0, 4), new=st.integers(0, 4))
        def change_primary_key(self, slot: int, old: int, new: int) -> None:
            """Family 13: a bulk UPDATE that moves a row to a free primary key (both drawn by
            position among the ids in use and the free ones: the values vary per run)."""
            ids = self._ids()
            free = [i for i in USER_IDS if i not in ids] or list(USER_IDS)
            old, new = (ids or list(USER_IDS))[old % max(len(ids), 1)], free[new % len(free)]
            self.prime([old, new])

            def work(s: Session) -> None:
                s.execute(
                    update(GenUser)
                    .where(GenUser.id == old)
                    .values(id=new)
                    .execution_options(synchronize_session=False)
                )
                s.commit()

            self.in_slot(slot, work)

        @rule(
            slot=SLOTS,
            uid=st.sampled_from(USER_IDS),
            changes=user_changes(),
            release=st.booleans(),
            commit=st.booleans(),
        )
        def savepoint(
            self,
            slot: int,
            uid: int,
            changes: dict[str, Any],
            release: bool,
            commit: bool,
        ) -> None:
            """An ORM write in a savepoint, released or rolled back, then commit or rollback.

            Not rolled back on SQLite: pysqlite emits no BEGIN before SAVEPOINT, so RELEASE
            commits (SQLAlchemy documents the event-hook workaround); the session's rollback
            then undoes nothing while the session believes it did."""
            self.prime([uid], changes)
            if dialect == "sqlite":
                commit = True

            def work(s: Session) -> None:
                user = self._user_for_write(s, uid, "held")
                if user is None:
                    return
                nested = s.begin_nested()
                for k, v in changes.items():
                    setattr(user, k, v)
                s.flush()
                if release:
                    nested.commit()
                else:
                    nested.rollback()
                if commit:
                    s.commit()
                else:
                    s.rollback()

            self._assigned(slot, work, changes)
            self.follow(slot, [uid])

        # -- hierarchies, orphans, books ----------------------------------------------------

        @rule(
            slot=SLOTS,
            rid=st.integers(1, 3),
            through=st.sampled_from(["base", "sub"]),
            name=st.sampled_from(["e1", "e2", "e3"]),
            bulk=st.booleans(),
        )
        def write_employee(self, slot: int, rid: int, through: str, name: str, bulk: bool) -> None:
            """Joined-table inheritance: rename through the base or the subclass (bulk: 5)."""
            self.prime_others("employee", "manager")
            self.rename(slot, GenEmployee if through == "base" else GenManager, rid, name, bulk)

        @rule(
            slot=SLOTS,
            rid=st.integers(1, 2),
            through=st.sampled_from(["base", "sub"]),
            name=st.sampled_from(["a1", "a2", "a3"]),
            bulk=st.booleans(),
        )
        def write_animal(self, slot: int, rid: int, through: str, name: str, bulk: bool) -> None:
            """Single-table inheritance: rename through the base or the subclass."""
            self.prime_others("animal", "dog")
            self.rename(slot, GenAnimal if through == "base" else GenDog, rid, name, bulk)

        def rename(self, slot: int, model: Any, rid: int, name: str, bulk: bool) -> None:
            """Set row ``rid``'s name through ``model``: a bulk UPDATE or the ORM, then commit."""

            def work(s: Session) -> None:
                if bulk:
                    s.execute(
                        update(model)
                        .where(model.id == rid)
                        .values(name=name)
                        .execution_options(synchronize_session=False)
                    )
                else:
                    row = s.get(model, rid)
                    if row is None:
                        return
                    row.name = name
                s.commit()

            self.in_slot(slot, work)

        @rule(slot=SLOTS, pid=st.integers(1, 2))
        def remove_orphan(self, slot: int, pid: int) -> None:
            """Family 10: parent.kids.remove(kid) deletes the kid (delete-orphan, no backref)."""
            self.prime_others("kid")

            def work(s: Session) -> None:
                parent = s.get(GenParent, pid)
                if parent is None or not parent.kids:
                    return
                parent.kids.remove(parent.kids[0])
                s.commit()

            self.in_slot(slot, work)

        @rule(slot=SLOTS, kid=st.integers(1, 3), label=st.sampled_from(["k1", "k2", "k9"]))
        def write_kid(self, slot: int, kid: int, label: str) -> None:
            """Rename a kid through the ORM."""
            self.prime_others("kid")

            def work(s: Session) -> None:
                row = s.get(GenKid, kid)
                if row is not None:
                    row.label = label
                    s.commit()

            self.in_slot(slot, work)

        @rule(
            slot=SLOTS,
            aid=st.integers(1, 2),
            name=st.sampled_from(["au1", "au2", "au3"]),
            bulk=st.booleans(),
        )
        def rename_author(self, slot: int, aid: int, name: str, bulk: bool) -> None:
            """Rename an author (books embedding it go stale without family 16's fix)."""
            self.prime_others("book")

            def work(s: Session) -> None:
                if bulk:
                    s.execute(update(GenAuthor).where(GenAuthor.id == aid).values(name=name))
                else:
                    row = s.get(GenAuthor, aid)
                    if row is None:
                        return
                    row.name = name
                s.commit()

            self.in_slot(slot, work)

        # -- the listener and Redis themselves -----------------------------------------------

        @rule(
            kind=st.sampled_from(["async", "async_keep", "sync"]),
            remove_first=st.booleans(),
        )
        def listen_again(self, kind: str, remove_first: bool) -> None:
            """Family 14: listen() again on a factory whose sessions are open (or remove()
            then listen()): sessions made before keep invalidating."""
            maker = self.makers[kind]
            client = self.sync_redis if kind == "sync" else self.redis
            if remove_first:
                for handle in self.handles:
                    if handle._target is maker:
                        handle.remove()
            self.handles.append(listen(maker, client))

        @rule(
            uid=st.sampled_from(USER_IDS),
            names=st.lists(st.sampled_from(ROW_NAMES), min_size=2, max_size=2, unique=True),
        )
        def flush_redis(self, uid: int, names: list[str]) -> None:
            """Family 15: FLUSHDB (a Redis restart); the first reads after it publish two
            patterns (as many as after the last one, maybe others: a pattern set rebuilt with
            other patterns of the same size)."""
            world.run(self.redis.flushdb())
            self.registry.clear()
            self.published.clear()
            self._warm_users(None, [uid], names)

    return Coherence


def _stored(field_name: str, dumped: Any) -> Any:
    """A value of a row as the response schema dumped it, back in the column's Python type."""
    if field_name == "token":
        return uuid.UUID(dumped)
    if field_name == "amount":
        return Decimal(dumped)
    if field_name == "color":
        return Color(dumped)
    return dumped


def _pool(field_name: str) -> tuple[Any, ...]:
    return {
        "email": EMAILS,
        "code": CODES,
        "token": TOKENS,
        "amount": AMOUNTS,
        "flag": (False, True),
        "color": tuple(Color),
        "mail": MAILS,
        "cat": CATS,
    }[field_name]


PROFILE = os.environ.get("FASTRDB_FUZZ_PROFILE", "ci")
FUZZ_CHUNK = 5
"""Examples per Hypothesis run in the fuzz profile, which runs again until its time is up."""


def _settings() -> settings:
    common: dict[str, Any] = {
        "deadline": None,
        "suppress_health_check": list(HealthCheck),
        "stateful_step_count": int(os.environ.get("FASTRDB_FUZZ_STEPS", "25")),
    }
    if PROFILE == "fuzz":
        return settings(max_examples=FUZZ_CHUNK, **common)
    return settings(
        max_examples=int(os.environ.get("FASTRDB_FUZZ_EXAMPLES", "10")),
        derandomize=True,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        **common,
    )


_SHORT_LOCK_WAITS: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]] = (
    {
        "sqlite": {},
        "postgresql": {"server_settings": {"lock_timeout": "1s"}},
        "mariadb": {"init_command": "SET SESSION innodb_lock_wait_timeout = 1"},
    },
    {
        "sqlite": {},
        "postgresql": {"options": "-c lock_timeout=1s"},
        "mariadb": {"init_command": "SET SESSION innodb_lock_wait_timeout = 1"},
    },
)
"""Connection settings (asyncio driver, sync driver): steps run one at a time in one thread, so a
lock wait is on a lock that a session held across steps keeps (a MariaDB gap lock left by a
``FOR UPDATE`` that found no row, in a session the app has not ended yet) and never ends by
waiting: it is refused after a second instead of the server's default 50 s (or forever)."""

_OTHER_ISOLATION = {"postgresql": "REPEATABLE READ", "mariadb": "READ COMMITTED"}


@pytest.mark.slow
def test_coherence_machine(database: Database) -> None:
    """No sequence of ORM and FastRDB steps leaves an entry that differs from the database."""
    with asyncio.Runner() as runner:
        engine = make_async_engine(
            database.async_url, connect_args=_SHORT_LOCK_WAITS[0][database.name]
        )
        sync_engine = create_engine(
            database.sync_url, connect_args=_SHORT_LOCK_WAITS[1][database.name]
        )
        world = World(database, runner, engine, sync_engine, _OTHER_ISOLATION.get(database.name))
        try:
            machine = make_machine(world)
            if PROFILE != "fuzz":
                run_state_machine_as_test(machine, settings=_settings())
                assert world.checked and world.served, "the machine compared nothing"
                return
            until = time.monotonic() + 60 * float(os.environ.get("FASTRDB_FUZZ_MINUTES", "5"))
            while time.monotonic() < until:
                run_state_machine_as_test(machine, settings=_settings())
        finally:
            sync_engine.dispose()
            runner.run(engine.dispose())
