"""Bounded outages: invalidations Redis cannot take are kept in bounded memory
(``Settings.max_pending``), coarsened past the bound, and nothing stale is served after."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio
from sqlalchemy import select, update
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

import fastrdb
from fastrdb import ConfigurationError, FastRDB, Settings
from fastrdb.cache.health import health_of
from fastrdb.events import listen
from fastrdb.events.changes import Changes
from tests.models import (
    Item,
    ItemSchema,
    ItemUpdate,
    User,
    UserCreate,
    UserResponse,
    UserUpdate,
    Verse,
    VerseSchema,
    VerseUpdate,
)
from tests.servers import Proxy

USERS, ITEMS, VERSES = 20, 8, 6


def settings(max_pending: int) -> Settings:
    return Settings(
        redis_timeout=1.0, breaker_threshold=2, breaker_cooldown=0.3, max_pending=max_pending
    )


class Cruds:
    """One FastRDB instance per table, with pages and counts."""

    def __init__(self, config: Settings) -> None:
        self.users = FastRDB[User, UserCreate, UserUpdate, UserResponse](
            User,
            UserResponse,
            pattern="user:email:{email}",
            list_pattern="user:page:{page}:limit:{limit}",
            settings=config,
        )
        self.items = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](
            Item, ItemSchema, pattern="item:sku:{sku}", settings=config
        )
        self.verses = FastRDB[Verse, VerseSchema, VerseUpdate, VerseSchema](
            Verse,
            VerseSchema,
            pattern="verse:{chapter_id}:{verse_id}",
            list_pattern="verse:chapter:{chapter_id}:page:{page}:limit:{limit}",
            invalidate_pattern_prefix="verse:chapter:{chapter_id}:*",
            settings=config,
        )


def client_for(port: int) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(
        host="127.0.0.1", port=port, socket_timeout=2.0, socket_connect_timeout=2.0
    )


def new_user(email: str, name: str) -> User:
    return User(id=None, email=email, name=name, bio=None, created_at=None, updated_at=None)  # type: ignore[arg-type]


async def seed(maker: async_sessionmaker[AsyncSession]) -> None:
    async with maker() as db:
        db.add_all(new_user(f"u{i}@x.io", f"old{i}") for i in range(USERS))
        db.add_all(Item(sku=f"s{i}", name=f"old{i}", price=i) for i in range(ITEMS))
        db.add_all(Verse(chapter_id=i % 2, verse_id=i, text=f"old{i}") for i in range(VERSES))
        await db.commit()


async def read_everything(
    cruds: Cruds, maker: async_sessionmaker[AsyncSession], client: redis.asyncio.Redis
) -> dict[str, Any]:
    """Every row, page and count, read through FastRDB (the first read of each fills it)."""
    seen: dict[str, Any] = {}
    async with maker() as db:
        for i in range(USERS):
            try:
                seen[f"u{i}"] = (
                    await cruds.users.get(db=db, redis=client, email=f"u{i}@x.io")
                ).name
            except NoResultFound:
                seen[f"u{i}"] = None
        for i in range(ITEMS):
            seen[f"s{i}"] = (await cruds.items.get(db=db, redis=client, sku=f"s{i}")).name
        for i in range(VERSES):
            verse = await cruds.verses.get(db=db, redis=client, chapter_id=i % 2, verse_id=i)
            seen[f"v{i}"] = verse.text
        page = await cruds.users.get_multi(db=db, redis=client, limit=100, order_by="id")
        seen["users page"] = sorted(user.name for user in page)
        seen["users count"] = await cruds.users.count(db=db, redis=client)
        for chapter in (0, 1):
            verses = await cruds.verses.get_multi(db=db, redis=client, chapter_id=chapter)
            seen[f"chapter {chapter}"] = sorted(verse.text for verse in verses)
        seen["items count"] = await cruds.items.count(db=db, redis=client)
    return seen


async def outage_writes(
    writer: async_sessionmaker[AsyncSession], client: redis.asyncio.Redis
) -> list[int]:
    """72 row versions across the three tables, in ten commits, while Redis is unreachable;
    returns what health reported pending after each commit."""
    pending: list[int] = []

    async def commit(change: Any) -> None:
        async with writer() as session:
            await change(session)
            await session.commit()  # never raises for Redis
        pending.append(fastrdb.health(client).pending)

    for start in range(0, USERS, 4):

        async def rename_users(session: AsyncSession, start: int = start) -> None:
            users = await session.scalars(select(User).where(User.id > 0).order_by(User.id))
            for user in list(users)[start : start + 4]:
                user.name = user.name.replace("old", "new")

        await commit(rename_users)

    async def move_users(session: AsyncSession) -> None:  # pattern values change
        for user in await session.scalars(select(User).where(User.email.in_(["u0@x.io"]))):
            user.email = "moved@x.io"
        for user in await session.scalars(select(User).where(User.email == "u1@x.io")):
            await session.delete(user)
        session.add(new_user("u99@x.io", "new99"))

    await commit(move_users)
    for half in (0, 1):

        async def rename_items(session: AsyncSession, half: int = half) -> None:
            for i in range(half, ITEMS, 2):
                (await session.get_one(Item, f"s{i}")).name = f"new{i}"

        await commit(rename_items)
    for half in (0, 1):

        async def rewrite_verses(session: AsyncSession, half: int = half) -> None:
            for i in range(half, VERSES, 2):
                (await session.get_one(Verse, (i % 2, i))).text = f"new{i}"

        await commit(rewrite_verses)
    return pending


def expected(*, after: bool) -> dict[str, Any]:
    """What every read returns before the outage, or once the outage's changes are visible."""
    word = "new" if after else "old"
    seen: dict[str, Any] = {f"u{i}": f"{word}{i}" for i in range(USERS)}
    seen |= {f"s{i}": f"{word}{i}" for i in range(ITEMS)}
    seen |= {f"v{i}": f"{word}{i}" for i in range(VERSES)}
    users = [f"{word}{i}" for i in range(USERS)]
    if after:
        seen["u0"] = None  # moved to another email
        seen["u1"] = None  # deleted
        users = [*(f"new{i}" for i in range(USERS) if i != 1), "new99"]
    seen["users page"] = sorted(users)
    seen["users count"] = USERS
    seen["chapter 0"] = sorted(f"{word}{i}" for i in range(VERSES) if i % 2 == 0)
    seen["chapter 1"] = sorted(f"{word}{i}" for i in range(VERSES) if i % 2 == 1)
    seen["items count"] = ITEMS
    return seen


