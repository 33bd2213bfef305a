"""Security: the least-privilege Redis users and database roles of docs/security.md run every
path (read from the page, so page and code cannot drift); a missing command is named, never
hung on; TLS clients get everything, the near cache included; no value reaches the logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.cluster
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.credentials import UsernamePasswordCredentialProvider
from sqlalchemy import Engine, String, create_engine, select, text, update
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from structlog.testing import capture_logs

import fastrdb
from fastrdb import FastRDB, Settings
from fastrdb.audit import Auditor, database_engine
from fastrdb.cache import scripts
from fastrdb.cache.health import health_of
from fastrdb.cache.near import literal_prefix
from fastrdb.capture import Capture
from fastrdb.cli import main as cli_main
from fastrdb.events import listen
from tests.conftest import CLUSTER, DATABASES
from tests.dbservers import MariaDBServer, PostgresServer
from tests.models import User, UserCreate, UserResponse, UserUpdate
from tests.servers import RedisClusterServers, RedisServer, RedisTLSServer

Redis = redis.asyncio.Redis

pytestmark = pytest.mark.skipif(CLUSTER, reason="these tests start their own Redis servers")

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "security.md").read_text()
PATIENT = Settings(redis_timeout=5.0)  # a loaded machine must not turn a slow reply into a failure
NEAR = Settings(redis_timeout=5.0, near_cache_size=16)


def acl_line(user: str, *, cluster: bool = False) -> list[str]:
    """The documented ``ACL SETUSER`` line of ``user`` (``on …``), or the one that adds what a
    Redis Cluster needs (``+…``), split into arguments."""
    start = f"ACL SETUSER {user} " + ("+" if cluster else "on ")
    lines = [line for line in PAGE.splitlines() if line.startswith(start)]
    assert len(lines) == 1, f"docs/security.md has no single line {start}…"
    return shlex.split(lines[0])


def sql_block(marker: str) -> list[str]:
    """The statements of the documented ```sql block that contains ``marker``."""
    blocks = [b for b in re.findall(r"```sql\n(.*?)```", PAGE, re.S) if marker in b]
    assert len(blocks) == 1, marker
    return [statement.strip() for statement in blocks[0].split(";") if statement.strip()]


def password_of(line: list[str]) -> str:
    return next(argument[1:] for argument in line if argument.startswith(">"))


PATTERNS = {"pattern": "user:email:{email}", "list_pattern": "user:page:{page}:limit:{limit}"}


def make_users(settings: Settings = PATIENT) -> FastRDB[User, UserCreate, UserUpdate, UserResponse]:
    return FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, **PATTERNS, settings=settings
    )


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (a bounded while, not a timed assertion) for ``condition``."""
    deadline = time.monotonic() + 20
    while not await condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


@dataclass
class AclRedis:
    """A redis-server of this module's own (ACLs are never set on the machine's Redis)."""

    server: RedisServer
    admin: Redis

    def url(self, line: list[str], db: int = 1) -> str:
        """A client URL for the user of ``line``, on database ``db`` (not 0: SELECT is used)."""
        return f"redis://{line[2]}:{password_of(line)}@127.0.0.1:{self.server.port}/{db}"

    async def create(self, line: list[str]) -> None:
        await self.admin.execute_command("ACL", "DELUSER", line[2])
        assert await self.admin.execute_command(*line) in (b"OK", "OK", True)


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
async def acl(acl_server: RedisServer) -> AsyncIterator[AclRedis]:
    admin = Redis(port=acl_server.port, db=1)  # the users' database
    await admin.flushall()
    await admin.script_flush()  # EVAL is exercised too: the scripts are not loaded yet
    await admin.execute_command("ACL", "LOG", "RESET")
    yield AclRedis(acl_server, admin)
    await admin.aclose()


@pytest.fixture
def async_maker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def add(crud: Any, db: AsyncSession, client: Redis) -> UserResponse:
    obj_in = UserCreate(email="a@x.io", name="A")
    created: UserResponse = await crud.create(db=db, redis=client, obj_in=obj_in, email="a@x.io")
    return created


async def name_of(crud: Any, maker: async_sessionmaker[AsyncSession], client: Redis) -> str:
    async with maker() as db:
        return str((await crud.get(db=db, redis=client, email="a@x.io")).name)


async def rename(maker: async_sessionmaker[AsyncSession], name: str) -> None:
    """Plain ORM code in a listened session: its commit drops the row's keys."""
    async with maker() as db:
        user = (await db.execute(select(User).where(User.email == "a@x.io"))).scalar_one()
        user.name = name
        await db.commit()


async def a_near_hit(crud: Any, maker: async_sessionmaker[AsyncSession], client: Redis) -> None:
    """Read until a get is served from the near cache (its tracking is set up, its entry
    stored): a store is refused while an invalidation since the read may be pending."""

    async def hit() -> bool:
        before = crud.stats()["near_hits"]
        await name_of(crud, maker, client)
        return bool(crud.stats()["near_hits"] > before)

    await eventually(hit, "a near hit")


async def tracking_reaches(
    crud: Any, maker: async_sessionmaker[AsyncSession], client: Redis, admin: Redis
) -> None:
    """Another program changes the cached row's entry in Redis: the near entry is dropped by
    the tracking message (nothing in this process knows), and the next get reads Redis."""
    raw = await admin.get("user:email:a@x.io")
    assert raw is not None
    changed = raw.replace(b'"name":"', b'"name":"Other')
    await admin.set("user:email:a@x.io", changed)

    async def sees_it() -> bool:
        return (await name_of(crud, maker, client)).startswith("Other")

    await eventually(sees_it, "the tracking message dropped the near entry")


async def run_every_path(
    maker: async_sessionmaker[AsyncSession],
    sync_maker: sessionmaker[Session],
    client: Redis,
    worker_client: redis.Redis,
    admin: Redis,
) -> FastRDB[User, UserCreate, UserUpdate, UserResponse]:
    """CRUD, a listened async commit, a worker's listened sync commit, the near cache."""
    crud = make_users(NEAR)
    app = listen(maker, client, settings=PATIENT)
    worker = listen(sync_maker, worker_client, settings=PATIENT)
    try:
        async with maker() as db:
            assert (await add(crud, db, client)).name == "A"
        async with maker() as db:
            assert len(await crud.get_multi(db=db, redis=client, limit=10, page=1)) == 1
            assert await crud.count(db=db, redis=client) == 1
        assert await name_of(crud, maker, client) == "A"
        assert await admin.exists("user:email:a@x.io", "user:page:1:limit:10") == 2
        await rename(maker, "B")
        assert await admin.exists("user:email:a@x.io", "user:page:1:limit:10") == 0
        assert await name_of(crud, maker, client) == "B"
        with sync_maker() as session:
            session.execute(update(User).where(User.email == "a@x.io").values(name="C"))
            session.commit()
        assert await name_of(crud, maker, client) == "C"
        await a_near_hit(crud, maker, client)
        await tracking_reaches(crud, maker, client, admin)
        async with maker() as db:
            await crud.delete(db=db, redis=client, email="a@x.io")
    finally:
        app.remove()
        worker.remove()
    return crud


def healthy(client: Any) -> None:
    health = health_of(client)
    assert health.errors == 0, f"a Redis call failed: {health.last_error}"
    assert health.pending is None, "an invalidation was not delivered"


def test_the_documented_key_patterns_follow_the_rule_on_the_page() -> None:
    """The example line's key patterns are exactly what the page's rule gives for the
    patterns these tests use (`~P*`, `~{P*` per literal prefix, `~N:*`, `~{N:*`)."""
    prefixes = {literal_prefix(text) for text in PATTERNS.values()}
    prefixes.add(f"{PATIENT.namespace}:")
    for user in ("fastrdb_app", "fastrdb_capture", "fastrdb_admin"):
        globs = [argument[1:] for argument in acl_line(user) if argument.startswith("~")]
        for prefix in prefixes:
            for key in (prefix + "x", "{" + prefix + "x}:lease"):
                assert any(re.fullmatch(glob.replace("*", ".*"), key) for glob in globs), key
        assert len(globs) == 4, "one pair for user:, one for fastrdb:"


def granted_by(line: list[str]) -> set[str]:
    """The commands a line grants, upper case (``+client|id`` → ``CLIENT|ID``)."""
    return {argument[1:].upper() for argument in line if argument.startswith("+")}


def test_the_documented_lines_grant_every_command_the_scripts_call() -> None:
    """A command a Lua script calls is checked against the user's ACL like a direct call: the
    app's line grants what every script calls, capture's what its scripts call."""
    assert {"EVALSHA", "EVAL"} <= granted_by(acl_line("fastrdb_app"))
    for script in scripts.ALL:
        assert set(script.calls) <= granted_by(acl_line("fastrdb_app")), script.name
    for script in (scripts.INVALIDATE, scripts.DRAIN, scripts.DROP):
        assert set(script.calls) <= granted_by(acl_line("fastrdb_capture")), script.name


# Client methods that send no command of their own, and methods named otherwise than theirs.
NOT_COMMANDS = {
    "aclose",
    "call",
    "execute",
    "execute_pipeline",
    "get_node_from_key",
    "get_primaries",
    "get_redis_connection",
    "initialize",
    "keyslot",
    "pipeline",
}
RENAMED = {"sscan_iter": "SSCAN", "config_get": "CONFIG|GET"}
RECEIVER = r"\b(?:client|redis|pipe|cluster|node|self\._client|self\._redis|self\.redis)"


def test_every_redis_command_in_the_code_is_on_the_page() -> None:
    """Every Redis command FastRDB's code sends (client methods, raw commands) is granted by
    a documented ACL line, or named on the page where a setting needs it (`+wait`) or where
    it is said not to be needed (`CONFIG GET`): a new call without its ACL fails here."""
    sent: dict[str, str] = {}
    for path in sorted((ROOT / "fastrdb").rglob("*.py")):
        source = path.read_text()
        for method in re.findall(RECEIVER + r"\.([a-z_]+)\(", source):
            if method not in NOT_COMMANDS:
                sent.setdefault(RENAMED.get(method, method.upper()), path.name)
        for raw in re.findall(r'(?:PipelineCommand\(\d+, |execute_command\()"([A-Z]+)"', source):
            sent.setdefault(raw, path.name)
    granted: set[str] = set()
    for line in PAGE.splitlines():
        if line.startswith("ACL SETUSER "):
            granted |= granted_by(shlex.split(line))
    named = {"WAIT": "`+wait`", "CONFIG|GET": "`CONFIG GET`"}
    missing = {
        command: where
        for command, where in sent.items()
        if command not in granted and named.get(command, "\0") not in PAGE
    }
    assert not missing, f"sent by FastRDB, on no line of docs/security.md: {missing}"
    assert {"GET", "EVALSHA", "SCAN", "SSCAN", "WAIT"} <= set(sent)  # the scan sees the code


async def test_the_documented_app_user_runs_crud_events_and_the_near_cache(
    acl: AclRedis, async_maker: async_sessionmaker[AsyncSession], sync_maker: sessionmaker[Session]
) -> None:
    """As `fastrdb_app` (its line read from docs/security.md): every CRUD method, a listened
    async commit, a worker's sync commit and the near cache, with no refusal in ACL LOG."""
    line = acl_line("fastrdb_app")
    await acl.create(line)
    client = Redis.from_url(acl.url(line))
    worker_client = redis.Redis.from_url(acl.url(line))
    try:
        with capture_logs() as logs:
            crud = await run_every_path(async_maker, sync_maker, client, worker_client, acl.admin)
        assert crud.stats()["near_hits"] > 0
        assert crud.stats()["fills"] > 0
        healthy(client)
        healthy(worker_client)
        assert await acl.admin.execute_command("ACL", "LOG") == []
        assert not [entry for entry in logs if entry["event"].startswith("redis_")], logs
    finally:
        await client.aclose()
        worker_client.close()


async def test_the_documented_admin_user_runs_stats_and_flush(
    acl: AclRedis,
    async_maker: async_sessionmaker[AsyncSession],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As `fastrdb_admin`: `fastrdb stats` names the table and its registries, `fastrdb flush`
    drops every entry of it; no refusal in ACL LOG."""
    app_line, admin_line = acl_line("fastrdb_app"), acl_line("fastrdb_admin")
    await acl.create(app_line)
    await acl.create(admin_line)
    client = Redis.from_url(acl.url(app_line))
    crud = make_users()
    try:
        async with async_maker() as db:
            await add(crud, db, client)
            await crud.get_multi(db=db, redis=client, limit=10, page=1)
            await crud.count(db=db, redis=client)
        stats = ["stats", "--redis", acl.url(admin_line), "--json"]
        capsys.readouterr()  # only the command's output is read below
        with capture_logs():  # FastRDB's events stay off stdout (structlog may be configured)
            assert await asyncio.to_thread(cli_main, stats) == 0
        document = json.loads(capsys.readouterr().out)
        assert [table["table"] for table in document["tables"]] == ["users"]
        assert document["tables"][0]["registries"]["lists"]["members"] == 2  # page and count
        flush = ["flush", "--redis", acl.url(admin_line), "--table", "users", "--yes"]
        assert await asyncio.to_thread(cli_main, flush) == 0
        left = {key.decode() for key in await acl.admin.keys("*")}
        assert left == {"fastrdb:schemes:users", "fastrdb:tables"}, left
        assert await acl.admin.execute_command("ACL", "LOG") == []
    finally:
        await client.aclose()


@pytest.mark.parametrize("database", DATABASES[:1], indirect=True)
async def test_the_documented_app_user_drops_a_whole_table(
    acl: AclRedis, async_maker: async_sessionmaker[AsyncSession]
) -> None:
    """As `fastrdb_app`: invalidate_all (the sweep that also replays a table kept whole after a
    long outage, `max_pending`) SCANs and drops the table's entries, with no refusal."""
    line = acl_line("fastrdb_app")
    await acl.create(line)
    client = Redis.from_url(acl.url(line))
    crud = make_users()
    try:
        async with async_maker() as db:
            await add(crud, db, client)
        assert await name_of(crud, async_maker, client) == "A"
        assert await acl.admin.exists("user:email:a@x.io") == 1
        await crud.invalidate_all(redis=client)
        assert await acl.admin.exists("user:email:a@x.io") == 0
        healthy(client)
        assert await acl.admin.execute_command("ACL", "LOG") == []
    finally:
        await client.aclose()


@pytest.mark.parametrize("database", DATABASES[:1], indirect=True)
async def test_a_user_without_scan_keeps_the_whole_table_and_reads_the_database(
    acl: AclRedis, async_maker: async_sessionmaker[AsyncSession]
) -> None:
    """The app line less +scan: a table sweep is refused (named), kept for replay, and until
    then reads go to the database: nothing stale, nothing raised."""
    line = [argument for argument in acl_line("fastrdb_app") if argument != "+scan"]
    assert len(line) == len(acl_line("fastrdb_app")) - 1
    await acl.create(line)
    client = Redis.from_url(acl.url(line))
    crud = make_users()
    try:
        async with async_maker() as db:
            await add(crud, db, client)
        with capture_logs() as logs:
            await crud.invalidate_all(redis=client)
            async with async_maker() as db:  # a change no session sees, then a read
                await db.execute(update(User).values(name="Z"))
                await db.commit()
            assert await name_of(crud, async_maker, client) == "Z"
        assert any(names(entry, "command", "SCAN") for entry in logs), logs
        assert fastrdb.health(client).pending_scope == "tables"
        assert not fastrdb.health(client).serving
    finally:
        await client.aclose()


async def tracking_user(crud: Any, client: Redis, admin: Redis) -> str:
    """The Redis user the near cache's own tracking connection is authenticated as."""
    tracker = crud._near.of(client).tracker
    assert tracker.up and tracker.client_id is not None
    listed = await admin.execute_command("CLIENT", "LIST", "ID", tracker.client_id)
    text = listed.decode() if isinstance(listed, bytes) else str(listed)
    return dict(part.split("=", 1) for part in text.split() if "=" in part)["user"]


@pytest.mark.parametrize("database", DATABASES[:1], indirect=True)
@pytest.mark.parametrize("how", ["url", "credential_provider"])
async def test_the_tracking_connection_authenticates_as_the_client_does(
    acl: AclRedis, async_maker: async_sessionmaker[AsyncSession], how: str
) -> None:
    """The near cache's tracking connection logs in as the client's own user, whether the
    client has a username and password or a credential provider."""
    line = acl_line("fastrdb_app")
    await acl.create(line)
    if how == "url":
        client = Redis.from_url(acl.url(line))
    else:
        provider = UsernamePasswordCredentialProvider(line[2], password_of(line))
        client = Redis(port=acl.server.port, db=1, credential_provider=provider)
    crud = make_users(NEAR)
    try:
        async with async_maker() as db:
            await add(crud, db, client)
        await a_near_hit(crud, async_maker, client)
        assert await tracking_user(crud, client, acl.admin) == line[2]
    finally:
        await client.aclose()


# Each needed part of the line, and what a user without it is told.
MISSING = [
    ("+get", "command", "GET"),
    ("+set", "command", "SET"),
    ("+del", "command", "DEL"),
    ("+sadd", "command", "SADD"),
    ("+scard", "command", "SCARD"),
    ("+sismember", "command", "SISMEMBER"),
    ("+smembers", "command", "SMEMBERS"),
    ("+evalsha", "command", "EVALSHA"),
    ("+eval", "command", "EVAL"),
    ("+select", "command", "SELECT"),
    ("+client|id", "command", "CLIENT|ID"),
    ("+client|tracking", "command", "CLIENT|TRACKING"),
    ("+subscribe", "command", "SUBSCRIBE"),
    ("~{user:*", "keys", ""),
    ("~fastrdb:*", "keys", ""),
    ("&__redis__:invalidate", "channel", ""),
]


def names(entry: dict[str, Any], refused: str, command: str) -> bool:
    """Whether a log entry is the refusal of ``command`` (or of keys or a channel)."""
    if entry["event"] != "redis_permission_denied" or entry["refused"] != refused:
        return False
    calls = str(entry.get("script_calls", "")).split(",")
    return not command or entry.get("command") == command or command in calls


@pytest.mark.parametrize("database", DATABASES[:1], indirect=True)
@pytest.mark.parametrize(("part", "refused", "command"), MISSING)
async def test_a_user_missing_one_part_is_told_which_and_crud_answers(
    acl: AclRedis,
    async_maker: async_sessionmaker[AsyncSession],
    part: str,
    refused: str,
    command: str,
) -> None:
    """The documented line less one part: every call still answers from the database, the
    listened commit returns, and an error names what was refused (no hang, no exception)."""
    line = [argument for argument in acl_line("fastrdb_app") if argument != part]
    assert len(line) == len(acl_line("fastrdb_app")) - 1
    await acl.create(line)
    client = Redis.from_url(acl.url(line))
    crud = make_users(NEAR)
    handle = listen(async_maker, client, settings=PATIENT)
    try:
        with capture_logs() as logs:
            async with asyncio.timeout(60):
                async with async_maker() as db:
                    await add(crud, db, client)
                for _ in range(2):
                    assert await name_of(crud, async_maker, client) == "A"
                await rename(async_maker, "B")
                for _ in range(2):
                    assert await name_of(crud, async_maker, client) == "B"

                async def told() -> bool:
                    return any(names(entry, refused, command) for entry in logs)

                await eventually(told, f"a redis_permission_denied naming {part}")
    finally:
        handle.remove()
        await client.aclose()


@pytest.mark.parametrize("database", DATABASES[:1], indirect=True)
async def test_a_user_without_info_is_warned_and_the_cache_is_used(
    acl: AclRedis, async_maker: async_sessionmaker[AsyncSession]
) -> None:
    """Without INFO (and CONFIG) the memory policy is unknown: a warning naming both."""
    line = [argument for argument in acl_line("fastrdb_app") if argument != "+info"]
    await acl.create(line)
    client = Redis.from_url(acl.url(line))
    crud = make_users()
    try:
        with capture_logs() as logs:
            async with async_maker() as db:
                await add(crud, db, client)
            assert await name_of(crud, async_maker, client) == "A"
        unknown = [entry for entry in logs if entry["event"] == "redis_memory_policy_unknown"]
        assert unknown and "INFO" in unknown[0]["reason"]
        assert crud.stats()["hits"] == 1
    finally:
        await client.aclose()


# -- TLS --


@pytest.fixture(scope="module")
def tls_server() -> Iterator[RedisTLSServer]:
    server = RedisTLSServer().start()
    yield server
    server.kill()


def tls_options(server: RedisTLSServer) -> dict[str, str]:
    """The client's TLS settings: the CA, and a client certificate (the server asks for one)."""
    certificates = server.certificates
    return {
        "ssl_ca_certs": str(certificates["ca"]),
        "ssl_certfile": str(certificates["cert"]),
        "ssl_keyfile": str(certificates["key"]),
    }


async def test_crud_events_and_the_near_cache_run_over_tls(
    tls_server: RedisTLSServer,
    async_maker: async_sessionmaker[AsyncSession],
    sync_maker: sessionmaker[Session],
) -> None:
    """Against a TLS-only redis-server that requires client certificates, over `rediss://`:
    CRUD, listened commits and the near cache, whose own tracking connection carries the
    client's TLS settings over (hits served in-process, another program's change seen)."""
    url = f"rediss://127.0.0.1:{tls_server.port}/0"
    client = Redis.from_url(url, **tls_options(tls_server))
    worker_client = redis.Redis.from_url(url, **tls_options(tls_server))
    admin = Redis.from_url(url, **tls_options(tls_server))
    await admin.flushall()
    try:
        crud = await run_every_path(async_maker, sync_maker, client, worker_client, admin)
        assert crud.stats()["near_hits"] > 0
        assert crud.stats()["near_invalidations"] > 0
        healthy(client)
        healthy(worker_client)
    finally:
        await client.aclose()
        await admin.aclose()
        worker_client.close()


async def test_the_tls_server_refuses_plain_and_certificate_less_clients(
    tls_server: RedisTLSServer,
) -> None:
    """The server speaks only TLS and asks for a client certificate: a redis:// client and a
    rediss:// client without a certificate cannot use it (so the test above proves that the
    near cache's own connection carries the TLS settings, certificate included)."""
    timeouts = {"socket_timeout": 2, "socket_connect_timeout": 2}
    plain = Redis(port=tls_server.port, **timeouts)
    bare = Redis.from_url(tls_server.url, **timeouts)
    for client in (plain, bare):
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            await client.ping()
        await client.aclose()


# -- no values in logs --

SECRET_EMAIL = "zq9.secret@example.org"
SECRET_NAME = "Zq9-Secret-Name"
SECRET_BIO = "Zq9-Secret-Bio"


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server this test may kill and start again."""
    server = RedisServer().start()
    yield server
    server.kill()


async def test_no_cached_value_or_key_reaches_the_logs(
    own_server: RedisServer, async_maker: async_sessionmaker[AsyncSession]
) -> None:
    """With structlog capturing every event (debug included): CRUD, a listened commit, the
    near cache, a refused command, Redis down and back. No event holds a row's value or key."""
    url = own_server.url
    client = Redis.from_url(url)
    admin = Redis.from_url(url)
    crud = make_users(Settings(near_cache_size=16))
    handle = listen(async_maker, client, settings=PATIENT)
    try:
        with capture_logs() as logs:
            async with async_maker() as db:
                await crud.create(
                    db=db,
                    redis=client,
                    obj_in=UserCreate(email=SECRET_EMAIL, name=SECRET_NAME, bio=SECRET_BIO),
                    email=SECRET_EMAIL,
                )
            for _ in range(3):
                async with async_maker() as db:
                    await crud.get(db=db, redis=client, email=SECRET_EMAIL)
                    await crud.get_multi(db=db, redis=client, limit=10, page=1)
                    await crud.count(db=db, redis=client)
            await admin.set(f"user:email:{SECRET_EMAIL}", b'{"name": "' + SECRET_NAME.encode())
            async with async_maker() as db:  # a corrupt entry: cache_corrupt
                await crud.get(db=db, redis=client, email=SECRET_EMAIL)
            async with async_maker() as db:
                await crud.update(
                    db=db, redis=client, obj_in=UserUpdate(bio=SECRET_BIO + "2"), email=SECRET_EMAIL
                )
            # A user that may not read entries nor take leases.
            line = [a for a in acl_line("fastrdb_app") if a not in ("+get", "~{user:*")]
            line[2] = "fastrdb_refused"
            await admin.execute_command(*line)
            refused = Redis.from_url(
                f"redis://fastrdb_refused:{password_of(line)}@127.0.0.1:{own_server.port}/0"
            )
            async with async_maker() as db:
                await crud.get(db=db, redis=refused, email=SECRET_EMAIL)
            await refused.aclose()
            # Redis down: reads from the database, a commit's invalidation kept; then back.
            own_server.kill()
            for _ in range(6):
                async with async_maker() as db:
                    await crud.get(db=db, redis=client, email=SECRET_EMAIL)
            await rename_secret(async_maker, SECRET_NAME + "2")
            own_server.start()
            await asyncio.sleep(crud.settings.breaker_cooldown)
            for _ in range(3):
                async with async_maker() as db:
                    await crud.get(db=db, redis=client, email=SECRET_EMAIL)
    finally:
        handle.remove()
        await client.aclose()
        await admin.aclose()
    events = {entry["event"] for entry in logs}
    for expected in ("cache_miss", "cache_corrupt", "redis_permission_denied", "redis_unavailable"):
        assert expected in events, (expected, sorted(events))
    for entry in logs:
        text_of_entry = repr(entry).lower()
        for secret in ("zq9", "secret@", "example.org"):
            assert secret not in text_of_entry, entry


async def rename_secret(maker: async_sessionmaker[AsyncSession], name: str) -> None:
    async with maker() as db:
        user = (await db.execute(select(User).where(User.email == SECRET_EMAIL))).scalar_one()
        user.name = name
        await db.commit()


# -- fastrdb capture as the documented users --


class CaptureBase(DeclarativeBase):
    pass


class Member(CaptureBase):
    """A row whose key holds a boolean: MariaDB logs it as 0/1, and capture needs the column's
    type (from information_schema) to name the key."""

    __tablename__ = "sec_members"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    active: Mapped[bool]
    name: Mapped[str] = mapped_column(String(50))


class MemberOut(BaseModel):
    id: int
    active: bool
    name: str


members = FastRDB[Member, MemberOut, MemberOut, MemberOut](
    Member,
    MemberOut,
    pattern="user:member:{active}:{id}",
    list_pattern="user:members:{page}:{limit}",
    settings=PATIENT,
)

CAPTURE_KINDS = [kind for kind in ("postgresql", "mariadb") if kind in DATABASES]


@dataclass
class AppDatabase:
    """The database ``app`` on a capture-ready server: the owner's URLs and the capture
    role's URL."""

    kind: str
    owner_sync_url: str
    owner_async_url: str
    capture_url: str


def _prepare(kind: str, server: PostgresServer | MariaDBServer) -> AppDatabase:
    port = server.port
    if kind == "postgresql":
        root = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres")
        with root.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("CREATE DATABASE app"))
            for statement in sql_block("REPLICATION PASSWORD"):
                connection.execute(text(statement))
        root.dispose()
        owner = f"postgres@127.0.0.1:{port}/app"
        capture = f"postgresql://fastrdb_capture:change-me@127.0.0.1:{port}/app"
        app = AppDatabase(
            kind, f"postgresql+psycopg://{owner}", f"postgresql+asyncpg://{owner}", capture
        )
    else:
        root = create_engine(f"mysql+pymysql://root@127.0.0.1:{port}/capture")
        with root.begin() as connection:
            connection.execute(text("CREATE DATABASE app"))
            for statement in sql_block("REPLICATION SLAVE"):
                connection.execute(text(statement))
        root.dispose()
        owner = f"root@127.0.0.1:{port}/app"
        capture = f"mysql://fastrdb_capture:change-me@127.0.0.1:{port}/app"
        app = AppDatabase(kind, f"mysql+pymysql://{owner}", f"mysql+asyncmy://{owner}", capture)
    engine: Engine = create_engine(app.owner_sync_url)
    CaptureBase.metadata.create_all(engine)
    if kind == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE sec_members REPLICA IDENTITY FULL"))
    engine.dispose()
    return app


