"""Database and Redis URLs as the command line and :class:`Capture` accept them."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import make_url

from fastrdb.capture.mariadb import ServerAddress
from fastrdb.capture.source import CaptureSetupError
from fastrdb.errors import ConfigurationError

__all__ = ["async_database_url", "parse_database_url", "redis_from_url"]

ASYNC_DRIVERS = {
    "postgresql": "asyncpg",
    "mysql": "asyncmy",
    "mariadb": "asyncmy",
    "sqlite": "aiosqlite",
}
"""The asyncio driver a plain URL (or one naming a blocking driver) gets, per backend."""
_ASYNC_CAPABLE = frozenset({"asyncpg", "psycopg", "asyncmy", "aiomysql", "aiosqlite"})

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def parse_database_url(url: str) -> tuple[str, str | ServerAddress]:
    """``("postgresql", libpq URL)`` or ``("mariadb", address)`` for a plain or SQLAlchemy URL
    (``postgresql://``, ``postgresql+asyncpg://``, ``mysql://``, ``mariadb+asyncmy://``…)."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise CaptureSetupError("database", f"not a database URL ({exc})") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        plain = parsed.set(drivername="postgresql")
        return "postgresql", plain.render_as_string(hide_password=False)
    if backend in ("mysql", "mariadb"):
        return "mariadb", ServerAddress(
            host=parsed.host or "127.0.0.1",
            port=parsed.port or 3306,
            user=parsed.username or "root",
            password=parsed.password or "",
            database=parsed.database or "",
        )
    raise CaptureSetupError(
        "database",
        f"capture reads PostgreSQL's and MariaDB's logs; {backend!r} has none it can follow"
        " (SQLite is out of scope: use listen() there)",
    )


def async_database_url(url: str) -> str:
    """A SQLAlchemy asyncio URL for a plain one (``postgresql://``, ``mysql://``,
    ``mariadb://``, ``sqlite:///path``) or a SQLAlchemy URL, asyncio already
    (``postgresql+asyncpg://``, kept) or not (``mysql+pymysql://`` → ``mysql+asyncmy://``).
    Raises :class:`ConfigurationError` (argument ``database``)."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigurationError("database", f"not a database URL ({exc})") from None
    backend = parsed.get_backend_name()
    if backend not in ASYNC_DRIVERS:
        raise ConfigurationError(
            "database", f"{backend!r} is not one of {', '.join(sorted(ASYNC_DRIVERS))}"
        )
    _, _, driver = parsed.drivername.partition("+")
    if driver not in _ASYNC_CAPABLE:
        parsed = parsed.set(drivername=f"{backend}+{ASYNC_DRIVERS[backend]}")
    return parsed.render_as_string(hide_password=False)


def redis_from_url(url: str, *, timeout: float = 5.0) -> Any:
    """An asyncio client: ``redis://``, ``rediss://``, ``unix://``, or a Redis Cluster through
    ``redis+cluster://`` / ``rediss+cluster://`` (any one node's address)."""
    import redis.asyncio
    import redis.asyncio.cluster

    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return redis.asyncio.cluster.RedisCluster.from_url(
            f"{CLUSTER_SCHEMES[scheme]}://{rest}",
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    from fastrdb.capture.packing import pack_with_hiredis

    client = redis.asyncio.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    pack_with_hiredis(client)  # capture's deliveries name every key: packed in C
    return client


SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