async def run_outage(
    maker: async_sessionmaker[AsyncSession], proxy: Proxy, config: Settings
) -> tuple[list[int], str | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """Seed and cache three tables, cut Redis, write, restore: (pending after each commit, the
    scope kept, every read after the link came back, the logs of the recovery)."""
    cruds = Cruds(config)
    client = client_for(proxy.port)
    writer = async_sessionmaker(maker.kw["bind"])
    handle = listen(writer, client, settings=config)
    try:
        await seed(maker)
        before = await read_everything(cruds, maker, client)
        assert before == expected(after=False)
        assert before == await read_everything(cruds, maker, client)  # now from the cache
        await proxy.cut()
        pending = await outage_writes(writer, client)
        scope = fastrdb.health(client).pending_scope
        await proxy.restore()
        reads: list[dict[str, Any]] = []
        with capture_logs() as logs:
            deadline = time.monotonic() + 60
            while True:  # reads bypass the cache until a replay succeeds
                reads.append(await read_everything(cruds, maker, client))
                if fastrdb.health(client).serving:
                    break
                assert time.monotonic() < deadline, "the kept invalidations were never replayed"
                await asyncio.sleep(0.05)
            reads.append(await read_everything(cruds, maker, client))  # filled since
            reads.append(await read_everything(cruds, maker, client))  # from the cache
        assert fastrdb.health(client).pending == 0
        return pending, scope, reads, logs
    finally:
        handle.remove()
        await client.aclose()


@pytest.mark.slow
async def test_past_the_bound_whole_tables_are_kept_and_nothing_stale_is_served(
    maker: async_sessionmaker[AsyncSession], proxy: Proxy
) -> None:
    """An outage with ~70 row versions across three tables and max_pending=25: the kept items
    never exceed 25 (the biggest tables are kept whole); after recovery every row, page and
    count reads fresh, the moved and the deleted rows are not found."""
    config = settings(max_pending=25)
    pending, scope, reads, logs = await run_outage(maker, proxy, config)
    for seen in reads:
        assert seen == expected(after=True)
    assert max(pending) <= 25
    assert max(pending) >= 10, "exact row versions are kept while they fit"
    assert scope == "tables"
    wiped = sorted(entry["table"] for entry in logs if entry["event"] == "cache_wipe")
    assert "users" in wiped and "verses" not in wiped, "only the coarsened tables are scanned"


@pytest.mark.slow
async def test_past_the_bound_in_tables_everything_is_dropped(
    maker: async_sessionmaker[AsyncSession], proxy: Proxy
) -> None:
    """max_pending=2 with three changed tables: one item is kept ("everything"); after
    recovery every entry of the server was dropped and every read is fresh."""
    config = settings(max_pending=2)
    pending, scope, reads, _ = await run_outage(maker, proxy, config)
    for seen in reads:
        assert seen == expected(after=True)
    assert max(pending) <= 2
    assert pending[-1] == 1
    assert scope == "everything"


def test_max_pending_must_be_a_positive_number_of_items() -> None:
    """0, a negative number, a bool or a float is a ConfigurationError naming max_pending."""
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ConfigurationError) as caught:
            Settings(max_pending=bad)  # type: ignore[arg-type]
        assert caught.value.argument == "max_pending"


