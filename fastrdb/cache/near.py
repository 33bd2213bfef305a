"""The near cache: entries kept in this process, coherent through Redis' client-side caching.

One tracking connection per Redis server and event loop (:class:`Tracker`) runs
``CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX …`` with the literal prefixes of the
key patterns that use it, then ``SUBSCRIBE __redis__:invalidate`` (RESP2): Redis then sends it
the name of every key under those prefixes that any client changes, deletes or lets expire, and
a null when a database is flushed. BCAST rather than the default mode: tracking needs no state
on the connections that read (redis-py's pool hands out any of them), and the prefixes are
known up front.

The connection is a plain non-blocking socket, not a redis-py client: before every near hit the
invalidations already delivered to it are applied with one ``poll`` of the socket (no await, no
wait), and the event loop applies them whenever it is idle. It connects as the client does: the
same address and credentials, and for a TLS client (``rediss://``) TLS with the client's own
settings, done in memory over the socket (``ssl.SSLObject``) so the ``poll`` still works.

- A value read from Redis is stored only if no invalidation of its key (or of its group: the
  row key of a digest variant, the table's lists) arrived between just before that read and the
  store: :meth:`Tracker.ticket` is taken before the GET, :meth:`NearCache.store` checks it.
- This process' own commits drop their keys synchronously (:func:`forget`, called by the
  invalidation delivery), before ``commit()`` returns, and count as an invalidation for the
  check above: a read that raced the commit does not store its older value.
- Tracking lost (connection closed or failed, server restarted) or not yet set up: every near
  cache of the tracker is emptied and bypassed until tracking is set up again.

Entries are the bytes Redis returned, decoded again on each hit: callers get a fresh object.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Literal

import structlog
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import SSLConnection
from redis.cluster import RedisCluster

from fastrdb.cache.refusals import note_refusal
from fastrdb.errors import ConfigurationError

__all__ = [
    "NearCache",
    "NearCaches",
    "Ticket",
    "Tracker",
    "forget",
    "embeds_group",
    "list_group",
    "literal_prefix",
    "tracker_for",
]

log = structlog.get_logger("fastrdb")

Ticket = tuple[int, int]
"""(tracking epoch, invalidation sequence number) taken just before a Redis read."""

_RECENT_LIMIT = 4096
"""Invalidated names remembered for the store check; past it, the memory restarts (and stores
whose read began before that are refused)."""

_CONNECT_TIMEOUT = 2.0
_RETRY_FIRST = 0.05
_RETRY_MAX = 2.0


def literal_prefix(pattern_text: str) -> str:
    """What every key of a ``str.format`` pattern starts with: the text before its first
    placeholder (``"user:email:{email}"`` → ``"user:email:"``)."""
    head = pattern_text.split("{", 1)[0]
    return head.replace("}}", "}")


def list_group(table: str) -> str:
    """The group of every cached page of ``table`` (not a Redis key: it starts with NUL)."""
    return "\0lists:" + table


def embeds_group(table: str) -> str:
    """The group of every entry that embeds rows of ``table`` (nested response schemas)."""
    return "\0embeds:" + table


def _normalized(prefixes: Iterable[str]) -> list[str]:
    """The shortest covering set: Redis refuses overlapping prefixes; "" covers every key."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if not any(prefix.startswith(shorter) for shorter in kept):
            kept.append(prefix)
    return kept


