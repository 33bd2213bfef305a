"""The chaos schedule: one event every ``interval`` seconds, in turn, until the load ends.

- ``redis``: the soak's redis-server is SIGKILLed, stays down ``redis_down`` seconds and is
  started again on the same port, empty (the window is recorded);
- ``cluster-master`` (with ``--cluster``): a master of the Redis Cluster is SIGKILLed; the
  window lasts until its replica took over; then it is started again and rejoins as a replica;
- ``before-commit`` / ``after-commit``: the writer worker is SIGKILLed with a commit stopped
  at that point (bench/soak/hook.py) and started again (the callable does it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis

from tests.servers import RedisClusterServers, RedisServer

EVENTS = ("redis", "cluster-master", "before-commit", "after-commit")


@dataclass(frozen=True)
class Outage:
    """Redis was down from ``down`` until ``up`` (CLOCK_MONOTONIC µs)."""

    down: float
    up: float


@dataclass
class Kill:
    """The worker was killed at ``at`` (µs) with the commit of ``write`` stopped at ``point``;
    ``committed``: whether the database showed its value when read ``settle`` s later."""

    point: str
    at: float
    write: tuple[int, str] | None = None
    committed: bool | None = None


@dataclass
class Chaos:
    redis: RedisServer | RedisClusterServers
    kill_worker: Callable[[str], Awaitable[Kill]]
    events: tuple[str, ...]
    interval: float
    redis_down: float
    outages: list[Outage] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)

    async def run(self, seconds: float) -> None:
        """Play the schedule for ``seconds`` (the load's duration)."""
        if not self.events:
            return
        until = time.monotonic() + seconds
        number = 0
        while time.monotonic() + self.interval < until:
            await asyncio.sleep(self.interval)
            event = self.events[number % len(self.events)]
            number += 1
            if event == "redis":
                await self.restart_redis()
            elif event == "cluster-master":
                await self.kill_master(number)
            else:
                self.kills.append(await self.kill_worker(event))

    async def restart_redis(self) -> None:
        assert isinstance(self.redis, RedisServer)
        down = time.monotonic() * 1e6
        await asyncio.to_thread(self.redis.kill)
        await asyncio.sleep(self.redis_down)
        await asyncio.to_thread(self.redis.start)
        self.outages.append(Outage(down, time.monotonic() * 1e6))

    async def kill_master(self, number: int) -> None:
        cluster = self.redis
        assert isinstance(cluster, RedisClusterServers)
        self.outages.append(await asyncio.to_thread(_kill_master, cluster, number))


def _kill_master(cluster: RedisClusterServers, number: int) -> Outage:
    """Kill a master, wait for its replica to take over, start it again as a replica."""
    masters = [server for server in cluster.servers if _role(server) == "master"]
    victim = masters[number % len(masters)]
    down = time.monotonic() * 1e6
    victim.kill()
    cluster.wait_failed_over(victim.port, 60)
    up = time.monotonic() * 1e6
    victim.start()  # its nodes file makes it rejoin, as a replica of the new master
    cluster.wait_ok(60)
    deadline = time.monotonic() + 60
    while _role(victim) != "slave" or not _synced(victim):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the node on port {victim.port} did not rejoin as a replica")
        time.sleep(0.1)
    return Outage(down, up)


def _info(server: RedisServer) -> dict[str, object]:
    try:
        return dict(redis.Redis(port=server.port, socket_timeout=1).info("replication"))
    except redis.RedisError:
        return {}


def _role(server: RedisServer) -> object:
    return _info(server).get("role") if server.alive else None


def _synced(server: RedisServer) -> bool:
    return _info(server).get("master_link_status") == "up"
