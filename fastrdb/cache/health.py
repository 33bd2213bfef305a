"""Health: a circuit breaker per client, and per Redis server the invalidations it has not taken
yet (shared by every client object of that server in the process)."""

from __future__ import annotations

import time
import weakref
from typing import Any, Protocol

from redis.exceptions import RedisError

from fastrdb._logging import log
from fastrdb.cache import wire
from fastrdb.cache.refusals import note_refusal
from fastrdb.cache.replicas import check_client
from fastrdb.settings import DEFAULT_SETTINGS, Settings

__all__ = [
    "REDIS_ERRORS",
    "ClientHealth",
    "Mergeable",
    "ServerState",
    "clients",
    "health_of",
    "describe_address",
    "known_health",
    "known_server",
    "server_of",
]

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
"""What a Redis call raises when the server is slow, gone or refuses (asyncio's timeout is the
builtin ``TimeoutError`` since Python 3.11). Any other exception a client raises (a cluster
topology error, "Event loop is closed") counts as a Redis failure too, and is logged once."""


class Mergeable(Protocol):
    """Undelivered invalidations: whatever the events package collects, merged in order."""

    def merge(self, other: Any) -> None: ...

    def size(self) -> int:
        """How many items are kept (row versions, whole tables): what memory they take."""
        ...

    def scope(self) -> str:
        """How precise they are: ``rows`` (exact keys), ``tables`` (some tables kept whole)
        or ``everything`` (every entry of the server)."""
        ...

    def tables(self) -> list[str]:
        """The tables they concern, sorted."""
        ...

    def bound(self, limit: int) -> None:
        """Keep at most ``limit`` items, coarsening (safely) past it."""
        ...


class ServerState:
    """What every client of one Redis server (address, database and namespace) shares in this
    process: the invalidations it has not taken yet.

    While ``pending`` is set, no client of the server serves from the cache: any of them may
    replay it, since they all reach the same keys.
    """

    __slots__ = ("address", "kept", "pending", "pending_since")

    def __init__(self, address: str = "") -> None:
        self.address = address
        """Where the server is, as the clients were given it (for reports; no credentials)."""
        self.pending: Mergeable | None = None
        self.kept = 0
        """How many times something was kept: a version of ``pending``."""
        self.pending_since = 0.0
        """When (``time.time()``) the oldest of ``pending`` was kept."""