def _command(*args: str | bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    pass


def _parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 value from ``buf`` at ``pos``: (value, next position); errors are returned as
    ``RuntimeError`` instances. Raises ``_Incomplete`` when more bytes are needed."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos : pos + 1]
    line = bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return RuntimeError(line.decode(errors="replace")), pos
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    raise ValueError(f"unexpected RESP type {kind!r}")


class _Socket:
    """The tracking connection: a non-blocking socket, with TLS done in memory when the client
    uses TLS (an ``ssl.SSLObject`` over the plain socket, so that ``poll`` on the socket still
    tells whether anything was delivered). Closed when dropped (no unclosed-socket warning)."""

    __slots__ = ("_incoming", "_outgoing", "_tls", "poller", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()

    async def start_tls(
        self, loop: asyncio.AbstractEventLoop, context: ssl.SSLContext, server_hostname: str
    ) -> None:
        """The TLS handshake, with the client's own settings (certificates, verification)."""
        tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush(loop)
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    raise ConnectionResetError("closed during the TLS handshake") from None
                self._incoming.write(data)
        await self._flush(loop)
        self._tls = tls

    async def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        data = self._outgoing.read()
        if data:
            await loop.sock_sendall(self.sock, data)

    async def send(self, loop: asyncio.AbstractEventLoop, data: bytes) -> None:
        if self._tls is None:
            await loop.sock_sendall(self.sock, data)
            return
        self._tls.write(data)
        await self._flush(loop)

    async def recv(self, loop: asyncio.AbstractEventLoop) -> bytes:
        """Some bytes from the server (waits for them); raises when the server closed."""
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            if not data:
                raise ConnectionResetError("closed during the tracking set-up")
            if self._tls is None:
                return data
            self._incoming.write(data)
            plain = self._decrypted()
            if plain:
                return plain

    def read_available(self) -> bytes:
        """What was delivered so far, never waiting; raises when the server closed."""
        raw = bytearray()
        closed = False
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not data:
                closed = True
                break
            raw += data
        if self._tls is not None and raw:
            self._incoming.write(bytes(raw))
            raw = bytearray(self._decrypted())
            pending = self._outgoing.read()  # e.g. a TLS key update: tiny, sent at once
            if pending and self.sock.send(pending) != len(pending):
                raise ConnectionResetError("the tracking connection could not send")
        if closed:
            raise ConnectionResetError("tracking connection closed by the server")
        return bytes(raw)

    def _decrypted(self) -> bytes:
        assert self._tls is not None
        plain = bytearray()
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                raise ConnectionResetError("the server ended the TLS session") from None
            if not chunk:
                break
            plain += chunk
        return bytes(plain)

    def close(self) -> None:
        self.sock.close()

    def __del__(self) -> None:
        self.sock.close()


class Tracker:
    """The tracking connection of one Redis server in one event loop, and what it was told."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: dict[str, Any],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = weakref.ref(loop)
        """Weak: a tracker is kept per loop (:data:`_trackers`), and must not keep its loop."""
        self.address = address
        self.tls = tls
        """The client's TLS settings (``rediss://``), used for the tracking connection too."""
        self.up = False
        """Whether tracking is set up and its connection alive: only then are entries served."""
        self.epoch = 0
        self.seq = 0
        self.client_id: int | None = None
        self._floor = 0
        self._recent: dict[str, int] = {}
        self._lock = threading.Lock()
        self._conn: _Socket | None = None
        self._buf = bytearray()
        self._caches: weakref.WeakSet[NearCache] = weakref.WeakSet()
        self._prefixes: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._retry = _RETRY_FIRST
        self._warned = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        if loop is None:
            raise RuntimeError("the near cache's event loop is gone")
        return loop

    # -- caches and prefixes --

    def attach(self, cache: NearCache, prefixes: Iterable[str]) -> None:
        """Serve ``cache`` too; tracking is (re)set up if it needs prefixes not yet tracked."""
        self._caches.add(cache)
        wanted = _normalized([*self._prefixes, *prefixes])
        if wanted != self._prefixes:
            self._prefixes = wanted
            if self.up:
                self._lost(None)  # set up again with the new prefixes
        if not self.up:
            self._retry = _RETRY_FIRST
            self._schedule(0.0)

    # -- the store check --

    def ticket(self) -> Ticket | None:
        """Taken just before a Redis read whose value may be stored; None: don't store."""
        return (self.epoch, self.seq) if self.up else None

    def allows(self, ticket: Ticket, key: str, groups: tuple[str, ...]) -> bool:
        """Whether nothing concerning ``key`` or its ``groups`` was invalidated since
        ``ticket`` (call under :attr:`lock`)."""
        epoch, seq = ticket
        if not self.up or epoch != self.epoch:
            return False
        if seq == self.seq:
            return True
        if self._floor > seq:
            return False
        recent = self._recent
        if recent.get(key, 0) > seq:
            return False
        return all(recent.get(group, 0) <= seq for group in groups)

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    def invalidate(self, names: Iterable[str] | None) -> None:
        """Apply an invalidation: these keys or groups (None: everything) changed."""
        with self._lock:
            self.seq += 1
            seq = self.seq
            if names is None:
                self._recent.clear()
                self._floor = seq
                for cache in list(self._caches):
                    cache.clear(counted=True)
                return
            names = list(names)
            recent = self._recent
            for name in names:
                recent[name] = seq
            if len(recent) > _RECENT_LIMIT:
                recent.clear()
                self._floor = seq
            for cache in list(self._caches):
                cache.drop(names)

    # -- the connection --

    def drain(self) -> None:
        """Apply the invalidations already delivered to the socket; never waits."""
        conn = self._conn
        if conn is None or not self.up:
            return
        if not conn.poller.poll(0):
            return
        self._read_ready()

    def _read_ready(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if not self._caches:
            self._retire()
            return
        try:
            self._buf += conn.read_available()
            self._apply()
        except Exception as exc:  # any failure of the tracking connection: tracking is lost
            self._lost(exc)
            self._schedule(self._retry)

    def _apply(self) -> None:
        buf = self._buf
        pos = 0
        try:
            while pos < len(buf):
                message, pos = _parse(buf, pos)
                self._on_message(message)
        except _Incomplete:
            pass
        del buf[:pos]

    def _on_message(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) != 3 or message[0] != b"message":
            if isinstance(message, RuntimeError):
                raise message
            return  # a pong, a subscribe confirmation
        payload = message[2]
        if payload is None:
            self.invalidate(None)  # FLUSHDB / FLUSHALL
        elif isinstance(payload, list):
            self.invalidate(
                name.decode(errors="surrogateescape") if isinstance(name, bytes) else str(name)
                for name in payload
            )
        else:
            self.invalidate((payload.decode(errors="surrogateescape"),))

    def _retire(self) -> None:
        """No near cache uses this tracker any more (their FastRDB instances are gone): stop
        tracking, or Redis sends this process a message for every write under its prefixes for
        as long as the loop runs. A near cache made later gets a tracker of its own."""
        self.close()
        _all.discard(self)
        per_loop = _trackers.get(self.loop, {})
        for identity, tracker in list(per_loop.items()):
            if tracker is self:
                del per_loop[identity]

    def _lost(self, exc: BaseException | None) -> None:
        """Tracking is gone (or being set up again): empty and bypass every near cache."""
        was_up = self.up
        with self._lock:
            self.up = False
            self.epoch += 1
            self._recent.clear()
            self._floor = self.seq
            for cache in list(self._caches):
                cache.clear(counted=False)
        conn = self._conn
        self._conn = None
        self._buf.clear()
        if conn is not None:
            if not self.loop.is_closed():
                self.loop.remove_reader(conn.sock.fileno())
            conn.close()
        if was_up and exc is not None:
            log.warning("near_cache_tracking_lost", error=type(exc).__name__)

    def _schedule(self, delay: float) -> None:
        if self.loop.is_closed() or (self._task is not None and not self._task.done()):
            return
        self._task = self.loop.create_task(self._set_up(delay))
        self._task.add_done_callback(self._set_up_done)

    def _set_up_done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None  # a finished task holds its loop

    async def _set_up(self, delay: float) -> None:
        while True:
            if delay:
                await asyncio.sleep(delay)
            if not self._caches:
                return
            prefixes = self._prefixes
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT):
                    await self._connect(prefixes)
            except asyncio.CancelledError:
                self._lost(None)
                raise
            except Exception as exc:
                self._lost(None)
                note_refusal(self, exc, "near_cache_tracking")
                if not self._warned:
                    self._warned = True
                    log.warning("near_cache_tracking_unavailable", error=type(exc).__name__)
                delay = self._retry
                self._retry = min(self._retry * 2, _RETRY_MAX)
                continue
            if prefixes != self._prefixes:  # a cache came with new prefixes meanwhile
                self._lost(None)
                delay = 0.0
                continue
            if self._warned:
                log.info("near_cache_tracking_restored")
            self._warned = False
            self._retry = _RETRY_FIRST
            return

    async def _connect(self, prefixes: list[str]) -> None:
        loop = self.loop
        address = self.address
        path = address.get("path")
        if path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = path
        else:
            host = address.get("host") or "localhost"
            port = int(address.get("port") or 6379)
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, kind, proto, _, target = infos[0]
            sock = socket.socket(family, kind, proto)
        conn = _Socket(sock)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, target)
            if not path:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.tls is not None:
                    await conn.start_tls(loop, self.tls, host)
            first: list[bytes] = []
            credentials = await _credentials(address)
            if credentials:
                first.append(_command("AUTH", *credentials))
            first.append(_command("CLIENT", "ID"))
            replies = await self._exchange(conn, b"".join(first), len(first))
            client_id = replies[-1]
            if not isinstance(client_id, int):
                raise RuntimeError("CLIENT ID gave no id")
            tracking: list[str] = ["CLIENT", "TRACKING", "on", "REDIRECT", str(client_id), "BCAST"]
            for prefix in prefixes:
                if prefix:
                    tracking += ["PREFIX", prefix]
            request = _command(*tracking) + _command("SUBSCRIBE", "__redis__:invalidate")
            await self._exchange(conn, request, 2)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._conn = conn
            self.client_id = client_id
            self.epoch += 1
            self._recent.clear()
            self._floor = self.seq
            self.up = True
        loop.add_reader(sock.fileno(), self._read_ready)
        log.debug("near_cache_tracking", client_id=client_id, prefixes=len(prefixes))

    async def _exchange(self, conn: _Socket, request: bytes, count: int) -> list[Any]:
        await conn.send(self.loop, request)
        buf = bytearray()
        replies: list[Any] = []
        pos = 0
        while len(replies) < count:
            try:
                reply, pos = _parse(buf, pos)
            except _Incomplete:
                buf += await conn.recv(self.loop)
                continue
            if isinstance(reply, RuntimeError):
                raise reply
            replies.append(reply)
        self._buf = bytearray(buf[pos:])
        return replies

    def close(self) -> None:
        """Stop tracking and close the connection (tests, shutdown)."""
        if self._task is not None and not self._task.done() and not self.loop.is_closed():
            self._task.cancel()
        self._lost(None)


class NearCache:
    """One FastRDB instance's entries for one tracker: key → (the bytes Redis held, groups)."""

    __slots__ = ("__weakref__", "_entries", "_groups", "hits", "invalidations", "size", "tracker")

    def __init__(self, tracker: Tracker, size: int) -> None:
        self.tracker = tracker
        self.size = size
        self._entries: OrderedDict[str, tuple[bytes, tuple[str, ...]]] = OrderedDict()
        self._groups: dict[str, set[str]] = {}
        self.invalidations = 0
        """Entries dropped because Redis or a commit of this process said they changed."""

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> bytes | None:
        """The stored bytes of ``key`` once delivered invalidations are applied, or None
        (absent, or tracking is not up)."""
        tracker = self.tracker
        tracker.drain()
        if not tracker.up:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        try:
            self._entries.move_to_end(key)
        except KeyError:  # dropped meanwhile by a commit in another thread
            return None
        return entry[0]

    def store(self, key: str, groups: tuple[str, ...], raw: bytes | str, ticket: Ticket) -> bool:
        """Keep ``raw`` for ``key`` if nothing concerning it was invalidated since ``ticket``."""
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        tracker = self.tracker
        with tracker.lock:
            if not tracker.allows(ticket, key, groups):
                return False
            entries = self._entries
            old = entries.pop(key, None)
            if old is not None:
                self._unlink(key, old[1])
            entries[key] = (data, groups)
            for group in groups:
                self._groups.setdefault(group, set()).add(key)
            while len(entries) > self.size:
                evicted, (_, evicted_groups) = entries.popitem(last=False)
                self._unlink(evicted, evicted_groups)
        return True

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._unlink(key, entry[1])

    def _unlink(self, key: str, groups: tuple[str, ...]) -> None:
        for group in groups:
            members = self._groups.get(group)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._groups[group]

    def drop(self, names: Iterable[str]) -> None:
        """Drop the entries of these keys and groups (the tracker's lock is held)."""
        entries = self._entries
        if not entries:
            return
        for name in names:
            entry = entries.pop(name, None)
            if entry is not None:
                self.invalidations += 1
                self._unlink(name, entry[1])
            members = self._groups.pop(name, None)
            if members:
                for key in list(members):
                    dropped = entries.pop(key, None)
                    if dropped is not None:
                        self.invalidations += 1
                        self._unlink(key, dropped[1])

    def clear(self, *, counted: bool) -> None:
        if counted:
            self.invalidations += len(self._entries)
        self._entries.clear()
        self._groups.clear()


_trackers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Tracker]] = (
    weakref.WeakKeyDictionary()
)
_all: weakref.WeakSet[Tracker] = weakref.WeakSet()
_ADDRESS = ("host", "port", "path", "username", "password", "credential_provider")


