"""Fixtures: real databases (SQLite, PostgreSQL, MariaDB) and a real Redis or Redis Cluster.

``FASTRDB_TEST_DATABASES`` (comma separated, default ``sqlite,postgresql,mariadb``) chooses the
databases, ``FASTRDB_TEST_DB`` (default ``test``) the PostgreSQL and MariaDB database name, and
``FASTRDB_TEST_REDIS`` (default ``redis://127.0.0.1:6379/15``) the Redis database, which every
test flushes. ``FASTRDB_TEST_REDIS_CLUSTER=1`` runs the tests that take
``redis_client`` against a 3-master Redis Cluster that the session starts on free ports.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import structlog
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from fastrdb.cache.health import health_of
from tests.models import ALL_METADATA
from tests.servers import Proxy, RedisServer

REDIS_URL = os.environ.get("FASTRDB_TEST_REDIS", "redis://127.0.0.1:6379/15")
CLUSTER = os.environ.get("FASTRDB_TEST_REDIS_CLUSTER") == "1"
_CLUSTER_PORT = "FASTRDB_TEST_CLUSTER_PORT"  # set for child processes once the cluster is up


class AsyncTestCluster(redis.asyncio.cluster.RedisCluster):
    """Cluster client whose KEYS and FLUSHDB cover every primary, as on one Redis."""

    async def keys(self, pattern: Any = "*", **kwargs: Any) -> Any:
        return await super().keys(pattern, target_nodes=self.PRIMARIES, **kwargs)

    async def flushdb(self, *args: Any, **kwargs: Any) -> Any:
        return await super().flushdb(*args, target_nodes=self.PRIMARIES, **kwargs)


def async_redis_client() -> Any:
    """The asyncio client the tests use (a cluster client in the cluster run)."""
    port = os.environ.get(_CLUSTER_PORT)
    if port:
        return AsyncTestCluster(host="127.0.0.1", port=int(port))
    return redis.asyncio.Redis.from_url(REDIS_URL)


def sync_redis_client() -> Any:
    """The blocking client the tests use (a cluster client in the cluster run)."""
    port = os.environ.get(_CLUSTER_PORT)
    if port:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=int(port))
    return redis.Redis.from_url(REDIS_URL)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free port (one it may stop or cut off)."""
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
async def proxy(server: RedisServer) -> AsyncIterator[Proxy]:
    """A TCP proxy in front of ``server`` that the test can cut and restore."""
    proxy = await Proxy(server.port).start()
    yield proxy
    await proxy.cut()


@pytest.fixture(autouse=True)
def structlog_left_unconfigured() -> Iterator[None]:
    """Undo what a test leaves configured in structlog: ``capture_logs`` restores the
    processors through ``configure()``, which marks structlog configured, and FastRDB would then
    print every later test's events (debug included) to stdout, into the CLI's JSON output."""
    configured = structlog.is_configured()
    yield
    if not configured and structlog.is_configured():
        structlog.reset_defaults()


@pytest.fixture(scope="session", autouse=CLUSTER)
def redis_cluster() -> Iterator[None]:
    from tests.servers import RedisClusterServers

    servers = RedisClusterServers().start()
    os.environ[_CLUSTER_PORT] = str(servers.ports[0])
    yield
    del os.environ[_CLUSTER_PORT]
    servers.stop()


DB_NAME = os.environ.get("FASTRDB_TEST_DB", "test")

DATABASES = [
    name.strip()
    for name in os.environ.get("FASTRDB_TEST_DATABASES", "sqlite,postgresql,mariadb").split(",")
    if name.strip()
]


@dataclass(frozen=True)
class Database:
    name: str
    async_url: str
    sync_url: str


def _database(name: str, sqlite_path: Path) -> Database:
    if name == "sqlite":
        return Database(name, f"sqlite+aiosqlite:///{sqlite_path}", f"sqlite:///{sqlite_path}")
    if name == "postgresql":
        return Database(
            name,
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DB_NAME}",
            f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}",
        )
    if name == "mariadb":
        return Database(
            name,
            f"mysql+asyncmy://root@127.0.0.1:3306/{DB_NAME}",
            f"mysql+pymysql://root@127.0.0.1:3306/{DB_NAME}",
        )
    raise ValueError(f"unknown test database {name!r}")


_schemas_made: dict[str, Engine] = {}


@pytest.fixture(scope="session")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sqlite") / "fastrdb.db"


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, sqlite_path: Path) -> Database:
    """One real database, its tables created once per run and emptied before each test."""
    db = _database(request.param, sqlite_path)
    engine = _schemas_made.get(db.name)
    if engine is None:
        engine = create_engine(db.sync_url)
        for metadata in ALL_METADATA:
            metadata.drop_all(engine)
            metadata.create_all(engine)
        _schemas_made[db.name] = engine
    with engine.begin() as connection:
        for metadata in ALL_METADATA:
            for table in reversed(metadata.sorted_tables):
                connection.execute(table.delete())
    return db


@pytest.fixture
def sync_engine(database: Database) -> Iterator[Engine]:
    engine = create_engine(database.sync_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sync_maker(sync_engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(sync_engine)


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database.async_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def maker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions configured the way the seed guide configures them."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@pytest.fixture
async def db(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with maker() as session:
        yield session


@pytest.fixture
async def writer(
    engine: AsyncEngine, redis_client: redis.asyncio.Redis
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A listened session factory for plain ORM code (expire_on_commit left at its default)."""
    from fastrdb.events import listen

    maker = async_sessionmaker(engine)
    handle = listen(maker, redis_client)
    yield maker
    handle.remove()


@pytest.fixture
async def redis_client() -> AsyncIterator[redis.asyncio.Redis]:
    client = async_redis_client()
    await client.flushdb()
    yield client
    await client.aclose()
    assert_healthy(client)


def assert_healthy(client: Any) -> None:
    """Nothing went wrong between FastRDB and this client: no failed call, nothing pending."""
    health = health_of(client)
    assert health.errors == 0, f"a Redis call failed: {health.last_error}"
    assert health.pending is None, "an invalidation was not delivered"


@pytest.fixture
def sync_redis(redis_client: redis.asyncio.Redis) -> Iterator[redis.Redis]:
    client = sync_redis_client()
    yield client
    client.close()
    assert_healthy(client)
