"""The peers bench/http measures the example app against: the same routes, written the way
users write them without FastRDB.

- ``plain``: SQLAlchemy only, every GET reads PostgreSQL (bench/http/plain.py).
- ``cashews_stale``: cashews ``@cache`` on the read, no invalidation (serves the old row after a
  PATCH until the entry expires).
- ``cashews_delete``: the same, plus ``cache.delete`` of the row's key after the commit (the
  usual fix; a read that missed before the commit can still put the old row back).

Each app reads DATABASE_URL and REDIS_URL, and uses the same session dependency, pool and
response model as examples/fastapi_app.py, so the difference is the caching.
"""

from __future__ import annotations

from cashews import Cache

from bench.http.plain import make_app, plain, read_row

__all__ = ["cashews_delete", "cashews_stale", "plain"]

_stale_cache = Cache()
cashews_stale = make_app(
    "cashews, no invalidation",
    _stale_cache(ttl="1h", key="user:{email}")(read_row),
    None,
    _stale_cache,
)

_delete_cache = Cache()


async def _drop(email: str) -> object:
    return await _delete_cache.delete(f"user:{email}")


cashews_delete = make_app(
    "cashews, delete after commit",
    _delete_cache(ttl="1h", key="user:{email}")(read_row),
    _drop,
    _delete_cache,
)
