"""Fixtures: real databases (SQLite, PostgreSQL, MariaDB) and a real Redis.

``FASTRDB_TEST_DATABASES`` (comma separated, default ``sqlite,postgresql,mariadb``) chooses the
databases; ``FASTRDB_TEST_REDIS`` (default ``redis://127.0.0.1:6379/15``) the Redis database,
which every test flushes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from tests.models import ALL_METADATA

REDIS_URL = os.environ.get("FASTRDB_TEST_REDIS", "redis://127.0.0.1:6379/15")
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
            "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
            "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        )
    if name == "mariadb":
        return Database(
            name,
            "mysql+asyncmy://root@127.0.0.1:3306/test",
            "mysql+pymysql://root@127.0.0.1:3306/test",
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
async def redis_client() -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def sync_redis(redis_client: redis.asyncio.Redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()
