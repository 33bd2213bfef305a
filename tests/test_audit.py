"""fastrdb audit: sampled cached entries compared with the database, stale ones reported by key,
age and field names (never values), a write committed while comparing never reported."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fastrdb import FastRDB
from fastrdb.audit import Auditor, Round, database_engine, find_instances
from fastrdb.errors import ConfigurationError
from tests import audit_app
from tests.audit_app import items, users, verses
from tests.conftest import CLUSTER, DATABASES, REDIS_URL, Database
from tests.models import (
    Author,
    Book,
    BookCreate,
    BookOut,
    BookUpdate,
    ItemSchema,
    Tag,
    User,
    UserCreate,
    UserResponse,
    VerseSchema,
    book_tags,
)
from tests.processes import finish, start_interpreter
from tests.servers import RedisServer

Redis = redis.asyncio.Redis
INSTANCES = [users, items, verses]


def plain_url(database: Database) -> str:
    """The database's URL as an operator types it: no driver (sqlite:///…, postgresql://…)."""
    url = make_url(database.sync_url)
    return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=False)


def redis_url() -> str:
    port = os.environ.get("FASTRDB_TEST_CLUSTER_PORT")
    return f"redis+cluster://127.0.0.1:{port}" if port else REDIS_URL


@pytest.fixture
async def audit_engine(database: Database) -> AsyncIterator[AsyncEngine]:
    engine = database_engine(plain_url(database))
    yield engine
    await engine.dispose()


async def fill(maker: async_sessionmaker[AsyncSession], redis_client: Redis) -> None:
    """Rows, pages, a count and a negative entry of each instance, cached by the CRUD."""
    async with maker() as db:
        for n in range(3):
            email = f"u{n}@x.io"
            await users.create(
                db=db,
                redis=redis_client,
                obj_in=UserCreate(email=email, name=f"User {n}"),
                email=email,
            )
        for sku in ("a-1", "b 2"):
            await items.create(
                db=db, redis=redis_client, obj_in=ItemSchema(sku=sku, name=sku, price=5)
            )
        for verse in (1, 2):
            await verses.create(
                db=db,
                redis=redis_client,
                obj_in=VerseSchema(chapter_id=3, verse_id=verse, text="v"),
            )
        await users.get_multi(db=db, redis=redis_client, limit=10, page=1)
        await users.count(db=db, redis=redis_client)
        with pytest.raises(NoResultFound):
            await verses.get(db=db, redis=redis_client, chapter_id=9, verse_id=9)
        await verses.get_multi(db=db, redis=redis_client, chapter_id=3, limit=5, page=1)


async def poison(redis_client: Redis, key: str, change: Any) -> None:
    """Rewrite an entry in Redis, as a lost invalidation would have left it (TTL kept)."""
    raw = await redis_client.get(key)
    assert raw is not None, key
    await redis_client.set(key, change(raw), keepttl=True)


def renamed(raw: bytes) -> str:
    value = json.loads(raw)
    value["name"] = "Old name"
    return json.dumps(value)


def round_text(found: Round) -> str:
    return "\n".join(found.lines()) + json.dumps(found.as_dict())


async def audit_once(engine: AsyncEngine, redis_client: Redis, **options: Any) -> Round:
    options.setdefault("recheck_after", 0)
    return await Auditor(INSTANCES, engine, redis_client, **options).round()


async def test_a_consistent_cache_has_no_stale_entry(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis, audit_engine: AsyncEngine
) -> None:
    """Every row, page, count and negative entry the CRUD cached is audited and agrees."""
    await fill(maker, redis_client)
    found = await audit_once(audit_engine, redis_client)
    audited = {report.model: report.audited for report in found.reports}
    assert audited == {"User": 3 + 1 + 1, "Item": 2, "Verse": 2 + 1 + 1}
    assert found.stale == 0
    assert found.rate == 0.0
    assert all(report.changed == 0 and not report.not_audited for report in found.reports)


