"""MariaDB's binlog read as a replica: the dump connection, each event's header, and the few
events capture reads (blocking; :mod:`fastrdb.capture.mariadb` runs it in a thread).

``mysql-replication``'s stream reader made several Python objects per event and decoded every
row image column by column through them: with one-row transactions (four events each: GTID,
table map, rows, XID) that was most of capture's CPU. Here an event is one ``bytes``: its
header is one ``struct`` call, events capture ignores cost nothing more, a table map is
decoded by the package once per table id, and a rows event's images are read by
:class:`~fastrdb.capture.rowimages.TableImages` (the package decodes the events of the tables
it cannot read).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, NoReturn

from fastrdb.capture.rowimages import Image, TableImages

__all__ = ["Dump", "Event", "RowsEvent", "TableMaps"]

QUERY, ROTATE, FORMAT_DESCRIPTION, XID, TABLE_MAP, HEARTBEAT = 2, 4, 15, 16, 19, 27
WRITE_ROWS = (23, 30)
UPDATE_ROWS = (24, 31)
DELETE_ROWS = (25, 32)
ROWS = frozenset((*WRITE_ROWS, *UPDATE_ROWS, *DELETE_ROWS))
_V2 = frozenset((30, 31, 32))
COMPRESSED = frozenset(range(165, 172))
"""MariaDB's compressed query and rows events (``log_bin_compress``)."""

_HEADER = struct.Struct("<xIBIIIH")
"""The OK byte, then the event header: timestamp, type, server id, size, next position, flags."""
_BODY = 20
_COM_BINLOG_DUMP = 0x12
_LOST = 2013  # CR_SERVER_LOST
_CHUNK = 1 << 16
"""Bytes asked of the socket at a time (it answers with what has arrived)."""


@dataclass(slots=True)
class Event:
    """One binlog event: its header's fields and its bytes (``data[20:end]`` is its body,
    without the checksum)."""

    kind: int
    timestamp: int
    position: int
    """Where the binlog continues after this event (0 for an artificial event)."""
    data: bytes
    end: int


def _lost(reason: str) -> Exception:
    import pymysql

    error: Exception = pymysql.err.OperationalError(_LOST, f"binlog stream: {reason}")
    return error


