"""FastRDB: async CRUD over SQLAlchemy 2 with a Redis read-through cache kept coherent with
every ORM write (see ``fastrdb.events.listen``)."""

from __future__ import annotations

from fastrdb.crud import FastRDB
from fastrdb.errors import FastRDBError
from fastrdb.pagination import PaginatedResponse
from fastrdb.settings import Settings

__all__ = [
    "FastRDB",
    "FastRDBError",
    "PaginatedResponse",
    "Settings",
]
