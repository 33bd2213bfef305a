"""The chaos schedule: one event every ``interval`` seconds, in turn, until the load ends.

- ``redis``: the soak's redis-server is SIGKILLed, stays down ``redis_down`` seconds and is
  started again on the same port, empty (the window is recorded);
- ``before-commit`` / ``after-commit``: the writer worker is SIGKILLed with a commit stopped
  at that point (bench/soak/hook.py) and started again (the callable does it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.servers import RedisServer

EVENTS = ("redis", "before-commit", "after-commit")


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
    redis: RedisServer
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
            else:
                self.kills.append(await self.kill_worker(event))

    async def restart_redis(self) -> None:
        down = time.monotonic() * 1e6
        await asyncio.to_thread(self.redis.kill)
        await asyncio.sleep(self.redis_down)
        await asyncio.to_thread(self.redis.start)
        self.outages.append(Outage(down, time.monotonic() * 1e6))