class Dump:
    """A ``COM_BINLOG_DUMP`` from ``file``/``offset`` on a connection of its own (the classic
    file/offset dump, which MariaDB serves, starting exactly there)."""

    def __init__(
        self,
        connect: Callable[..., Any],
        file: str,
        offset: int,
        server_id: int,
        heartbeat: float,
    ) -> None:
        self._connect = connect
        self.file = file
        self.offset = offset
        self.server_id = server_id
        self.heartbeat = heartbeat
        self.checksum = False
        self.mariadb = True
        self.post_headers: tuple[int, ...] = ()
        """Post-header length per event type (index: type - 1), from the format
        description event."""
        self._connection: Any = None
        self._read: Callable[[int], bytes] | None = None
        self.drained = True
        """Whether the last read from the socket took all it had (the server had sent no
        more yet)."""
        self.wanted: frozenset[int] | None = None
        """The kinds of event :meth:`next` returns (None: every kind)."""
        self.known_maps: Container[bytes] = ()
        """Table ids (their six bytes) whose table map events :meth:`next` reads past: the
        ids a :class:`TableMaps` knows already (:attr:`TableMaps.known`)."""
        self.before_wait: Callable[[], None] | None = None
        """Called before each read from the socket (which may wait for the server)."""
        self._buffer = b""
        """Bytes received and not yet returned, from ``_at`` on."""
        self._at = 0

    def open(self) -> None:
        # A read waits at most this long: the server sends a heartbeat every `heartbeat`
        # seconds when it has nothing else, so silence this long is a lost connection.
        silence = max(5.0, 10 * self.heartbeat)
        connection = self._connect(read_timeout=silence, write_timeout=silence)
        self._connection = connection
        with connection.cursor() as cursor:
            cursor.execute("SHOW GLOBAL VARIABLES LIKE 'BINLOG_CHECKSUM'")
            row = cursor.fetchone()
            self.checksum = row is not None and str(row[1]).upper() != "NONE"
            if self.checksum:
                cursor.execute("SET @master_binlog_checksum = @@global.binlog_checksum")
            cursor.execute("SET @master_heartbeat_period = %s", (int(self.heartbeat * 1e9),))
            # MariaDB 10.6.12 with a capability below 4 replaces GTID events with dummy ones
            # and fails on it (as mysql-replication notes); GTID events are ignored here.
            cursor.execute("SET @mariadb_slave_capability = 4")
        self.mariadb = "mariadb" in connection.get_server_info().lower()
        command = (
            struct.pack("<BIHI", _COM_BINLOG_DUMP, self.offset, 0, self.server_id)
            + self.file.encode()
        )
        # pymysql has no public call for a command whose answer is a stream of packets: the
        # private members mysql-replication uses, and the socket's buffered reader (the
        # socket keeps the write timeout: the same as the read timeout).
        connection._write_bytes(struct.pack("<I", len(command))[:3] + b"\x00" + command)
        connection._next_seq_id = 1
        self._read = connection._rfile.read1
        self._buffer, self._at = b"", 0

    def _fill(self, count: int) -> None:
        """Receive until ``count`` bytes wait in the buffer (blocking): :attr:`before_wait`
        first."""
        read = self._read
        if read is None:
            raise _lost("not open")
        if self.before_wait is not None:
            self.before_wait()
        chunks = [self._buffer[self._at :]]
        have = len(chunks[0])
        try:
            while have < count:
                asked = max(_CHUNK, count - have)
                more = read(asked)
                if not more:
                    raise _lost("connection closed")
                chunks.append(more)
                have += len(more)
                self.drained = len(more) < asked
        except OSError as exc:  # a timeout, a reset
            raise _lost(type(exc).__name__) from exc
        self._buffer, self._at = b"".join(chunks), 0

    def _packet(self) -> bytes:
        """One protocol packet's payload."""
        buffer, at = self._buffer, self._at
        if len(buffer) - at < 4:
            self._fill(4)
            buffer, at = self._buffer, 0
        end = at + 4 + (buffer[at] | buffer[at + 1] << 8 | buffer[at + 2] << 16)
        if end > len(buffer):
            self._fill(end - at)
            buffer, end, at = self._buffer, end - at, 0
        self._at = end
        return buffer[at + 4 : end]

    def next(self) -> Event:
        """The next event (blocking) of a kind in :attr:`wanted` (all of them if None): the
        others are read past without making an :class:`Event` (a rotate and the format
        description still update the dump). Raises pymysql's ``OperationalError`` when the
        connection is lost or the server refuses the dump."""
        wanted = self.wanted
        while True:
            buffer, at = self._buffer, self._at
            end = at + 4
            if end <= len(buffer):  # a whole packet received: read in line (most are)
                end += buffer[at] | buffer[at + 1] << 8 | buffer[at + 2] << 16
            if end <= len(buffer) and end - at - 4 < 0xFFFFFF:
                self._at = end
                data = buffer[at + 4 : end]
            else:
                data = chunk = self._packet()
                while len(chunk) == 0xFFFFFF:  # a packet continued in the next one
                    chunk = self._packet()
                    data += chunk
            if not data or data[0] != 0:
                self._refused(data)
            kind = data[5]
            if kind == ROTATE:
                end = len(data) - 4 if self.checksum else len(data)
                self.file = data[_BODY + 8 : end].decode()
            elif kind == FORMAT_DESCRIPTION:
                self.post_headers = tuple(data[_BODY + 57 : _BODY + 57 + 40])
            if wanted is not None and kind not in wanted:
                continue
            if kind == TABLE_MAP and data[_BODY : _BODY + 6] in self.known_maps:
                continue  # one per transaction: its table is known
            timestamp, _, _, _, position, _ = _HEADER.unpack_from(data)
            end = len(data) - 4 if self.checksum else len(data)
            return Event(kind, timestamp, position, data, end)

    @staticmethod
    def _refused(data: bytes) -> NoReturn:
        """A packet that is no event: the server's error, or the end of the dump."""
        if not data:
            raise _lost("an empty packet")
        if data[0] == 0xFF:
            import pymysql

            pymysql.err.raise_mysql_exception(data)
        raise _lost("end of the dump")

    def post_header(self, kind: int, default: int) -> int:
        lengths = self.post_headers
        return lengths[kind - 1] if len(lengths) >= kind and lengths[kind - 1] else default

    def close(self) -> None:
        connection, self._connection, self._read = self._connection, None, None
        self._buffer, self._at = b"", 0
        if connection is not None:
            with contextlib.suppress(Exception):  # a lost connection may refuse the QUIT
                connection.close()


def query(dump: Dump, event: Event) -> tuple[str, str]:
    """A query event's default schema and statement."""
    data = event.data
    schema_length = data[_BODY + 8]
    status_length = data[_BODY + 11] | data[_BODY + 12] << 8
    start = _BODY + dump.post_header(QUERY, 13) + status_length
    schema = data[start : start + schema_length].decode()
    statement = data[start + schema_length + 1 : event.end].decode("utf-8", "backslashreplace")
    return schema, statement


def table_id(event: Event) -> int:
    return int.from_bytes(event.data[_BODY : _BODY + 6], "little")