@pytest.fixture(scope="module", params=CAPTURE_KINDS)
def app_database(request: pytest.FixtureRequest) -> Iterator[AppDatabase]:
    server = PostgresServer() if request.param == "postgresql" else MariaDBServer()
    server.start()
    try:
        yield _prepare(request.param, server)
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def capturing(url: str, client: Redis) -> AsyncIterator[Capture]:
    capture = Capture(url, client, poll_interval=0.005, max_backoff=0.2)
    task = asyncio.create_task(capture.run())
    try:
        async with asyncio.timeout(60):
            ready = asyncio.create_task(capture.sync())
            await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                ready.cancel()
                task.result()
        yield capture
    finally:
        capture.stop()
        async with asyncio.timeout(30):
            await task


@pytest.mark.slow
async def test_capture_runs_as_the_documented_redis_user_and_database_role(
    acl: AclRedis, app_database: AppDatabase
) -> None:
    """`fastrdb capture` as `fastrdb_capture` on Redis and as the role / user the page's SQL
    creates: a raw UPDATE (no session) drops the row's boolean-keyed entry and the pages."""
    app_line = acl_line("fastrdb_app")
    capture_line = acl_line("fastrdb_capture")
    await acl.create(app_line)
    await acl.create(capture_line)
    client = Redis.from_url(acl.url(app_line))
    capture_client = Redis.from_url(acl.url(capture_line))
    engine = create_async_engine(app_database.owner_async_url)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    try:
        async with maker() as db:
            await db.execute(text("DELETE FROM sec_members"))
            db.add(Member(id=1, active=True, name="a"))
            await db.commit()
        async with capturing(app_database.capture_url, capture_client) as capture:
            async with maker() as db:
                assert (await members.get(db=db, redis=client, active=True, id=1)).name == "a"
                await members.get_multi(db=db, redis=client, limit=10, page=1)
            keys = ("user:member:%true:1", "user:members:1:10")
            assert await acl.admin.exists(*keys) == 2
            async with maker() as db:  # text() SQL: only the log sees it
                await db.execute(text("UPDATE sec_members SET name = 'b' WHERE id = 1"))
                await db.commit()
            async with asyncio.timeout(30):
                await capture.sync()
            assert await acl.admin.exists(*keys) == 0
            async with maker() as db:
                assert (await members.get(db=db, redis=client, active=True, id=1)).name == "b"
            assert capture.stats.redis_failures == 0
            assert capture.stats.database_failures == 0
        source = capture._runner.source  # the lag query (every 10 s), as the role
        await source.open()
        try:
            assert "behind_bytes" in await source.backlog()
        finally:
            await source.close()
        assert await acl.admin.execute_command("ACL", "LOG") == []
        healthy(client)
    finally:
        await client.aclose()
        await capture_client.aclose()
        await engine.dispose()