async def test_a_poisoned_entry_is_reported_by_key_age_and_field(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis, audit_engine: AsyncEngine
) -> None:
    """A row entry holding an old name is reported with its key, its age and the field name,
    and neither the cached nor the current value appears in the report."""
    await fill(maker, redis_client)
    await poison(redis_client, "user:email:u1@x.io", renamed)
    found = await audit_once(audit_engine, redis_client)
    [report] = [report for report in found.reports if report.stale]
    [finding] = report.stale
    assert (finding.key, finding.kind, finding.fields) == ("user:email:u1@x.io", "row", ("name",))
    assert finding.age is not None
    assert 0 <= finding.age <= users.exp
    assert found.stale == 1
    assert found.rate == pytest.approx(1 / found.audited)
    shown = round_text(found)
    assert "user:email:u1@x.io" in shown
    assert "Old name" not in shown
    assert "User 1" not in shown


async def test_stale_pages_counts_and_negatives_name_what_differs(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    audit_engine: AsyncEngine,
    engine: AsyncEngine,
) -> None:
    """A page names the row and field, a count and a row's existence are named too; a page
    filtered by a placeholder (chapter) is recovered from its key."""
    await fill(maker, redis_client)

    def second_renamed(raw: bytes) -> str:
        page = json.loads(raw)
        page[1]["name"] = "Old name"
        return json.dumps(page)

    await poison(redis_client, "user:page:1:limit:10", second_renamed)
    await poison(redis_client, "fastrdb:count:users", lambda raw: "7")
    await poison(redis_client, "item:a-1", lambda raw: "null")
    async with engine.begin() as connection:  # a write no session sees (no capture running)
        await connection.execute(text("DELETE FROM verses WHERE verse_id = 2"))
    found = await audit_once(audit_engine, redis_client)
    stale = {finding.key: finding.fields for report in found.reports for finding in report.stale}
    assert stale == {
        "user:page:1:limit:10": ("[1].name",),
        "fastrdb:count:users": ("<count>",),
        "item:a-1": ("<exists>",),
        "verse:3:2": ("<absent>",),
        "verse:chapter:3:page:1:limit:5": ("<length>",),
    }
    kinds = {finding.key: finding.kind for report in found.reports for finding in report.stale}
    assert kinds["item:a-1"] == "negative"
    assert kinds["user:page:1:limit:10"] == "list"
    assert kinds["fastrdb:count:users"] == "count"
    assert "Old name" not in round_text(found)


@pytest.mark.parametrize("stage", ["cached", "compared"])
async def test_a_write_committed_while_comparing_is_not_reported(
    stage: str,
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    audit_engine: AsyncEngine,
) -> None:
    """A rename committed through a listened session between the audit's read of the entry
    and its database read ("cached"), or between the first comparison and the second look
    ("compared", the entry differing already), is not staleness: the entry is looked at
    again, found dropped, and not reported."""
    await fill(maker, redis_client)
    key = "user:email:u1@x.io"
    if stage == "compared":
        await poison(redis_client, key, renamed)
    committed: list[str] = []

    async def rename(at: str, checked: str) -> None:
        if at == stage and checked == key and not committed:
            async with writer() as session:
                user = (
                    await session.execute(select(User).where(User.email == "u1@x.io"))
                ).scalar_one()
                user.name = "Renamed"
                await session.commit()
            committed.append(checked)

    auditor = Auditor(INSTANCES, audit_engine, redis_client, recheck_after=0, checkpoint=rename)
    found = await auditor.round()
    assert committed == [key]
    assert found.stale == 0
    assert sum(report.changed for report in found.reports) == 1


@pytest.mark.parametrize("recheck_after", [0.0, 3.0])
async def test_an_invalidation_still_on_its_way_is_waited_for(
    recheck_after: float,
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    audit_engine: AsyncEngine,
    engine: AsyncEngine,
) -> None:
    """A rename committed between the audit's read of the entry and its database read, whose
    invalidation lands half a second after the commit (a slow Redis), is not reported when
    the second look waits (recheck_after=3); without the wait (0, the invalidation landing
    only after the round) the entry is reported."""
    await fill(maker, redis_client)
    key = "user:email:u1@x.io"
    round_over = asyncio.Event()
    landed: list[asyncio.Task[Any]] = []

    async def invalidate_later() -> None:
        if recheck_after:
            await asyncio.sleep(0.5)
        else:
            await round_over.wait()
        await redis_client.delete(key)

    async def rename_slowly(at: str, checked: str) -> None:
        if at == "cached" and checked == key and not landed:
            async with engine.begin() as connection:  # committed; its invalidation: later
                await connection.execute(
                    text("UPDATE users SET name = 'Renamed' WHERE email = 'u1@x.io'")
                )
            landed.append(asyncio.create_task(invalidate_later()))

    auditor = Auditor(
        INSTANCES,
        audit_engine,
        redis_client,
        recheck_after=recheck_after,
        checkpoint=rename_slowly,
    )
    found = await auditor.round()
    round_over.set()
    await landed[0]
    reported = key in {f.key for r in found.reports for f in r.stale}
    assert reported == (not recheck_after)