class ClientHealth:
    """What FastRDB knows about one Redis client.

    The breaker opens after ``breaker_threshold`` consecutive failures; while open, calls are
    skipped (reads go to the database) and one probe is let through every ``breaker_cooldown``
    seconds. One warning is logged per outage, one info line when Redis answers again.

    ``pending`` (shared by the clients of one server, see :class:`ServerState`) holds
    invalidations that could not be delivered. While it is set, this process serves nothing
    from that server's cache: every read goes to the database until a replay succeeds.

    ``safe`` is False once the server was found to evict keys FastRDB's bookkeeping needs
    (an ``allkeys-*`` memory policy): the cache is then bypassed (see ``fastrdb.cache.policy``).
    """

    __slots__ = (
        "__weakref__",
        "_open_until",
        "_probing",
        "_seen_errors",
        "_since",
        "direct",
        "errors",
        "failures",
        "last_error",
        "last_error_at",
        "overloads",
        "own_timeout",
        "policy_checked",
        "pool_waits",
        "safe",
        "server",
        "settings",
    )

    def __init__(
        self,
        settings: Settings,
        *,
        own_timeout: bool = True,
        direct: bool = False,
        server: ServerState | None = None,
    ) -> None:
        self.settings = settings
        self.own_timeout = own_timeout
        """Whether FastRDB must bound each call itself: the client sets no socket timeouts
        within ``settings.redis_timeout``."""
        self.direct = own_timeout and direct
        """Whether the hit and commit paths send their commands by
        :func:`fastrdb.cache.wire.command` (FastRDB bounds the calls, and the client is one
        it can take)."""
        self.server = server or ServerState()
        self.failures = 0
        """Calls that failed in a row. 0 means the breaker is closed (its other fields are
        only set after a failure), so the hit path asks this one field instead of
        :meth:`allow`, :attr:`usable`'s breaker part and :meth:`succeeded`."""
        self._open_until = 0.0
        self._probing = False
        self._since = time.time()
        self._seen_errors: set[type[BaseException]] = set()
        self.errors = 0
        """Failed calls since the client was first seen (for stats and tests)."""
        self.last_error: tuple[str, str] | None = None
        """The last failure: the exception's type name and its message (cut to 200
        characters; redis-py's messages name the server, never a key or a value)."""
        self.last_error_at = 0.0
        """When (``time.time()``) the last failure happened."""
        self.pool_waits = 0
        """Calls that found the client's connection pool full and waited for a connection."""
        self.overloads = 0
        """Calls given up because the pool stayed full for ``redis_timeout`` (not failures)."""
        self.policy_checked = False
        self.safe = True

    @property
    def usable(self) -> bool:
        """Whether cached values may be served: the breaker is closed (or its cooldown is over:
        the call is the probe), nothing is pending for the server and its memory policy keeps
        FastRDB's bookkeeping."""
        return (
            (self._open_until == 0.0 or time.monotonic() >= self._open_until)
            and self.server.pending is None
            and self.safe
        )

    @property
    def pending(self) -> Mergeable | None:
        """Invalidations the server has not taken yet (whichever client failed to send them)."""
        return self.server.pending

    def allow(self) -> bool:
        """Whether a Redis call may be made now (closed breaker, or a probe is due)."""
        if self._open_until == 0.0:
            return True
        now = time.monotonic()
        if now < self._open_until:
            return False
        self._open_until = now + self.settings.breaker_cooldown  # one probe per cooldown
        self._probing = True
        return True

    def breaker(self) -> tuple[str, float, int]:
        """The breaker's state (``closed``, ``open``, or ``half-open`` while a probe is due or
        under way), since when (``time.time()``: when it last opened or closed), and how many
        calls failed in a row."""
        if self._open_until == 0.0:
            state = "closed"
        elif self._probing or time.monotonic() >= self._open_until:
            state = "half-open"
        else:
            state = "open"
        return state, self._since, self.failures

    def succeeded(self) -> None:
        if self._open_until:
            log.info("redis_recovered")
            self._since = time.time()
        self.failures = 0
        self._open_until = 0.0
        self._probing = False

    def failed(self, exc: BaseException, operation: str) -> None:
        self.errors += 1
        self.failures += 1
        self._probing = False
        self.last_error = (type(exc).__name__, str(exc)[:200])
        self.last_error_at = time.time()
        note_refusal(self, exc, operation)  # an ACL refusal: logged once, naming the command
        if not isinstance(exc, REDIS_ERRORS) and type(exc) not in self._seen_errors:
            # Not one of redis-py's own errors: say once what it was, it may be a misuse.
            self._seen_errors.add(type(exc))
            log.warning(
                "redis_client_error",
                operation=operation,
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )
        if self._open_until:
            self._open_until = time.monotonic() + self.settings.breaker_cooldown
            return
        if self.failures >= self.settings.breaker_threshold:
            self._open_until = time.monotonic() + self.settings.breaker_cooldown
            self._since = time.time()
            log.warning(
                "redis_unavailable",
                operation=operation,
                error=type(exc).__name__,
                retry_in=self.settings.breaker_cooldown,
            )

    def keep(self, undelivered: Mergeable) -> None:
        """Remember invalidations to replay; they are merged with any already waiting, within
        ``settings.max_pending`` items (coarser past it: whole tables, then everything)."""
        server = self.server
        server.kept += 1
        pending = server.pending
        if pending is None:
            pending = server.pending = undelivered
            server.pending_since = time.time()
            scope = pending.scope()
        else:
            scope = pending.scope()
            pending.merge(undelivered)
        pending.bound(self.settings.max_pending)
        if pending.scope() != scope:
            log.warning(
                "cache_invalidate_coarsened",
                scope=pending.scope(),
                tables=pending.tables(),
                max_pending=self.settings.max_pending,
            )

    @property
    def kept(self) -> int:
        """How many times something was kept for the server: a version of ``pending``."""
        return self.server.kept

    def settle(self, kept: int) -> None:
        """Forget ``pending`` once delivered, unless more was kept since version ``kept``."""
        if self.server.kept == kept:
            self.server.pending = None