def versions(changes: Changes, table: str, count: int) -> None:
    for i in range(count):
        changes.add([table], {"id": i})


def test_bound_keeps_the_tables_with_most_versions_whole() -> None:
    """Past the bound the biggest tables are kept whole (one item each) until the rest fits;
    the smaller tables keep their exact versions."""
    changes = Changes()
    versions(changes, "big", 10)
    versions(changes, "mid", 6)
    versions(changes, "small", 3)
    changes.bound(10)
    assert changes.size() <= 10
    assert changes.scope() == "tables"
    assert changes.whole == {"big"}
    assert (len(changes.rows["mid"]), len(changes.rows["small"])) == (6, 3)
    assert changes.tables() == ["big", "mid", "small"]


def test_bound_past_it_in_tables_keeps_everything() -> None:
    """More tables than the bound: one item, "everything", and later merges change nothing."""
    changes = Changes()
    for table in ("a", "b", "c"):
        versions(changes, table, 2)
    changes.bound(2)
    assert (changes.size(), changes.scope(), changes.tables()) == (1, "everything", [])
    assert changes
    more = Changes()
    versions(more, "d", 5)
    changes.merge(more)
    assert (changes.size(), changes.scope()) == (1, "everything")
    fresh = Changes()
    fresh.merge(changes)
    assert fresh.scope() == "everything", "a copy of pending stays coarse"


def test_versions_merged_into_a_whole_table_are_not_kept() -> None:
    """A table kept whole holds no row versions: merging more of its rows costs nothing."""
    changes = Changes()
    versions(changes, "t", 5)
    changes.bound(3)
    more = Changes()
    versions(more, "t", 50)
    changes.merge(more)
    assert changes.size() == 1
    assert changes.rows["t"] == []


async def rename_unseen(maker: async_sessionmaker[AsyncSession], name: str) -> None:
    """A change no listener sees (a session FastRDB never bound): entries go stale."""
    async with maker() as session:
        await session.execute(update(User).values(name=name))
        await session.commit()


async def names(
    crud: FastRDB[User, UserCreate, UserUpdate, UserResponse],
    maker: async_sessionmaker[AsyncSession],
    client: redis.asyncio.Redis,
) -> list[str]:
    async with maker() as db:
        return [(await crud.get(db=db, redis=client, email=f"u{i}@x.io")).name for i in range(3)]


async def test_kept_whole_tables_and_everything_replay_on_the_test_redis(
    maker: async_sessionmaker[AsyncSession], redis_client: redis.asyncio.Redis
) -> None:
    """On the test Redis (a Redis Cluster in the cluster run): a table kept whole, then
    everything, is replayed by the next CRUD call, which then reads fresh values."""
    crud = FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:email:{email}"
    )
    async with maker() as db:
        db.add_all(new_user(f"u{i}@x.io", "A") for i in range(3))
        await db.commit()
    assert await names(crud, maker, redis_client) == ["A"] * 3  # filled
    health = health_of(redis_client)

    await rename_unseen(maker, "B")
    assert await names(crud, maker, redis_client) == ["A"] * 3, "stale: nothing dropped them"
    whole = Changes()
    whole.wipe(["users"])
    health.keep(whole)
    assert await names(crud, maker, redis_client) == ["B"] * 3
    assert health.pending is None

    await rename_unseen(maker, "C")
    coarse = Changes()
    for table in ("users", "items", "verses"):
        versions(coarse, table, 2)
    coarse.bound(1)
    assert coarse.scope() == "everything"
    health.keep(coarse)
    assert await names(crud, maker, redis_client) == ["C"] * 3
    assert health.pending is None
    assert await names(crud, maker, redis_client) == ["C"] * 3  # filled again
    assert await redis_client.exists("user:email:u0@x.io") == 1
