"""Sample keys matching a few globs with ``SCAN … MATCH``, never ``KEYS``, resuming each glob's
cursors from one round to the next (on one Redis, or on every primary of a Redis Cluster)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import ResponseError

from fastrdb._types import AsyncRedis, Raw
from fastrdb.cache.store import is_cluster
from fastrdb.keys import glob_escape

__all__ = ["SCAN_COUNT", "Sampler", "glob_prefix", "read_entry"]

SCAN_COUNT = 1000
"""The ``COUNT`` hint of each ``SCAN`` call: how many hash-table slots one call walks."""


def glob_prefix(text: str) -> str:
    """A Redis glob matching every key that starts with ``text`` (its glob characters escaped)."""
    return glob_escape(text) + "*"


class Sampler:
    """Keys matching globs, found by ``SCAN`` with ``MATCH``; each glob's cursors (one per
    primary), and the keys a round found but did not take, carry over to the next round, so
    successive rounds walk the keyspace on instead of sampling its first keys again."""

    def __init__(self, client: AsyncRedis, *, count: int = SCAN_COUNT) -> None:
        self._client = client
        self._count = count
        self._cursors: dict[tuple[str, str | None], int] = {}
        self._unused: dict[tuple[str, ...], list[str]] = {}

    async def _nodes(self) -> list[Any]:
        if is_cluster(self._client):
            cluster: Any = self._client
            await cluster.initialize()  # a new client learns its nodes at its first command
            return list(cluster.get_primaries())
        return [None]

    async def _scan(self, glob: str, node: Any) -> tuple[int, list[Raw]]:
        name = None if node is None else str(node.name)
        cursor = self._cursors.get((glob, name), 0)
        if node is None:
            cursor, keys = await self._client.scan(cursor=cursor, match=glob, count=self._count)
        else:
            found: Any = await self._client.scan(
                cursor=cursor, match=glob, count=self._count, target_nodes=node
            )
            cursors, keys = found  # a cluster client answers {node name: cursor}, keys
            cursor = next(iter(cursors.values()), 0)
        self._cursors[(glob, name)] = int(cursor)
        return int(cursor), list(keys)

    async def sample(
        self, globs: Iterable[str], wanted: int, accept: Callable[[str], bool]
    ) -> list[str]:
        """Up to ``wanted`` distinct keys matching ``globs`` that ``accept`` takes: first the
        keys the last round's ``SCAN`` answers held beyond what it took, then one ``SCAN`` call
        per glob and primary in turn, until enough are found or every cursor came back to 0
        (a full walk; the next round starts it over)."""
        walked = tuple(dict.fromkeys(globs))
        found: dict[str, None] = {}
        queue = deque(self._unused.pop(walked, ()))
        nodes = await self._nodes()
        walks = [(glob, node) for glob in walked for node in nodes]
        while True:
            while queue:
                key = queue.popleft()
                if key not in found and accept(key):
                    found[key] = None
                    if len(found) >= wanted:
                        self._unused[walked] = list(queue)
                        return list(found)
            if not walks:
                return list(found)
            for walk in list(walks):
                cursor, keys = await self._scan(*walk)
                queue.extend(
                    raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                    for raw in keys
                )
                if cursor == 0:
                    walks.remove(walk)


async def read_entry(client: AsyncRedis, key: str) -> tuple[Raw | None, int]:
    """The value stored under ``key`` (None: no such key) and its remaining lifetime in
    milliseconds (``PTTL``: -1 without one, -2 when gone). A key of another type than a
    string is no entry of FastRDB's: None."""
    try:
        value = await client.get(key)
    except ResponseError as exc:
        if str(exc).startswith("WRONGTYPE"):
            return None, -2
        raise  # NOPERM and the like: not the key's fault
    ttl = await client.pttl(key)
    return value, int(ttl)