def tracker_for(
    loop: asyncio.AbstractEventLoop, address: dict[str, Any], tls: ssl.SSLContext | None = None
) -> Tracker:
    """The tracker of the server at ``address`` (host, port or path, credentials) in ``loop``,
    reached over TLS with ``tls`` when given."""
    # Only what tracking needs: the pool's own keyword arguments hold objects that reach its
    # connections and, through them, the loop.
    address = {name: address.get(name) for name in _ADDRESS}
    identity = (*address.values(), tls is not None)
    per_loop = _trackers.get(loop)
    if per_loop is None:
        per_loop = _trackers[loop] = {}
    tracker = per_loop.get(identity)
    if tracker is None:
        tracker = per_loop[identity] = Tracker(loop, address, tls)
        _all.add(tracker)
    return tracker


def forget(tables: Iterable[str], row_keys: Iterable[str]) -> None:
    """A commit of this process dropped these row keys, the lists of these tables and the
    entries embedding their rows: drop them from every near cache now, and refuse stores of
    reads that began before."""
    if not _all:
        return
    names = list(row_keys)
    for table in tables:
        names += (list_group(table), embeds_group(table))
    for tracker in list(_all):
        tracker.invalidate(names)


async def _credentials(address: dict[str, Any]) -> tuple[str, ...]:
    """``(password,)`` or ``(username, password)`` as the client authenticates: from its
    ``credential_provider`` (asked each time, as redis-py does: tokens expire) or its
    ``username``/``password``; empty for none."""
    provider = address.get("credential_provider")
    if provider is not None:
        return tuple(await provider.get_credentials_async())
    password = address.get("password")
    if not password:
        return ()
    username = address.get("username")
    return (username, password) if username else (password,)


