"""FastRDB: async CRUD over SQLAlchemy 2 with a Redis read-through cache kept coherent with
every ORM write (see ``fastrdb.events.listen``)."""

from __future__ import annotations

from fastrdb.crud import FastRDB
from fastrdb.errors import ConfigurationError, FastRDBError
from fastrdb.pagination import PaginatedResponse
from fastrdb.settings import Settings
from fastrdb.status import RedisHealth, health

__version__ = "0.1.0"
"""The version of this package (the one source: pyproject.toml reads it from here)."""

__all__ = [
    "ConfigurationError",
    "FastRDB",
    "FastRDBError",
    "PaginatedResponse",
    "RedisHealth",
    "Settings",
    "health",
]
