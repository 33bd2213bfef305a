"""Ready a session and its Redis client for a CRUD call: the session bound so FastRDB's own
commits through it invalidate, and the client's health, its server's memory policy checked and
invalidations it could not take before replayed."""

from __future__ import annotations

import weakref

from sqlalchemy.ext.asyncio import AsyncSession

from fastrdb._types import AsyncRedis
from fastrdb.cache.health import ClientHealth, health_of
from fastrdb.cache.policy import check_memory_policy
from fastrdb.events.bindings import BINDING_KEY, Binding, Slot, bind_session
from fastrdb.events.hooks import install_hooks
from fastrdb.events.invalidator import replay
from fastrdb.settings import Settings

__all__ = ["Clients", "checks_due"]


class Clients:
    """The Redis clients one ``FastRDB`` instance was given, and their health."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._healths: weakref.WeakSet[ClientHealth] = weakref.WeakSet()
        self._last_health: ClientHealth | None = None

    @property
    def errors(self) -> int:
        """Failed calls on these clients."""
        return sum(health.errors for health in self._healths)

    @property
    def overloads(self) -> int:
        """Calls on these clients that found the connection pool full and went without Redis."""
        return sum(health.overloads for health in self._healths)

    def health(self, redis: AsyncRedis) -> ClientHealth:
        """The client's health, for a call without a session (an explicit invalidation)."""
        return self._health_of(redis, None)

    def _health_of(self, redis: AsyncRedis, binding: Binding | None) -> ClientHealth:
        health = (
            binding.health
            if binding is not None and binding.client is redis
            else health_of(redis, self.settings)
        )
        if health is not self._last_health:
            self._healths.add(health)
            self._last_health = health
        return health

    def bound(self, db: AsyncSession, redis: AsyncRedis) -> ClientHealth:
        """The client's health, after binding the session so FastRDB's writes invalidate: the
        part of :meth:`ready` every call pays, without a coroutine. The rest is due when
        :func:`checks_due` says so (first use, invalidations waiting)."""
        session = db.sync_session
        # A session that holds an active binding already (every call after its first, and
        # every session of a listened sessionmaker) keeps it: what binding_of() answers first.
        held = session.info.get(BINDING_KEY)
        binding = held.binding if type(held) is Slot else held
        if binding is None or not binding.active:
            binding = bind_session(session, redis, self.settings, install_hooks)
        health = binding.health if binding.client is redis else health_of(redis, self.settings)
        if health is not self._last_health:
            self._healths.add(health)
            self._last_health = health
        return health

    async def ready(
        self, db: AsyncSession, redis: AsyncRedis, *, replay_pending: bool = True
    ) -> ClientHealth:
        """The client's health, after binding the session so FastRDB's writes invalidate, after
        checking the server's memory policy (first use), and (``replay_pending``) after
        replaying invalidations that Redis could not take before."""
        health = self.bound(db, redis)
        await self.check(redis, health, replay_pending=replay_pending)
        return health

    async def check(
        self, redis: AsyncRedis, health: ClientHealth, *, replay_pending: bool = True
    ) -> None:
        """Check the server's memory policy (first use) and (``replay_pending``) replay the
        invalidations that Redis could not take before."""
        if not health.policy_checked:
            await check_memory_policy(redis, health)
        if replay_pending and health.pending is not None:
            await replay(redis, health)


def checks_due(health: ClientHealth) -> bool:
    """Whether :meth:`Clients.check` has anything to do for ``health`` (cheap: a hit asks)."""
    return not health.policy_checked or health.server.pending is not None