async def test_rounds_during_listened_writes_and_reads_report_nothing(
    maker: async_sessionmaker[AsyncSession],
    writer: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    audit_engine: AsyncEngine,
) -> None:
    """Audit rounds running while listened sessions rename users and readers fill their
    entries again find entries that changed while compared, never a stale one: every write
    drops what it makes stale before its commit returns."""
    await fill(maker, redis_client)
    emails = [f"u{n}@x.io" for n in range(3)]
    done = asyncio.Event()

    async def write() -> None:
        for step in range(40):
            async with writer() as session:
                email = emails[step % 3]
                user = (await session.execute(select(User).where(User.email == email))).scalar_one()
                user.name = f"Name {step}"
                await session.commit()
            await asyncio.sleep(0)
        done.set()

    async def read() -> None:
        while not done.is_set():
            async with maker() as db:
                for email in emails:
                    await users.get(db=db, redis=redis_client, email=email)
                await users.get_multi(db=db, redis=redis_client, limit=10, page=1)

    auditor = Auditor(INSTANCES, audit_engine, redis_client, recheck_after=0.05)
    rounds: list[Round] = []

    async def audit() -> None:
        while not done.is_set() or not rounds:
            rounds.append(await auditor.round())

    async with asyncio.timeout(120):
        await asyncio.gather(write(), read(), audit())
    assert sum(found.audited for found in rounds) > 0
    assert [f.key for found in rounds for r in found.reports for f in r.stale] == []


async def test_an_entry_that_stays_stale_is_reported_in_a_later_round(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    audit_engine: AsyncEngine,
    engine: AsyncEngine,
) -> None:
    """A row changed between the first comparison and the second look is not reported in that
    round; the next round, with nothing changing, reports the entry that stayed stale."""
    await fill(maker, redis_client)
    key = "user:email:u1@x.io"
    await poison(redis_client, key, renamed)
    changed: list[str] = []

    async def write_unseen(at: str, checked: str) -> None:
        if at == "compared" and not changed:
            async with engine.begin() as connection:  # no listener: the entry stays
                await connection.execute(text("UPDATE users SET bio = 'b' WHERE email = 'u1@x.io'"))
            changed.append(checked)

    auditor = Auditor(
        INSTANCES, audit_engine, redis_client, recheck_after=0, checkpoint=write_unseen
    )
    first = await auditor.round()
    assert changed == [key]
    assert key not in {f.key for r in first.reports for f in r.stale}
    second = await auditor.round()
    stale = {f.key: f.fields for r in second.reports for f in r.stale}
    # The unseen write left the page stale too (no capture runs here).
    assert stale == {key: ("name", "bio"), "user:page:1:limit:10": ("[1].bio",)}


async def test_an_entry_embedding_a_renamed_row_names_the_nested_field(
    maker: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    audit_engine: AsyncEngine,
    engine: AsyncEngine,
) -> None:
    """A book entry that embeds its author (a nested response schema) is read again with what
    it embeds: an author renamed by a write nobody saw shows as author.name, in the row and in
    the page."""
    books = FastRDB[Book, BookCreate, BookUpdate, BookOut](
        Book, BookOut, pattern="book:{id}", list_pattern="books:{page}:{limit}"
    )
    async with maker() as session:
        session.add_all([Author(id=1, name="Ann"), Tag(id=1, label="sf")])
        await session.flush()
        session.add(Book(id=1, title="Dune", author_id=1))
        await session.flush()
        await session.execute(insert(book_tags).values(book_id=1, tag_id=1))
        await session.commit()
    async with maker() as db:
        await books.get(db=db, redis=redis_client, id=1)
        await books.get_multi(db=db, redis=redis_client, limit=5, page=1)
    auditor = Auditor([books], audit_engine, redis_client, recheck_after=0)
    found = await auditor.round()
    assert (found.audited, found.stale) == (2, 0)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE authors SET name = 'Bea' WHERE id = 1"))
    found = await auditor.round()
    stale = {finding.key: finding.fields for finding in found.reports[0].stale}
    assert stale == {"book:1": ("author.name",), "books:1:5": ("[0].author.name",)}