def _tls_context(pool: Any) -> ssl.SSLContext | Literal[False] | None:
    """The TLS settings of the pool's connections (``rediss://``, ``ssl_*`` arguments), made
    by redis-py itself so that every setting carries over; None without TLS; False for a TLS
    connection class whose settings can't be read."""
    connection_class = getattr(pool, "connection_class", None)
    if not isinstance(connection_class, type) or not issubclass(connection_class, SSLConnection):
        return None
    connection = connection_class(**pool.connection_kwargs)  # not connected: settings only
    made = getattr(getattr(connection, "ssl_context", None), "get", None)
    context = made() if callable(made) else None
    return context if isinstance(context, ssl.SSLContext) else False


class NearCaches:
    """The near caches of one FastRDB instance: one per event loop and Redis server."""

    __slots__ = ("_by_tracker", "_last", "_prefixes", "size")

    def __init__(self, size: int, patterns: Iterable[str]) -> None:
        self.size = size
        self._prefixes = _normalized(literal_prefix(text) for text in patterns)
        self._by_tracker: weakref.WeakKeyDictionary[Tracker, NearCache] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[Any, asyncio.AbstractEventLoop, NearCache | None] | None = None

    def of(self, client: Any) -> NearCache | None:
        """The near cache to use with ``client`` in the running loop; None for a client it
        cannot track (not a plain TCP/Unix-socket connection pool). A Redis Cluster client
        raises ``ConfigurationError`` naming ``near_cache_size``."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is client and last[1] is loop:
            return last[2]
        near = self._bind(client, loop)
        self._last = (client, loop, near)
        return near

    def _bind(self, client: Any, loop: asyncio.AbstractEventLoop) -> NearCache | None:
        if isinstance(client, RedisCluster | AsyncRedisCluster):
            raise ConfigurationError(
                "near_cache_size",
                "the near cache does not support Redis Cluster clients; set it to 0",
            )
        pool = getattr(client, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", None)
        try:
            tls = _tls_context(pool)
        except Exception as exc:  # the client's own TLS settings are unusable: it fails too
            log.warning("near_cache_unsupported_client", error=type(exc).__name__)
            return None
        if not isinstance(kwargs, dict) or tls is False:
            log.warning("near_cache_unsupported_client", client=type(client).__name__)
            return None
        tracker = tracker_for(loop, kwargs, tls)
        near = self._by_tracker.get(tracker)
        if near is None:
            near = self._by_tracker[tracker] = NearCache(tracker, self.size)
        tracker.attach(near, self._prefixes)
        return near

    @property
    def invalidations(self) -> int:
        return sum(near.invalidations for near in self._by_tracker.values())
