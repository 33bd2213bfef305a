"""A logical replication slot streamed over PostgreSQL's replication protocol (libpq through
``psycopg.pq``), read from asyncio.

``START_REPLICATION SLOT … LOGICAL`` makes the server's walsender keep one decoding context
and push each committed transaction once, as it commits. Polling the slot over SQL
(``pg_logical_slot_peek_changes``) instead sets up a context per call and decodes again
everything since the slot's ``restart_lsn`` — which moves only at the server's running-xacts
records, about every 15 s — so each poll, and each ``pg_replication_slot_advance``, costs in
proportion to up to 15 s of WAL: measured here, 5 ms right after such a record and 40 ms
15 s later, at 1,000 row changes per second.

Nothing is confirmed until :meth:`WalStream.confirm`, which sends a standby status update
(the slot's ``confirmed_flush_lsn``): a restart resumes after the last confirmed position.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import struct
import time
from collections import deque
from typing import Any

__all__ = ["StreamError", "WalStream", "format_lsn", "parse_lsn"]

REPORT_EVERY = 0.1
"""Seconds between two reports of the confirmed position while changes stream in."""

_EPOCH_2000 = 946_684_800  # PostgreSQL's timestamps count microseconds from 2000-01-01
_STATUS = struct.Struct(">cQQQqB")
_XLOG_HEADER = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class StreamError(RuntimeError):
    """The replication connection failed (the capture loop reconnects)."""


def _readable(socket: int) -> bool:
    """Whether ``socket`` has data to read now (without waiting). ``poll`` where there is
    one: ``select`` refuses descriptors past 1023, which an application's process may use."""
    if not hasattr(select, "poll"):
        return bool(select.select([socket], [], [], 0)[0])
    poller = select.poll()
    poller.register(socket, select.POLLIN)
    return bool(poller.poll(0))


def _now() -> int:
    return int((time.time() - _EPOCH_2000) * 1_000_000)


class WalStream:
    """One replication connection following ``slot`` with ``test_decoding``'s options."""

    def __init__(self, conninfo: str, slot: str, options: dict[str, str]) -> None:
        self.conninfo = conninfo
        self.slot = slot
        self.options = options
        self.received = 0
        """The server's position as last reported (data or keepalive): everything committed
        before it has been received."""
        self.confirmed = 0
        self._pending: deque[tuple[int, str]] = deque()
        self._pgconn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_status = 0.0
        self._reported = 0

    async def start(self) -> None:
        from psycopg import pq

        pgconn = await asyncio.to_thread(pq.PGconn.connect, self.conninfo.encode())
        if pgconn.status != pq.ConnStatus.OK:
            message = pgconn.error_message.decode(errors="replace")
            pgconn.finish()
            raise StreamError(f"replication connection failed: {message}")
        self._pgconn = pgconn
        options = ", ".join(f"\"{name}\" '{value}'" for name, value in self.options.items())
        command = f'START_REPLICATION SLOT "{self.slot}" LOGICAL 0/0 ({options})'
        pgconn.send_query(command.encode())
        result = await asyncio.to_thread(pgconn.get_result)
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = pgconn.error_message.decode(errors="replace")
            raise StreamError(f"START_REPLICATION refused: {message}")
        pgconn.nonblocking = 1
        self._loop = asyncio.get_running_loop()
        self._last_status = time.monotonic()

    def buffered(self) -> bool:
        return bool(self._pending)

    async def receive(self, wait: float, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` messages (LSN, text): every one the server has sent so far, else
        the first to arrive within ``wait`` seconds and whatever came with it."""
        self._drain_socket(limit)
        if not self._pending:
            if self.confirmed > self._reported:
                self._status(False)  # quiet: report what was confirmed now
            await self._readable_within(wait)
            self._drain_socket(limit)
        if time.monotonic() - self._last_status > 5:
            self._status(False)  # the server drops a silent replica (wal_sender_timeout)
        pending = self._pending
        if len(pending) <= limit:
            out = list(pending)
            pending.clear()
            return out
        return [pending.popleft() for _ in range(limit)]

    async def _readable_within(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for the socket to be readable (watched only meanwhile:
        a readable socket left watched would wake the event loop at every turn)."""
        assert self._loop is not None
        readable = asyncio.Event()
        socket = self._pgconn.socket
        self._loop.add_reader(socket, readable.set)
        try:
            async with asyncio.timeout(wait):
                await readable.wait()
        except TimeoutError:
            pass
        finally:
            self._loop.remove_reader(socket)

    def _drain_socket(self, limit: int) -> None:
        """Take in what the socket holds, until ``limit`` messages are pending.

        One ``consume_input`` takes at most what fits in libpq's buffer (16 KiB to begin
        with): under a stream faster than that per pause between two deliveries, a read of
        one buffer a pause fell behind for good (3,000 one-row commits a second, paused
        25 ms: a lag of 0.44 s median after 6 s, and growing). So the socket is read again
        as long as it has more."""
        pgconn = self._pgconn
        if pgconn is None:
            raise StreamError("replication connection closed")
        socket = pgconn.socket
        while True:
            pgconn.consume_input()
            self._parse_messages()
            if len(self._pending) >= limit or not _readable(socket):
                return

    def _parse_messages(self) -> None:
        """Move the complete messages libpq holds to the pending ones.

        This runs per message — three per transaction (BEGIN, a row, COMMIT) and about as
        many keepalives (a walsender that caught up sends one each time it waits) — so the
        loop looks names up once, decodes only XLogData, and reads a keepalive in place."""
        pgconn = self._pgconn
        get = pgconn.get_copy_data
        append = self._pending.append
        xlog = _XLOG_HEADER.unpack_from
        keepalive = _KEEPALIVE.unpack_from
        received = self.received
        try:
            while True:
                size, data = get(1)
                if size <= 0:
                    break
                kind = data[0]
                if kind == 0x77:  # 'w': XLogData
                    start, end, _ = xlog(data, 1)
                    append((start, str(data[25:], "utf-8")))
                elif kind == 0x6B:  # 'k': keepalive
                    end, _, reply = keepalive(data, 1)
                    if reply:
                        self.received = max(received, end)
                        self._status(False)
                else:
                    continue
                if end > received:
                    received = end
        finally:
            self.received = max(self.received, received)
        if size < 0:
            message = pgconn.error_message.decode(errors="replace")
            raise StreamError(f"replication stream ended: {message or 'closed'}")

    def _status(self, ping: bool) -> None:
        lsn = self.confirmed
        message = _STATUS.pack(b"r", lsn, lsn, lsn, _now(), 1 if ping else 0)
        self._pgconn.put_copy_data(message)
        self._pgconn.flush()
        self._last_status = time.monotonic()
        self._reported = lsn

    def confirm(self, lsn: int) -> None:
        """Make ``lsn`` the slot's confirmed position. No reply is awaited, and while changes
        stream in it is reported at most every :data:`REPORT_EVERY` seconds (it is
        reported at once when the stream goes quiet, and on :meth:`close`): a restart may
        receive again what was delivered since, which at-least-once allows."""
        if lsn > self.confirmed:
            self.confirmed = lsn
            if time.monotonic() - self._last_status >= REPORT_EVERY:
                self._status(False)

    def ping(self) -> None:
        """Ask the server for a keepalive, which reports how far it has sent."""
        self._status(True)

    def close(self) -> None:
        """Report what was confirmed (best effort) and disconnect."""
        pgconn = self._pgconn
        if pgconn is None:
            return
        with contextlib.suppress(Exception):  # gone: the next run receives it again
            if self.confirmed > self._reported:
                self._status(False)
        self._pgconn = None
        pgconn.finish()
