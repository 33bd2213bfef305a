"""Waiting for replicas: an invalidation counts as delivered once ``wait_replicas`` have it.

Redis replication is asynchronous: a master that dies just after it dropped keys may leave a
replica, promoted in its place, that still holds them. ``WAIT n timeout`` blocks a connection
until ``n`` replicas acknowledged the replication offset of that connection's last write. A
connection that wrote nothing (each key was gone already: another writer dropped it first, and
may not be replicated yet) would pass at once, so every wait first writes a marker on the same
connection: the wait then covers everything the master took before it, whoever sent it.

- One Redis: the invalidation script, the marker and ``WAIT`` go in one pipeline, on one
  connection (one round trip).
- Redis Cluster: once the keys are dropped, one pipeline ``[marker, WAIT]`` on a connection of
  each master that took a key (the cluster client itself would send ``WAIT`` to every node, on
  connections that wrote nothing), the masters in parallel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from redis.asyncio.cluster import PipelineCommand
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from fastrdb.cache.scripts import Arg, LuaScript
from fastrdb.errors import ConfigurationError
from fastrdb.keys import wait_key
from fastrdb.settings import Settings

__all__ = ["NotReplicated", "Wait", "check_client", "run_then_wait", "wait_on_masters"]

MARKER_MS = 10_000
"""Lifetime of a marker (its value means nothing; it only has to be written)."""


class NotReplicated(RedisError):
    """Fewer replicas than ``wait_replicas`` acknowledged an invalidation within
    ``wait_timeout``: it counts as not delivered (kept, replayed, cache bypassed meanwhile)."""

    def __init__(self, where: str, acked: int, wanted: int) -> None:
        super().__init__(f"{where}: {acked} of {wanted} replicas acknowledged the invalidation")
        self.acked = acked
        self.wanted = wanted


@dataclass(frozen=True, slots=True)
class Wait:
    """How many replicas an invalidation waits for, and how long."""

    replicas: int
    timeout: float
    """Seconds."""

    @classmethod
    def of(cls, settings: Settings) -> Wait | None:
        """The wait ``settings`` ask for; None when they don't (``wait_replicas=0``)."""
        if not settings.wait_replicas:
            return None
        return cls(settings.wait_replicas, settings.wait_timeout)

    @property
    def timeout_ms(self) -> int:
        return max(1, round(self.timeout * 1000))

    def require(self, acked: Any, where: str) -> None:
        """Raise :class:`NotReplicated` unless ``acked`` replicas are enough."""
        if int(acked) < self.replicas:
            raise NotReplicated(where, int(acked), self.replicas)


class Call(Protocol):
    """Turns what a client method returns into its reply (``fastrdb.cache.store.Caller``);
    ``extra`` seconds are added to its time bound."""

    def __call__(self, reply: Any, extra: float = ...) -> Any: ...


def run_then_wait(
    call: Call,
    client: Any,
    script: LuaScript,
    keys: Sequence[str],
    args: Sequence[Arg],
    wait: Wait,
    marker: str,
) -> tuple[Any, int]:
    """Run ``script``, write ``marker`` and ``WAIT``, in one pipeline on one connection of one
    Redis: the script's reply and how many replicas acknowledged. Raises what Redis raises."""
    for loaded in (True, False):
        pipe = client.pipeline(transaction=False)
        if loaded:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        else:
            pipe.eval(script.source, len(keys), *keys, *args)
        pipe.set(marker, b"", px=MARKER_MS)
        pipe.wait(wait.replicas, wait.timeout_ms)
        replies = call(pipe.execute(raise_on_error=False), wait.timeout)
        if loaded and isinstance(replies[0], NoScriptError):
            continue  # not loaded on this server yet: the same with EVAL
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies[0], int(replies[2])
    raise AssertionError("unreachable")


def wait_on_masters(call: Call, client: Any, keys: Iterable[str], wait: Wait) -> None:
    """On a Redis Cluster, after ``keys`` were written: wait until ``wait.replicas`` replicas
    of each master holding one of them have every write that master took so far. Raises
    :class:`NotReplicated` naming the first master short of replicas, or what Redis raises."""
    masters: dict[str, tuple[Any, str]] = {}
    for key in keys:
        node = client.get_node_from_key(key)
        if node.name not in masters:
            masters[node.name] = (node, wait_key(key) or _slot_marker(client.keyslot(key)))
    if not masters:
        return
    if isinstance(client, AsyncRedisCluster):
        acked = call(_wait_all(list(masters.values()), wait), wait.timeout)
    else:
        acked = []
        for node, marker in masters.values():
            pipe = client.get_redis_connection(node).pipeline(transaction=False)
            pipe.set(marker, b"", px=MARKER_MS)
            pipe.wait(wait.replicas, wait.timeout_ms)
            acked.append(call(pipe.execute(), wait.timeout)[1])
    for name, count in zip(masters, acked, strict=True):
        wait.require(count, name)


async def _wait_all(masters: list[tuple[Any, str]], wait: Wait) -> list[int]:
    return list(await asyncio.gather(*(_wait(node, marker, wait) for node, marker in masters)))


async def _wait(node: Any, marker: str, wait: Wait) -> int:
    """``[SET marker, WAIT]`` on one connection of an asyncio cluster node."""
    commands = [
        PipelineCommand(0, "SET", marker, b"", "PX", MARKER_MS),
        PipelineCommand(1, "WAIT", wait.replicas, wait.timeout_ms),
    ]
    await node.execute_pipeline(commands)
    replies: list[Any] = [command.result for command in commands]
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return int(replies[1])


@lru_cache(maxsize=64)
def _slot_marker(slot: int) -> str:
    """A marker in ``slot``, for a key no marker name can share a slot with (a ``}`` without
    a hash tag): found by trying tags (tens of milliseconds, once per slot)."""
    number = 0
    while key_slot(str(number).encode()) != slot:
        number += 1
    return "{" + str(number) + "}:wait"


def check_client(client: Any, settings: Settings) -> None:
    """Refuse a client whose socket timeout would cut a ``WAIT`` short (every invalidation
    would then fail): ``ConfigurationError`` naming ``wait_timeout``."""
    if not settings.wait_replicas:
        return
    manager = getattr(client, "nodes_manager", None)
    source = manager if manager is not None else getattr(client, "connection_pool", None)
    kwargs = getattr(source, "connection_kwargs", None)
    timeout = kwargs.get("socket_timeout") if isinstance(kwargs, dict) else None
    if isinstance(timeout, int | float) and timeout <= settings.wait_timeout:
        raise ConfigurationError(
            "wait_timeout",
            f"must be shorter than the Redis client's socket_timeout ({timeout} s), "
            f"got {settings.wait_timeout}",
        )