@pytest.mark.slow
async def test_capture_without_a_command_says_which_and_stops_cleanly(
    acl: AclRedis, app_database: AppDatabase
) -> None:
    """`fastrdb_capture` less EVALSHA: capture names the refused command, keeps the change
    (nothing confirmed, it retries), and stops when asked (no hang)."""
    line = [argument for argument in acl_line("fastrdb_capture") if argument != "+evalsha"]
    await acl.create(line)
    capture_client = Redis.from_url(acl.url(line))
    engine = create_async_engine(app_database.owner_async_url)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    try:
        with capture_logs() as logs:
            async with capturing(app_database.capture_url, capture_client) as capture:
                async with maker() as db:
                    await db.execute(text("UPDATE sec_members SET name = 'c' WHERE id = 1"))
                    await db.commit()

                async def told() -> bool:
                    return any(names(entry, "command", "EVALSHA") for entry in logs)

                await eventually(told, "a redis_permission_denied naming EVALSHA")
                assert capture.stats.deliveries == 0
        denied = next(entry for entry in logs if entry["event"] == "redis_permission_denied")
        assert denied["operation"] == "capture_invalidate"
    finally:
        await capture_client.aclose()
        await engine.dispose()


@pytest.fixture(scope="module")
def acl_cluster() -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers().start()
    yield cluster
    cluster.stop()