class _Control:
    """What the package's events ask of its control connection while decoding a table map
    (column names come from the table map's metadata: ``binlog_row_metadata=FULL``)."""

    charset = "utf8mb4"

    def __init__(self, dbms: str) -> None:
        self.dbms = dbms

    def _get_dbms(self) -> str:
        return self.dbms


@dataclass(slots=True)
class RowsEvent:
    """A rows event's table and images (an update's before and after images alternate)."""

    kind: int
    schema: str
    table: str
    images: list[Image]


class TableMaps:
    """The table maps seen on one dump, by table id: a table id names one table definition
    until the server opens the table again (DDL, a flush: :meth:`clear`) or restarts (a new
    binlog file: cleared on a rotate event, as the package does)."""

    def __init__(self) -> None:
        self.tables: dict[int, Any] = {}
        """The package's ``Table`` per table id."""
        self.images: dict[int, TableImages] = {}
        self.known: set[bytes] = set()
        """The table ids of :attr:`tables` as logged (six bytes): a dump reading for these
        table maps reads past the maps of known tables (:attr:`Dump.known_maps`)."""

    def clear(self) -> None:
        self.tables.clear()
        self.images.clear()
        self.known.clear()

    def _wrap(self, dump: Dump, event: Event, allowed: set[Any]) -> Any:
        from pymysql.protocol import MysqlPacket
        from pymysqlreplication.packet import BinLogPacketWrapper

        return BinLogPacketWrapper(
            MysqlPacket(event.data, "utf8mb4"),
            self.tables,
            _Control("mariadb" if dump.mariadb else "mysql"),
            (0, 0, 0),
            dump.checksum,
            allowed,
            None,
            None,
            None,
            None,
            True,  # freeze_schema
            False,  # ignore_decode_errors
            False,  # verify_checksum
            True,  # optional_meta_data
            False,  # enable_logging
            False,  # use_column_name_cache
            dump.post_headers or None,
        ).event

    def learn(self, dump: Dump, event: Event) -> None:
        """Decode a table map event, unless its table id is known."""
        number = int.from_bytes(event.data[_BODY : _BODY + 6], "little")  # table_id(), in line
        if number in self.tables:
            return
        from pymysqlreplication.row_event import TableMapEvent

        decoded = self._wrap(dump, event, {TableMapEvent})
        if decoded is not None:
            table = decoded.get_table()
            self.tables[number] = table
            self.images[number] = TableImages(table)
            self.known.add(event.data[_BODY : _BODY + 6])

    def rows(self, dump: Dump, event: Event) -> RowsEvent | None:
        """A rows event's images (None for a table whose map was not seen)."""
        data = event.data
        reader = self.images.get(int.from_bytes(data[_BODY : _BODY + 6], "little"))
        if reader is None:
            return None
        if not reader.supported:
            return self._package_rows(dump, event, reader)
        if event.kind in _V2:
            extra = data[_BODY + 8] | data[_BODY + 9] << 8
            pos = _BODY + dump.post_header(event.kind, 10) + max(extra - 2, 0)
        else:
            pos = _BODY + dump.post_header(event.kind, 8)
        first = data[pos]
        if first < 251:
            count, pos = first, pos + 1
        elif first == 252:
            count, pos = data[pos + 1] | data[pos + 2] << 8, pos + 3
        else:
            raise _lost(f"a rows event of {first} columns")  # 251: NULL, 253+: 2^16 and more
        parts = 2 if event.kind in UPDATE_ROWS else 1  # an update: before and after images
        width = (count + 7) // 8 * parts
        images = reader.images(data, pos + width, event.end, data[pos : pos + width], parts)
        return RowsEvent(event.kind, reader.schema, reader.table, images)

    def _package_rows(self, dump: Dump, event: Event, reader: TableImages) -> RowsEvent | None:
        """The images as the package decodes them (a column type with no reader here)."""
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        decoded = self._wrap(dump, event, {WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent})
        if decoded is None:
            return None
        images: list[Image] = []
        for row in decoded.rows:
            if event.kind in UPDATE_ROWS:
                images.append(_present(row, "before_values", "before_none_sources"))
                images.append(_present(row, "after_values", "after_none_sources"))
            else:
                images.append(_present(row, "values", "none_sources"))
        return RowsEvent(event.kind, reader.schema, reader.table, images)


_ABSENT = "cols bitmap"
"""``mysql-replication``'s none source of a column the row image left out
(``binlog_row_image=MINIMAL`` or ``NOBLOB``, which a session may set for itself)."""


def _present(row: dict[str, Any], values: str, sources: str) -> Image:
    """The columns a package-decoded row image holds (the ones it left out are not NULL:
    they are unknown), and whether it holds every column."""
    image: dict[str, Any] = row[values]
    absent = [name for name, source in row.get(sources, {}).items() if source == _ABSENT]
    if not absent:
        return image, True
    return {name: value for name, value in image.items() if name not in absent}, False
