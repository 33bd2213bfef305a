"""Type aliases shared by FastRDB's modules."""

from __future__ import annotations

from typing import TypeAlias

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

__all__ = ["AnyRedis", "AsyncRedis", "Raw", "SyncRedis"]

AsyncRedis: TypeAlias = "redis.asyncio.Redis | AsyncRedisCluster"
"""A redis-py asyncio client: what the CRUD methods and async listeners take."""

SyncRedis: TypeAlias = "redis.Redis | RedisCluster"
"""A redis-py blocking client: what listeners on a synchronous ``Session`` take."""

AnyRedis: TypeAlias = "AsyncRedis | SyncRedis"
"""Either kind: what ``listen()`` takes, matched to its target."""

Raw: TypeAlias = "bytes | str"
"""A value as Redis returns it (bytes, or str when the client decodes responses)."""
