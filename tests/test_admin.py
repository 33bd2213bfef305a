"""The operator's tools: ``fastrdb stats``, ``fastrdb flush``, ``FastRDB.invalidate`` and
``FastRDB.invalidate_all``, against real Redis and real databases."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import fastrdb
from fastrdb import FastRDB, FastRDBError, Settings
from fastrdb.cache.health import health_of
from fastrdb.cli import main
from tests.conftest import CLUSTER, REDIS_URL
from tests.interleave import PauseAfterSelect
from tests.models import Item, ItemSchema, ItemUpdate, Verse, VerseSchema, VerseUpdate
from tests.servers import Proxy, RedisServer

Redis = redis.asyncio.Redis

items = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](Item, ItemSchema, pattern="item:{sku}")
items_by_name = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](
    Item, ItemSchema, pattern="item:name:{name}"
)
cold_items = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](
    Item, ItemSchema, pattern="item:{sku}", settings=Settings(negative_exp=0)
)
"""Its reads join no registry: only the lease protects their fills."""
verses = FastRDB[Verse, VerseSchema, VerseUpdate, VerseSchema](
    Verse, VerseSchema, pattern="verse:{chapter_id}:{verse_id}"
)


def redis_url() -> str:
    """The URL the command line is given for the test Redis (or Redis Cluster)."""
    port = os.environ.get("FASTRDB_TEST_CLUSTER_PORT")
    return f"redis+cluster://127.0.0.1:{port}" if port else REDIS_URL


async def run_cli(*args: str) -> int:
    """``fastrdb.cli.main(args)``, in-process (in a thread: it runs its own event loop)."""
    return await asyncio.to_thread(main, list(args))


async def all_keys(client: Any) -> set[str]:
    return {key.decode() for key in await client.keys("*")}


async def seed(maker: async_sessionmaker[AsyncSession], client: Any) -> None:
    """Items a1, a2 and verse 1:1 in the database, and every kind of entry cached: rows by
    both item patterns, a page, a count, a negative entry, a verse."""
    async with maker() as db:
        for sku in ("a1", "a2"):
            await items.create(
                db=db, redis=client, obj_in=ItemSchema(sku=sku, name=f"n-{sku}", price=1)
            )
        db.add(Verse(chapter_id=1, verse_id=1, text="v"))
        await db.commit()
    async with maker() as db:
        await items.get(db=db, redis=client, sku="a1")
        await items_by_name.get(db=db, redis=client, name="n-a2")
        await items.get_multi(db=db, redis=client, limit=10, page=1)
        await items.count(db=db, redis=client)
        await items.get(db=db, redis=client, sku="a1", price=1)  # an extra-filter variant
        with pytest.raises(Exception, match="No row"):
            await items.get(db=db, redis=client, sku="zz")  # negative (not on MariaDB: collation)
        await verses.get(db=db, redis=client, chapter_id=1, verse_id=1)
        with pytest.raises(Exception, match="No row"):
            await verses.get(db=db, redis=client, chapter_id=9, verse_id=9)  # negative


async def rename_behind_fastrdb(engine: AsyncEngine, sku: str, name: str) -> None:
    """A write no session hook sees (raw SQL on a connection)."""
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE items SET name = :name WHERE sku = :sku"), {"name": name, "sku": sku}
        )


async def name_of(
    maker: async_sessionmaker[AsyncSession], client: Any, sku: str, crud: Any = items
) -> str:
    async with maker() as db:
        return (await crud.get(db=db, redis=client, sku=sku)).name


ITEM_ENTRIES = {"item:a1", "item:name:n-a2", "items:page:1:limit:10", "fastrdb:count:items"}


# -- fastrdb stats --


async def test_stats_json_reports_patterns_and_registries(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fastrdb stats --json` (in-process) names each table with its published patterns and
    the sizes of its registries: the page and the count, the negative entry."""
    await seed(maker, redis_client)
    assert await run_cli("stats", "--redis", redis_url(), "--json") == 0
    document = json.loads(capsys.readouterr().out)
    tables = {table["table"]: table for table in document["tables"]}
    assert set(tables) == {"items", "verses"}
    item = tables["items"]
    assert sorted(item["row_patterns"]) == ["item:name:{name}", "item:{sku}"]
    lists = item["registries"]["lists"]
    assert (lists["members"], lists["probed"], lists["present"], lists["counts"]) == (2, 2, 2, 1)
    assert lists["leased"] == 0
    verse = tables["verses"]
    assert verse["row_patterns"] == ["verse:{chapter_id}:{verse_id}"]
    negatives = verse["registries"]["negatives"]  # reads that may leave a negative entry
    assert (negatives["members"], negatives["present"]) == (2, 2)
    assert any("single-row keys" in line for line in document["not_counted"])
    assert document["health"]["breaker"] == "closed"
    assert document["health"]["serving"] is True
    assert document["error"] is None