async def test_keys_with_a_digest_are_not_audited(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis, audit_engine: AsyncEngine
) -> None:
    """A key whose extra filters or ordering are hashed into a digest names no query the audit
    could read again: it is counted as not audited, never guessed (a filtered count is not
    sampled at all: the plain count entry is read by its name, no scan looks for others)."""
    await fill(maker, redis_client)
    async with maker() as db:
        await users.get(db=db, redis=redis_client, email="u1@x.io", name="User 1")
        await users.get_multi(db=db, redis=redis_client, limit=10, page=1, order_by="name")
        await users.count(db=db, redis=redis_client, name="User 1")
    found = await audit_once(audit_engine, redis_client)
    [report] = [report for report in found.reports if report.model == "User"]
    assert report.not_audited == {"digest": 2}
    assert report.audited == 5
    assert found.stale == 0


async def test_a_round_samples_at_most_n_entries_per_instance(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis, audit_engine: AsyncEngine
) -> None:
    """--sample N bounds each instance's entries in a round, and later rounds go on to other
    entries: three rounds of 5 cover all 12 cached rows."""
    keys = {f"item:s{n}" for n in range(12)}
    async with maker() as db:
        for n in range(12):
            sku = f"s{n}"
            await items.create(
                db=db, redis=redis_client, obj_in=ItemSchema(sku=sku, name=sku, price=n)
            )
    seen: list[set[str]] = []

    async def record(stage: str, key: str) -> None:
        if stage == "cached":
            seen[-1].add(key)

    auditor = Auditor(INSTANCES, audit_engine, redis_client, sample=5, checkpoint=record)
    for _ in range(3):
        seen.append(set())
        found = await auditor.round()
        assert {report.model: report.audited for report in found.reports} == {
            "User": 0,
            "Item": 5,
            "Verse": 0,
        }
    assert all(len(keys_of_round) == 5 for keys_of_round in seen)
    assert set().union(*seen) == keys


async def test_a_pattern_whose_keys_split_two_ways_is_named_not_guessed(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis, audit_engine: AsyncEngine
) -> None:
    """An instance whose keys cannot be split into values ({name}.{email}) has none of its
    rows audited, and the report names the pattern; its pages still are."""
    dotted = FastRDB[User, UserCreate, UserCreate, UserResponse](
        User, UserResponse, pattern="dotted:{name}.{email}", list_pattern="dotted:{page}:{limit}"
    )
    async with maker() as db:
        created = UserCreate(email="a@x.io", name="Ann")
        await dotted.create(db=db, redis=redis_client, obj_in=created, email="a@x.io", name="Ann")
        await dotted.get_multi(db=db, redis=redis_client, limit=5, page=1)
    assert await redis_client.get("dotted:Ann.a@x.io") is not None
    found = await Auditor([dotted], audit_engine, redis_client).round()
    [report] = found.reports
    assert report.undecodable == ("dotted:{name}.{email}",)
    assert (report.audited, found.stale) == (1, 0)
    assert "'dotted:{name}.{email}' is not decodable" in "\n".join(found.lines())


def test_instances_are_found_in_a_module_or_by_name() -> None:
    """MODULE gives every instance among its attributes, MODULE:ATTR one instance; anything
    else is a ConfigurationError naming --app."""
    assert find_instances("tests.audit_app") == [users, items, verses]
    assert find_instances("tests:audit_app") == [users, items, verses]
    assert find_instances("tests.audit_app:items") == [items]
    for spec in (
        "tests.no_such_module",
        "tests.audit_app:nope",
        "tests.audit_app:not_an_instance",
        "tests.processes",
    ):
        with pytest.raises(ConfigurationError) as raised:
            find_instances(spec)
        assert raised.value.argument == "app"
    assert audit_app.not_an_instance == "users"