_HEALTH: weakref.WeakKeyDictionary[Any, ClientHealth] = weakref.WeakKeyDictionary()
_SERVERS: dict[tuple[Any, ...], ServerState] = {}


def clients() -> list[tuple[Any, ClientHealth]]:
    """Every client FastRDB has used in this process and still alive, with its health. Safe
    from another thread (a metrics server's): the records are copied in one step."""
    records: list[tuple[weakref.ref[Any], ClientHealth]]
    while True:
        try:
            records = list(_HEALTH.data.items())  # type: ignore[attr-defined]
            break
        except RuntimeError:  # a client was collected (its entry removed) during the copy
            continue
    alive = ((ref(), health) for ref, health in records)
    return [(client, health) for client, health in alive if client is not None]


def known_health(client: Any) -> ClientHealth | None:
    """The health record of ``client`` if FastRDB has used it, else None (none is made)."""
    return _HEALTH.get(client)


def known_server(client: Any, namespace: str) -> ServerState:
    """The state of the server ``client`` talks to; if no client of it was used, a fresh one
    that is not kept."""
    address = (namespace, *_address(client))
    return _SERVERS.get(address) or ServerState(describe_address(address[1:]))


def health_of(client: Any, settings: Settings | None = None) -> ClientHealth:
    """The health record of ``client``; the first caller's settings configure it (and are
    checked against it: ``ConfigurationError``)."""
    health = _HEALTH.get(client)
    if health is None:
        settings = settings or DEFAULT_SETTINGS
        check_client(client, settings)
        health = _HEALTH[client] = ClientHealth(
            settings,
            own_timeout=not _client_bounds_calls(client, settings.redis_timeout),
            direct=wire.direct(client),
            server=server_of(client, settings.namespace),
        )
    return health


def server_of(client: Any, namespace: str) -> ServerState:
    """The state shared by every client of the server ``client`` talks to (kept for the life
    of the process: invalidations pending for a server must outlive any one client object)."""
    address = (namespace, *_address(client))
    state = _SERVERS.get(address)
    if state is None:
        state = _SERVERS[address] = ServerState(describe_address(address[1:]))
    return state


def describe_address(address: tuple[Any, ...]) -> str:
    """An address from :func:`_address` as text: ``redis://host:port/db``,
    ``unix:///path?db=N``, ``cluster://host:port,...`` or ``client:<id>``."""
    kind, *rest = address
    if kind == "cluster":
        return "cluster://" + ",".join(str(node) for node in rest)
    if kind == "redis":
        host, port, path, db = rest
        if path:
            return f"unix://{path}?db={db}"
        return f"redis://{host}:{port}/{db}"
    return f"client:{rest[0]}"


def _address(client: Any) -> tuple[Any, ...]:
    """Where ``client`` sends its commands, as given to it: host, port (or socket path) and
    database; for a cluster client, its startup nodes. A client of unknown shape is its own
    server."""
    manager = getattr(client, "nodes_manager", None)
    if manager is not None:
        return ("cluster", *sorted(getattr(manager, "startup_nodes", None) or ()))
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return ("client", id(client))
    return (
        "redis",
        kwargs.get("host"),
        kwargs.get("port"),
        kwargs.get("path"),
        kwargs.get("db", 0),
    )


def _client_bounds_calls(client: Any, limit: float) -> bool:
    """Whether the client's own socket timeouts already bound every call within ``limit``
    (then FastRDB need not watch its calls itself; see :mod:`fastrdb.cache.deadline`)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return False
    read = kwargs.get("socket_timeout")
    connect = kwargs.get("socket_connect_timeout")
    return all(isinstance(t, int | float) and 0 < t <= limit for t in (read, connect))