async def test_stats_json_on_an_unreachable_redis_reports_the_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No Redis at the URL: exit 1, and the JSON's health names the last error."""
    server = RedisServer()  # a free port, nothing listening
    assert await run_cli("stats", "--redis", server.url, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["tables"] == []
    assert document["error"].startswith("ConnectionError")
    assert document["health"]["last_error"] == "ConnectionError"
    assert document["health"]["errors"] >= 1


async def test_stats_counts_a_lease_held_by_a_reader(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A page being filled shows as registered and leased, not present."""
    await seed(maker, redis_client)
    await items.invalidate(redis=redis_client, sku="a1")
    with PauseAfterSelect(engine, "items") as paused:
        async with maker() as db:
            reader = asyncio.create_task(items.get_multi(db=db, redis=redis_client, limit=10))
            await paused.selected.wait()
            code = await run_cli("stats", "--redis", redis_url(), "--json")
            paused.resume()
            await reader
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    (item,) = [table for table in document["tables"] if table["table"] == "items"]
    lists = item["registries"]["lists"]
    assert (lists["members"], lists["present"], lists["leased"]) == (1, 0, 1)


async def test_stats_runs_no_keys_or_scan(
    maker: async_sessionmaker[AsyncSession], capsys: pytest.CaptureFixture[str]
) -> None:
    """On a Redis of its own, `fastrdb stats` leaves no KEYS or SCAN in INFO commandstats."""
    server = RedisServer().start()
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        await seed(maker, client)
        await client.config_resetstat()
        assert await run_cli("stats", "--redis", server.url) == 0
        commands = await client.info("commandstats")
        assert "cmdstat_smembers" in commands
        assert not {"cmdstat_scan", "cmdstat_keys"} & set(commands)
        assert "items" in capsys.readouterr().out
    finally:
        await client.aclose()
        server.kill()


@pytest.mark.skipif(CLUSTER, reason="the subprocess leg runs on one Redis")
async def test_stats_as_a_subprocess_prints_a_table(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """`python -m fastrdb stats --redis URL` prints each table, its patterns and registries."""
    await seed(maker, redis_client)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "fastrdb", "stats", "--redis", REDIS_URL],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "item:{sku}" in done.stdout
    assert "verse:{chapter_id}:{verse_id}" in done.stdout
    assert "Not counted" in done.stdout


# -- fastrdb flush --


async def test_flush_drops_every_entry_of_the_table_and_nothing_else(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After `fastrdb flush --table items --yes`, no item entry, lease or registry is left,
    verses keep theirs, and the next read returns what the database holds."""
    await seed(maker, redis_client)
    await redis_client.set("{item:a2}:lease", "a-reader")  # a fill under way
    before = await all_keys(redis_client)
    assert before >= ITEM_ENTRIES
    await rename_behind_fastrdb(engine, "a1", "renamed")
    assert await run_cli("flush", "--redis", redis_url(), "--table", "items", "--yes") == 0
    assert "dropped" in capsys.readouterr().out
    left = await all_keys(redis_client)
    assert not {key for key in left if key.startswith(("item", "{item"))}
    assert not {key for key in left if key.startswith("fastrdb:") and "items" in key} - {
        "fastrdb:schemes:items"
    }
    assert {"verse:1:1", "verse:9:9"} <= left
    assert await name_of(maker, redis_client, "a1") == "renamed"


async def test_flush_without_yes_on_a_pipe_refuses(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """Without --yes and with no terminal to ask, flush says what it would drop, drops
    nothing and exits 2."""
    await seed(maker, redis_client)
    before = await all_keys(redis_client)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "fastrdb", "flush", "--redis", redis_url(), "--table", "items"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "would lose" in done.stdout and "item:*" in done.stdout
    assert "--yes" in done.stderr
    assert await all_keys(redis_client) == before


def flush_on_a_terminal(answer: str) -> subprocess.CompletedProcess[str]:
    """`python -m fastrdb flush --table items` with a terminal as standard input, answering."""
    master, terminal = pty.openpty()
    try:
        os.write(master, f"{answer}\n".encode())  # waits in the terminal until it is read
        return subprocess.run(
            [sys.executable, "-m", "fastrdb", "flush", "--redis", redis_url(), "--table", "items"],
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.close(terminal)
        os.close(master)


async def test_flush_on_a_terminal_asks_first(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """With a terminal to ask, flush asks: "n" drops nothing (exit 1), "y" drops (exit 0)."""
    await seed(maker, redis_client)
    before = await all_keys(redis_client)
    declined = await asyncio.to_thread(flush_on_a_terminal, "n")
    assert declined.returncode == 1, declined.stderr
    assert "Drop them? [y/N]" in declined.stdout
    assert await all_keys(redis_client) == before
    accepted = await asyncio.to_thread(flush_on_a_terminal, "y")
    assert accepted.returncode == 0, accepted.stderr
    assert not ITEM_ENTRIES & await all_keys(redis_client)


async def test_flush_racing_a_fill_leaves_no_old_value(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """A reader has read the old row and holds the lease; the row changes behind FastRDB;
    the flush runs; the reader's fill is refused, so the next read gets the new row."""
    await seed(maker, redis_client)
    await items.invalidate(redis=redis_client, sku="a1")
    with PauseAfterSelect(engine, "items") as paused:
        reader = asyncio.create_task(name_of(maker, redis_client, "a1", cold_items))
        await paused.selected.wait()
        await rename_behind_fastrdb(engine, "a1", "renamed")
        assert await run_cli("flush", "--redis", redis_url(), "--table", "items", "--yes") == 0
        paused.resume()
        assert await reader == "n-a1"  # what it read, served but not stored
    assert await redis_client.get("item:a1") is None
    assert await name_of(maker, redis_client, "a1") == "renamed"


class ScanPausing(redis.asyncio.Redis):
    """A client whose first batch of SCANs that looks for ``item:`` keys runs in two halves:
    the ``item:*`` SCANs, then (once ``resume`` is set) the others, each answered by Redis
    when it runs. It stands for a scan that visits the value's slot before the lease's: a
    fill can land in between, behind the cursor."""

    scanned: asyncio.Event
    resume: asyncio.Event

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        async def split(raise_on_error: bool = True) -> list[Any]:
            stack = list(pipe.command_stack)
            first = [i for i, (args, _) in enumerate(stack) if "item:*" in args]
            if not first or self.resume.is_set():
                return await execute(raise_on_error)
            replies: dict[int, Any] = {}
            for part in (first, [i for i in range(len(stack)) if i not in first]):
                if part is not first:
                    self.scanned.set()
                    await self.resume.wait()
                half = super(ScanPausing, self).pipeline(transaction=False)
                for index in part:
                    args, options = stack[index]
                    half.execute_command(*args, **options)
                replies.update(zip(part, await half.execute(raise_on_error), strict=True))
            pipe.command_stack.clear()
            return [replies[index] for index in range(len(stack))]

        pipe.execute = split
        return pipe


@pytest.mark.skipif(CLUSTER, reason="the pausing client is a single-Redis client")
async def test_a_fill_behind_the_first_scan_is_dropped_by_the_second(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """The reader's lease predates the wipe; its fill (of the old row) lands after the first
    pass scanned past its key and before it looked for leases: the second pass drops it."""
    await seed(maker, redis_client)
    await items.invalidate(redis=redis_client, sku="a1")
    patient = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](
        Item, ItemSchema, pattern="item:{sku}", settings=Settings(redis_timeout=60)
    )
    wiping = ScanPausing.from_url(REDIS_URL)
    wiping.scanned, wiping.resume = asyncio.Event(), asyncio.Event()
    try:
        with PauseAfterSelect(engine, "items") as paused:
            reader = asyncio.create_task(name_of(maker, redis_client, "a1", cold_items))
            await paused.selected.wait()
            await rename_behind_fastrdb(engine, "a1", "renamed")
            wipe = asyncio.create_task(patient.invalidate_all(redis=wiping))
            await wiping.scanned.wait()
            paused.resume()
            assert await reader == "n-a1"
            assert await redis_client.get("item:a1") is not None  # filled behind the cursor
            wiping.resume.set()
            await wipe
        assert await redis_client.get("item:a1") is None
        assert await name_of(maker, redis_client, "a1") == "renamed"
    finally:
        await wiping.aclose()


# -- Python: invalidate and invalidate_all --


async def test_invalidate_drops_the_row_pages_and_counts(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """After a change behind FastRDB, invalidate(sku=...) makes the row's keys by every
    pattern, its variants, the page and the count read the database; other rows stay cached."""
    await seed(maker, redis_client)
    await rename_behind_fastrdb(engine, "a1", "renamed")
    assert await name_of(maker, redis_client, "a1") == "n-a1"  # the cache doesn't know
    await items.invalidate(redis=redis_client, sku="a1", name="n-a1")
    left = await all_keys(redis_client)
    assert not {"item:a1", "items:page:1:limit:10"} & left
    assert not {key for key in left if key.startswith(("item:a1:~", "fastrdb:count:"))}
    assert "item:name:n-a2" in left
    assert await name_of(maker, redis_client, "a1") == "renamed"
    async with maker() as db:
        page = await items.get_multi(db=db, redis=redis_client, limit=10, page=1)
    assert [item.name for item in page] == ["renamed", "n-a2"]


async def test_invalidate_reads_missing_placeholders_from_the_database(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """items_by_name.invalidate(db=, sku=...) lacks {name}: the row is read, and its keys by
    every published pattern (item:{sku} and item:name:{name}) go."""
    await seed(maker, redis_client)
    async with maker() as db:
        await items_by_name.get(db=db, redis=redis_client, name="n-a1")
    async with maker() as db:
        await items_by_name.invalidate(redis=redis_client, db=db, sku="a1")
    left = await all_keys(redis_client)
    assert not {"item:a1", "item:name:n-a1"} & left
    assert "item:name:n-a2" in left


async def test_invalidate_names_a_missing_placeholder(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """Without db=, a placeholder the values don't give is a FastRDBError naming it; with a
    db= where no row matches, too; an unknown column is refused as in every call."""
    with pytest.raises(FastRDBError) as raised:
        await items_by_name.invalidate(redis=redis_client, sku="a1")
    assert raised.value.field == "name"
    async with maker() as db:
        with pytest.raises(FastRDBError) as raised:
            await items_by_name.invalidate(redis=redis_client, db=db, sku="nope")
    assert raised.value.field == "name"
    with pytest.raises(FastRDBError) as raised:
        await items.invalidate(redis=redis_client, sku="a1", colour="red")
    assert raised.value.field == "colour"
    async with maker() as db:
        with pytest.raises(FastRDBError) as raised:  # no values: not every row of the table
            await items.invalidate(redis=redis_client, db=db)
    assert raised.value.field == "sku"


async def test_invalidate_drops_only_the_pages_its_prefix_names(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """With invalidate_pattern_prefix, a verse of chapter 1 drops chapter 1's pages and keeps
    chapter 2's; the prefix's placeholder is required like the pattern's."""
    chapters = FastRDB[Verse, VerseSchema, VerseUpdate, VerseSchema](
        Verse,
        VerseSchema,
        pattern="verse:{chapter_id}:{verse_id}",
        list_pattern="verse:chapter_id:{chapter_id}:page:{page}:limit:{limit}",
        invalidate_pattern_prefix="verse:chapter_id:{chapter_id}:*",
    )
    async with maker() as db:
        db.add_all([Verse(chapter_id=c, verse_id=1, text="v") for c in (1, 2)])
        await db.commit()
    async with maker() as db:
        for chapter in (1, 2):
            await chapters.get_multi(db=db, redis=redis_client, chapter_id=chapter)
    pages = {"verse:chapter_id:1:page:1:limit:10", "verse:chapter_id:2:page:1:limit:10"}
    assert pages <= await all_keys(redis_client)
    await chapters.invalidate(redis=redis_client, chapter_id=1, verse_id=1)
    left = await all_keys(redis_client)
    assert "verse:chapter_id:1:page:1:limit:10" not in left
    assert "verse:chapter_id:2:page:1:limit:10" in left
    with pytest.raises(FastRDBError) as raised:
        await chapters.invalidate(redis=redis_client, verse_id=1)
    assert raised.value.field == "chapter_id"


async def test_invalidate_all_drops_every_row_of_the_table(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """invalidate_all: every item entry goes (any value), verses stay; reads are fresh."""
    await seed(maker, redis_client)
    await rename_behind_fastrdb(engine, "a2", "renamed")
    await items.invalidate_all(redis=redis_client)
    left = await all_keys(redis_client)
    assert not ITEM_ENTRIES & left
    assert not {key for key in left if key.startswith(("item", "{item"))}
    assert {"verse:1:1", "verse:9:9"} <= left
    async with maker() as db:
        assert (await items_by_name.get(db=db, redis=redis_client, name="renamed")).sku == "a2"


@pytest.fixture
async def cut_redis() -> AsyncIterator[tuple[Any, Proxy]]:
    """A Redis of its own behind a proxy the test can cut, and a client through the proxy."""
    server = RedisServer().start()
    proxy = await Proxy(server.port).start()
    client = redis.asyncio.Redis(host="127.0.0.1", port=proxy.port)
    yield client, proxy
    await client.aclose()
    await proxy.cut()
    server.kill()


@pytest.mark.skipif(CLUSTER, reason="the proxy fronts one Redis")
async def test_invalidate_all_during_an_outage_is_kept_and_replayed(
    engine: AsyncEngine,
    maker: async_sessionmaker[AsyncSession],
    cut_redis: tuple[Any, Proxy],
) -> None:
    """Redis is cut: invalidate_all does not raise, is kept (reads bypass the cache), and is
    replayed whole once Redis is back: no item entry cached before survives."""
    client, proxy = cut_redis
    settings = Settings(redis_timeout=0.5, breaker_cooldown=0.05)
    crud = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](
        Item, ItemSchema, pattern="item:{sku}", settings=settings
    )
    health = health_of(client, settings)
    async with maker() as db:
        await crud.create(db=db, redis=client, obj_in=ItemSchema(sku="a1", name="n", price=1))
    async with maker() as db:
        await crud.get(db=db, redis=client, sku="a1")
    await rename_behind_fastrdb(engine, "a1", "renamed")
    await proxy.cut()
    await crud.invalidate_all(redis=client)  # does not raise
    assert health.pending is not None
    assert fastrdb.health(client).pending_scope == "tables"
    async with maker() as db:
        assert (await crud.get(db=db, redis=client, sku="a1")).name == "renamed"  # bypassed
    await proxy.restore()
    for _ in range(200):
        async with maker() as db:
            name = (await crud.get(db=db, redis=client, sku="a1")).name
        assert name == "renamed"
        if health.pending is None:
            break
        await asyncio.sleep(0.05)
    assert health.pending is None
    raw = await client.get("item:a1")
    assert raw is None or json.loads(raw)["name"] == "renamed"