@pytest.mark.slow
async def test_the_app_user_with_the_cluster_additions_runs_on_a_redis_cluster(
    acl_cluster: RedisClusterServers,
    async_maker: async_sessionmaker[AsyncSession],
    sync_maker: sessionmaker[Session],
) -> None:
    """The app's, the audit's and the admin's lines plus their cluster lines, on every node
    of a 3-master Redis Cluster: CRUD, a listened async commit, a worker's sync commit, an
    audit round and `fastrdb flush`, with no refusal on any node."""
    line = acl_line("fastrdb_app")
    for port in acl_cluster.ports:
        with redis.Redis(port=port) as node:
            node.flushall()
            for user in ("fastrdb_app", "fastrdb_audit", "fastrdb_admin"):
                node.execute_command("ACL", "DELUSER", user)
                node.execute_command(*acl_line(user))
                node.execute_command(*acl_line(user, cluster=True))
            node.execute_command("ACL", "LOG", "RESET")
    credentials = {"username": line[2], "password": password_of(line)}
    port = acl_cluster.ports[0]
    client = AsyncRedisCluster(host="127.0.0.1", port=port, **credentials)
    worker_client = redis.cluster.RedisCluster(host="127.0.0.1", port=port, **credentials)
    crud = make_users()
    app = listen(async_maker, client, settings=PATIENT)
    worker = listen(sync_maker, worker_client, settings=PATIENT)
    try:
        async with async_maker() as db:
            assert (await add(crud, db, client)).name == "A"
        async with async_maker() as db:
            assert len(await crud.get_multi(db=db, redis=client, limit=10, page=1)) == 1
            assert await crud.count(db=db, redis=client) == 1
        assert await name_of(crud, async_maker, client) == "A"
        await rename(async_maker, "B")
        assert await name_of(crud, async_maker, client) == "B"
        with sync_maker() as session:
            session.execute(update(User).where(User.email == "a@x.io").values(name="C"))
            session.commit()
        assert await name_of(crud, async_maker, client) == "C"
        assert crud.stats()["hits"] > 0
        healthy(client)
        healthy(worker_client)
        audit_password = password_of(acl_line("fastrdb_audit"))
        auditor = AsyncRedisCluster(
            host="127.0.0.1", port=port, username="fastrdb_audit", password=audit_password
        )
        engine = database_engine(str(async_maker.kw["bind"].url))
        try:
            found = await Auditor([crud], engine, auditor).round()
            assert (found.audited, found.stale) == (1, 0)  # the row (commits dropped the rest)
        finally:
            await auditor.aclose()
            await engine.dispose()
        admin_url = (
            f"redis+cluster://fastrdb_admin:{password_of(acl_line('fastrdb_admin'))}"
            f"@127.0.0.1:{port}"
        )
        flush = ["flush", "--redis", admin_url, "--table", "users", "--yes"]
        with capture_logs():
            assert await asyncio.to_thread(cli_main, flush) == 0
        with redis.cluster.RedisCluster(host="127.0.0.1", port=port) as root:
            assert root.exists("user:email:a@x.io") == 0
    finally:
        app.remove()
        worker.remove()
        await client.aclose()
        worker_client.close()
    for port in acl_cluster.ports:
        with redis.Redis(port=port) as node:
            assert node.execute_command("ACL", "LOG") == [], port