async def run_cli(*args: str) -> tuple[int, str, str]:
    done = await finish(await start_interpreter("-m", "fastrdb", "audit", *args))
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
async def test_the_command_exits_0_1_or_2(
    database: Database, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """python -m fastrdb audit: 0 when the cache agrees, 1 naming key and field when an entry
    is stale (values never printed), 2 for a set-up mistake; --json gives the same."""
    await fill(maker, redis_client)
    common = ("--app", "tests.audit_app", "--database", plain_url(database), "--redis", redis_url())
    status, out, err = await run_cli(*common)
    assert (status, err) == (0, ""), out
    assert "round 1: audited 11, stale 0, rate 0.00%" in out

    await poison(redis_client, "item:b%202", renamed)
    status, out, err = await run_cli(*common, "--sample", "50")
    assert status == 1, err
    assert "stale row item:b%202 age " in out
    assert "fields name" in out
    assert "Old name" not in out + err

    status, out, _ = await run_cli(*common, "--json")
    assert status == 1
    found = json.loads(out)
    [entry] = [entry for instance in found["instances"] for entry in instance["entries"]]
    assert (entry["key"], entry["fields"]) == ("item:b%202", ["name"])
    assert (found["audited"], found["stale"]) == (11, 1)

    status, out, err = await run_cli(*common[:1], "tests.nothing_here", *common[2:])
    assert (status, out) == (2, "")
    assert "app: cannot import 'tests.nothing_here'" in err
    status, _, err = await run_cli(*common, "--sample", "0")
    assert status == 2
    assert "--sample: must be positive" in err
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()[1]
    status, _, err = await run_cli(*common[:5], f"redis://127.0.0.1:{closed}/0")
    assert status == 2
    assert "ConnectionError" in err


@pytest.mark.slow
async def test_interval_prints_a_rate_per_round_until_sigterm(
    database: Database, maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """--interval S: a round every S seconds, each with its rate, until SIGTERM; then a summary
    and exit status 0 (nothing stale)."""
    await fill(maker, redis_client)
    process = await start_interpreter(
        "-m", "fastrdb", "audit", "--app", "tests.audit_app", "--database", plain_url(database),
        "--redis", redis_url(), "--interval", "0.2", "--json",
    )  # fmt: skip
    assert process.stdout is not None
    rounds = []
    async with asyncio.timeout(60):
        while len(rounds) < 2:
            rounds.append(json.loads(await process.stdout.readline()))
    process.send_signal(signal.SIGTERM)
    done = await finish(process)
    assert done.returncode == 0, done.stderr
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["rate"] == 0.0 and r["audited"] == 11 for r in rounds)
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["rounds"] >= 2
    assert summary["stale"] == 0


SECURITY_PAGE = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(CLUSTER, reason="starts a Redis server of its own")
@pytest.mark.parametrize("database", DATABASES[:1], indirect=True)
async def test_the_documented_read_only_user_runs_the_audit(
    database: Database, maker: async_sessionmaker[AsyncSession]
) -> None:
    """As `fastrdb_audit` (its line read from docs/security.md: SCAN, GET, PTTL, read-only
    keys) the command audits every entry of the users instance and finds a stale one, with no
    refusal in ACL LOG; a user without PTTL gets exit status 2 and the refusal, not silence."""
    [line] = [
        shlex.split(text)
        for text in SECURITY_PAGE.splitlines()
        if text.startswith("ACL SETUSER fastrdb_audit on ")
    ]
    password = next(argument[1:] for argument in line if argument.startswith(">"))
    server = RedisServer().start()
    admin = Redis(port=server.port, db=1)
    try:
        assert await admin.execute_command(*line) in (b"OK", "OK", True)
        await fill(maker, admin)
        url = f"redis://fastrdb_audit:{password}@127.0.0.1:{server.port}/1"
        app = ("--app", "tests.audit_app:users", "--database", plain_url(database))
        common = (*app, "--redis", url)
        status, out, err = await run_cli(*common)
        assert (status, err) == (0, ""), out
        assert "round 1: audited 5, stale 0" in out
        await poison(admin, "user:email:u2@x.io", renamed)
        status, out, err = await run_cli(*common)
        assert status == 1, err
        assert "stale row user:email:u2@x.io" in out
        assert await admin.execute_command("ACL", "LOG") == []
        await admin.execute_command("ACL", "SETUSER", "fastrdb_audit", "-pttl")
        status, out, err = await run_cli(*common)
        assert status == 2
        assert "NoPermissionError" in err
    finally:
        await admin.aclose()
        server.kill()
