"""Which sessions FastRDB watches, and with which Redis client: bindings and their lookup.

SQLAlchemy cannot attach listeners to ``AsyncSession`` or ``async_sessionmaker``, so FastRDB
installs one set of hooks on the ``Session`` class, once, and each hook first asks
:func:`binding_of` whether the session at hand belongs to a listened target. Sessions made by a
listened sessionmaker carry the binding in ``session.info``; listened ``Session`` and
``AsyncSession`` subclasses are found by class.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastrdb.cache.health import ClientHealth, health_of
from fastrdb.cache.store import Caller
from fastrdb.keys import Namespace
from fastrdb.settings import DEFAULT_SETTINGS, Settings

__all__ = [
    "BINDING_KEY",
    "CLIENT_KEY",
    "Refresher",
    "register_refresher",
    "refreshers_of",
    "CHANGES_KEY",
    "Binding",
    "Slot",
    "binding_of",
    "bind_session",
]

BINDING_KEY = "fastrdb.binding"
CHANGES_KEY = "fastrdb.changes"
CLIENT_KEY = "fastrdb.client"
"""Where a session bound by a CRUD call keeps its client alive (its binding holds it weakly)."""


class Binding:
    """A Redis client that a group of sessions sends its invalidations to.

    ``weak``: the binding refers to its client weakly, so that a table of bindings keyed
    (weakly) by client does not keep every client alive; whoever uses the binding then holds
    the client (a session bound by a CRUD call keeps it in its ``info``)."""

    __slots__ = (
        "__weakref__",
        "_client",
        "active",
        "caller",
        "health",
        "is_async",
        "namespace",
        "refresh",
        "tasks",
    )

    def __init__(
        self,
        client: Any,
        *,
        is_async: bool,
        settings: Settings,
        refresh: bool = False,
        weak: bool = False,
    ) -> None:
        self._client: Callable[[], Any] = weakref.ref(client) if weak else lambda: client
        self.is_async = is_async
        self.refresh = refresh
        """After each commit, fill the changed rows' keys again instead of leaving them cold."""
        self.tasks: set[asyncio.Task[None]] = set()
        """Refreshes under way."""
        self.health: ClientHealth = health_of(client, settings)
        self.caller = Caller(is_async, self.health.settings.redis_timeout, self.health.direct)
        self.namespace = Namespace(self.health.settings.namespace)
        self.active = True

    @property
    def client(self) -> Any:
        """The Redis client (None only for a weak binding whose client is gone, which no
        session can reach any more)."""
        return self._client()


class Slot:
    """Where the sessions of one listened target find their binding (kept in their ``info``).

    Every session made from the target shares the slot, so a later ``listen()`` on the same
    target reaches the sessions already open, and ``remove()`` silences them all.
    """

    __slots__ = ("binding",)

    def __init__(self, binding: Binding | None) -> None:
        self.binding = binding


class Refresher(Protocol):
    """What can fill a row's keys again after a commit (a FastRDB instance)."""

    async def refresh_row(
        self, *, db: AsyncSession, redis: Any, identity: tuple[Any, ...], values: dict[str, Any]
    ) -> None: ...


_refreshers: dict[type, weakref.WeakSet[Any]] = {}


def register_refresher(model: type, refresher: Refresher) -> None:
    """Let listeners in ``refresh`` mode refill keys of ``model`` through ``refresher``."""
    _refreshers.setdefault(model, weakref.WeakSet()).add(refresher)


def refreshers_of(model: type) -> list[Refresher]:
    return list(_refreshers.get(model, ()))


_session_classes: dict[type[Session], Binding] = {}
_async_session_classes: dict[type[AsyncSession], Binding] = {}
_crud_bindings: weakref.WeakKeyDictionary[Any, Binding] = weakref.WeakKeyDictionary()
"""Per client, the binding of the sessions its CRUD calls bound (a weak one: a strong
reference from the value to its key would keep every client alive, with its connections)."""


def binding_of(session: Session) -> Binding | None:
    """The active binding that covers ``session``, if any."""
    held: Slot | Binding | None = session.info.get(BINDING_KEY)
    binding = held.binding if isinstance(held, Slot) else held
    if binding is not None and binding.active:
        return binding
    if _session_classes:
        for cls in type(session).__mro__:
            binding = _session_classes.get(cls)
            if binding is not None and binding.active:
                return binding
    if _async_session_classes:
        proxy = AsyncSession._retrieve_proxy_for_target(session, regenerate=False)
        if proxy is not None:
            for cls in type(proxy).__mro__:
                binding = _async_session_classes.get(cls)
                if binding is not None and binding.active:
                    return binding
    return None


def bind_session(
    session: Session, client: Any, settings: Settings | None, install: Callable[[], None]
) -> Binding:
    """Make sure FastRDB's own writes through ``session`` are invalidated, even unlistened.

    ``install`` attaches the session hooks (:func:`fastrdb.events.hooks.install_hooks`); it is
    passed in because the hooks import this module."""
    binding = binding_of(session)
    if binding is None:
        binding = _crud_bindings.get(client)
        if binding is None:
            binding = _crud_bindings[client] = Binding(
                client, is_async=True, settings=settings or DEFAULT_SETTINGS, weak=True
            )
        install()
        session.info[BINDING_KEY] = binding
        session.info[CLIENT_KEY] = client  # its commits need the client the binding holds weakly
    return binding


def _class_table(cls: type[Session] | type[AsyncSession]) -> dict[Any, Binding]:
    return _async_session_classes if issubclass(cls, AsyncSession) else _session_classes


def bind_class(cls: type[Session] | type[AsyncSession], binding: Binding) -> Binding | None:
    """Cover every session of ``cls``; returns the binding this replaces."""
    table = _class_table(cls)
    previous = table.get(cls)
    table[cls] = binding
    return previous


def unbind_class(cls: type[Session] | type[AsyncSession], binding: Binding) -> None:
    table = _class_table(cls)
    if table.get(cls) is binding:
        del table[cls]