class TriggerBase(DeclarativeBase):
    pass


class Counted(TriggerBase):
    __tablename__ = "sec_counted"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    n: Mapped[int]


class CountedOut(BaseModel):
    id: int
    n: int


counted = FastRDB[Counted, BaseModel, BaseModel, CountedOut](
    Counted, CountedOut, pattern="counted:{n}", settings=PATIENT
)


@pytest.mark.slow
async def test_mariadb_user_without_the_trigger_privilege_reads_the_post_image_back(
    app_database: AppDatabase, redis_client: Redis
) -> None:
    """An application account without the TRIGGER privilege (SELECT, INSERT, UPDATE, DELETE,
    as docs/security.md's) writes a row whose BEFORE UPDATE trigger changes the value sent.
    MariaDB still lists the trigger to it (MySQL would not: FastRDB never computes there), so
    FastRDB reads the post-image back instead of computing it from the value sent, and the key
    of the stored value (a negative entry cached for it before) drops."""
    if app_database.kind != "mariadb":
        pytest.skip("a MariaDB account's view of triggers")
    root = create_engine(app_database.owner_sync_url)
    TriggerBase.metadata.create_all(root)
    with root.begin() as connection:
        for statement in (
            "DROP TRIGGER IF EXISTS sec_counted_shift",
            "CREATE TRIGGER sec_counted_shift BEFORE UPDATE ON sec_counted "
            "FOR EACH ROW SET NEW.n = NEW.n + 1000",
            "CREATE USER IF NOT EXISTS fastrdb_rw@'%' IDENTIFIED BY 'change-me'",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON app.* TO fastrdb_rw@'%'",
            "DELETE FROM sec_counted",
            "INSERT INTO sec_counted (id, n) VALUES (1, 1)",
        ):
            connection.execute(text(statement))
    root.dispose()
    port = app_database.owner_sync_url.split(":")[-1].split("/")[0]
    engine = create_async_engine(f"mysql+asyncmy://fastrdb_rw:change-me@127.0.0.1:{port}/app")
    maker = async_sessionmaker(engine, expire_on_commit=False)
    writer = async_sessionmaker(engine)
    handle = listen(writer, redis_client)
    try:
        async with maker() as db:
            with pytest.raises(NoResultFound):
                await counted.get(db=db, redis=redis_client, n=1005)  # a negative entry
        async with writer() as session:
            (await session.get_one(Counted, 1)).n = 5
            await session.commit()
        async with maker() as db:
            assert (await counted.get(db=db, redis=redis_client, n=1005)).id == 1
    finally:
        handle.remove()
        await engine.dispose()
