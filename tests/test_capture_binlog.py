"""MariaDB's binlog as capture reads it (fastrdb.capture.binlog, fastrdb.capture.rowimages):
every row image the same, value for value and type for type, as mysql-replication decodes it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import DATABASES
from tests.dbservers import MariaDBServer

pytestmark = pytest.mark.skipif("mariadb" not in DATABASES, reason="MariaDB not selected")

pymysql = pytest.importorskip("pymysql")
pytest.importorskip("pymysqlreplication")

from fastrdb.capture import binlog, mariadb, rowimages  # noqa: E402
from fastrdb.capture.binlog import Dump, TableMaps  # noqa: E402
from fastrdb.capture.rowimages import TableImages  # noqa: E402

TYPED = """CREATE TABLE typed (
    id BIGINT UNSIGNED PRIMARY KEY,
    i INT, u INT UNSIGNED, t TINYINT, tu TINYINT UNSIGNED, flag TINYINT(1), s SMALLINT,
    su SMALLINT UNSIGNED, m MEDIUMINT, mu MEDIUMINT UNSIGNED, b BIGINT,
    d DECIMAL(12,3), d2 DECIMAL(30,10), d3 DECIMAL(5,0), d4 DECIMAL(20,19),
    f FLOAT, g DOUBLE,
    dt DATETIME, dt6 DATETIME(6), dt3 DATETIME(3), ts TIMESTAMP NULL, ts2 TIMESTAMP(2) NULL,
    dd DATE, tm TIME, tm5 TIME(5), y YEAR,
    c CHAR(32), cl CHAR(10) CHARACTER SET latin1, vc VARCHAR(40), vl VARCHAR(300),
    vb VARBINARY(20), bn BINARY(4), tx TEXT, mt MEDIUMTEXT, lt LONGTEXT, tb TINYBLOB, bl BLOB,
    js JSON, e ENUM('red', 'green', 'blue'), u8 VARCHAR(10) CHARACTER SET utf8mb3,
    uid UUID
)"""

ODD = """CREATE TABLE odd (
    id INT PRIMARY KEY, bits BIT(10), tags SET('a', 'b', 'c'), name VARCHAR(20)
)"""

ROWS = [
    "(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1.5, 1.5, 1, 0.5, 1.5, 1.5,"
    " '2026-11-30 10:00:00', '2026-11-30 10:00:00.123456', '2026-11-30 10:00:00.5',"
    " '2026-11-30 10:00:00', '2026-11-30 10:00:00.25', '2026-11-30', '10:11:12',"
    " '-01:02:03.12345', 2026, 'abc', 'caf\xe9', 'x', REPEAT('v', 280), x'00ff', x'01020304',"
    " 'text \u2603', 'medium', 'long', x'beef', x'cafe', '{\"a\": [1, 2]}', 'green',"
    " 'u8', '123e4567-e89b-12d3-a456-426614174000')",
    "(2, -2147483648, 4294967295, -128, 255, 0, -32768, 65535, -8388608, 16777215,"
    " -9223372036854775808, -123456789.125, -12345678901234567890.0123456789, -99999,"
    " -0.1234567890123456789, -3.25, -1e300, '1000-01-01 00:00:00',"
    " '9999-12-31 23:59:59.999999', '2000-02-29 12:34:56.789', '1970-01-01 00:00:01',"
    " '2038-01-19 03:14:07.99', '9999-12-31', '-838:59:59', '838:59:59.99999', 1901, '',"
    " '', '', '', x'', x'00000000', '', '', '', x'', x'', '[]', 'red', '',"
    " '00000000-0000-0000-0000-000000000000')",
    "(18446744073709551615, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL)",
    "(3, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '0000-00-00 00:00:00',"
    " '2026-01-01 00:00:00.000001', '2026-01-01 00:00:00.001', NULL, NULL, '0000-00-00',"
    " '00:00:00', '-00:00:00.00001', 0, 'c', 'c', 'v', 'w', x'41', x'41424344', 't', 'm',"
    " 'l', x'42', x'43', 'null', 'blue', 'x', NULL)",
]


@pytest.fixture(scope="module")
def server() -> Iterator[MariaDBServer]:
    server = MariaDBServer().start()
    yield server
    server.stop()


def _connect(server: MariaDBServer, **settings: Any) -> Any:
    return pymysql.connect(
        host="127.0.0.1", port=server.port, user="root", autocommit=True, **settings
    )


def _write(server: MariaDBServer) -> tuple[str, int, int]:
    """Inserts, updates and deletes of every column type, in full and minimal row images;
    the binlog file, and the positions before and after them."""
    connection = _connect(server, database="capture")
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION sql_mode = ''")  # zero dates are allowed
        cursor.execute("DROP TABLE IF EXISTS typed, odd")
        cursor.execute(TYPED)
        cursor.execute(ODD)
        cursor.execute("SHOW MASTER STATUS")
        file, start = cursor.fetchone()[:2]
        cursor.execute("SET time_zone = '+00:00'")
        for row in ROWS:
            cursor.execute(f"INSERT INTO typed VALUES {row}")
        cursor.execute("UPDATE typed SET i = i + 1, vc = CONCAT(vc, 'z') WHERE id < 3")
        cursor.execute("INSERT INTO odd VALUES (1, b'1010101010', 'a,c', 'o'), (2, 0, '', NULL)")
        cursor.execute("UPDATE odd SET bits = b'1', tags = 'b', name = 'p'")
        cursor.execute("BEGIN")
        cursor.execute("UPDATE typed SET tx = 'in a transaction' WHERE id = 1")
        cursor.execute("DELETE FROM odd WHERE id = 2")
        cursor.execute("COMMIT")
        cursor.execute("SET SESSION binlog_row_image = 'MINIMAL'")
        cursor.execute("UPDATE typed SET vc = 'minimal' WHERE id = 1")
        cursor.execute("UPDATE odd SET name = 'minimal' WHERE id = 1")
        cursor.execute("DELETE FROM typed WHERE id = 2")
        cursor.execute("SET SESSION binlog_row_image = 'FULL'")
        cursor.execute("DELETE FROM typed")
        cursor.execute("DELETE FROM odd")
        cursor.execute("SHOW MASTER STATUS")
        end = cursor.fetchone()[1]
    connection.close()
    return file, start, end


def _typed(images: list[tuple[dict[str, Any], bool]]) -> list[Any]:
    """Each value with its type (1.5 and Decimal('1.50'), 1 and True differ)."""
    return [
        (sorted((name, type(value).__name__, repr(value)) for name, value in image.items()), full)
        for image, full in images
    ]


def _package(server: MariaDBServer, file: str, start: int, end: int) -> list[Any]:
    """The row images as mysql-replication's stream reader decodes them."""
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

    stream = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": server.port, "user": "root"},
        server_id=0x5FA50001,
        log_file=file,
        log_pos=start,
        resume_stream=True,
        blocking=False,
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
        pymysql_wrapper=mariadb._connect,  # PyMySQL's keyword names
    )
    found: list[Any] = []
    try:
        for event in stream:
            if event.packet.log_pos > end:
                break
            images = []
            for row in event.rows:
                if isinstance(event, UpdateRowsEvent):
                    images.append(binlog._present(row, "before_values", "before_none_sources"))
                    images.append(binlog._present(row, "after_values", "after_none_sources"))
                else:
                    images.append(binlog._present(row, "values", "none_sources"))
            found.append((event.schema, event.table, _typed(images)))
    finally:
        stream.close()
    return found


def _ours(server: MariaDBServer, file: str, start: int, end: int) -> tuple[list[Any], TableMaps]:
    dump = Dump(lambda **settings: _connect(server, **settings), file, start, 0x5FA50002, 0.2)
    dump.wanted = mariadb._WANTED  # as capture reads it
    tables = TableMaps()
    found: list[Any] = []
    dump.open()
    try:
        while True:
            event = dump.next()
            if event.kind == binlog.TABLE_MAP:
                tables.learn(dump, event)
            elif event.kind in binlog.ROWS:
                rows = tables.rows(dump, event)
                assert rows is not None
                found.append((rows.schema, rows.table, _typed(rows.images)))
            if event.position >= end:
                break
    finally:
        dump.close()
    return found, tables


@pytest.mark.parametrize("plans", [rowimages.MAX_PLANS, 0], ids=["generated", "called"])
def test_images_match_the_package(
    server: MariaDBServer, plans: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row image of every column type (NULLs, extremes, zero dates, minimal images) is
    read as mysql-replication reads it: by the code generated per columns-present bitmap,
    and past :data:`~fastrdb.capture.rowimages.MAX_PLANS` by the readers one call at a
    time."""
    monkeypatch.setattr(rowimages, "MAX_PLANS", plans)
    file, start, end = _write(server)
    expected = _package(server, file, start, end)
    found, tables = _ours(server, file, start, end)
    assert len(found) == len(expected) >= 10
    for got, wanted in zip(found, expected, strict=True):
        assert got[:2] == wanted[:2]
        for (image, full), (wanted_image, wanted_full) in zip(got[2], wanted[2], strict=True):
            assert full == wanted_full
            assert [v for v in image if v not in wanted_image] == [
                v for v in wanted_image if v not in image
            ]
    kinds = {(images.table, images.supported) for images in tables.images.values()}
    assert kinds == {("typed", True), ("odd", False)}  # odd: BIT and SET, the package's


def test_minimal_images_are_incomplete(server: MariaDBServer) -> None:
    """Columns a MINIMAL row image leaves out are absent, not NULL, and the image is marked
    incomplete."""
    file, start, end = _write(server)
    found, _ = _ours(server, file, start, end)
    minimal = [images for _, table, images in found if table == "typed" and not images[0][1]]
    assert minimal
    before, _ = minimal[0][0]
    assert [name for name, _, _ in before] == ["id"]


def test_a_lost_dump_connection_is_a_database_error(server: MariaDBServer) -> None:
    """A dump whose connection is gone raises pymysql's OperationalError (the capture loop
    reopens the source from the stored position)."""
    connection = _connect(server)
    with connection.cursor() as cursor:
        cursor.execute("SHOW MASTER STATUS")
        file, position = cursor.fetchone()[:2]
    dump = Dump(lambda **settings: _connect(server, **settings), file, position, 0x5FA50003, 0.2)
    dump.open()
    with connection.cursor() as cursor:
        cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog%'")
        for (thread,) in cursor.fetchall():
            cursor.execute(f"KILL {int(thread)}")
    connection.close()

    def follow() -> None:
        for _ in range(100):
            dump.next()

    with pytest.raises(pymysql.err.OperationalError):
        follow()
    dump.close()


def test_unsupported_column_types_have_no_reader() -> None:
    """A column type without a reader makes the table the package's to decode."""

    class Column:
        type = 16  # BIT
        name = "bits"

    class Table:
        schema, table, columns = "s", "t", [Column()]

    assert not TableImages(Table()).supported


def _rotated(
    server: MariaDBServer, table: str, columns: str, before: str, after: str
) -> tuple[str, int, str, int]:
    """Create ``table``, insert the row ``before``, rotate the binlog, insert ``after``: the
    binlog file and position before the first insert, and the new file and its end."""
    connection = _connect(server, database="capture")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(f"CREATE TABLE {table} ({columns})")
        cursor.execute("SHOW MASTER STATUS")
        file, position = cursor.fetchone()[:2]
        cursor.execute(f"INSERT INTO {table} VALUES {before}")
        cursor.execute("FLUSH BINARY LOGS")
        cursor.execute(f"INSERT INTO {table} VALUES {after}")
        cursor.execute("SHOW MASTER STATUS")
        new_file, end = cursor.fetchone()[:2]
    connection.close()
    assert new_file != file
    return file, position, new_file, end


def test_a_rotated_binlog_is_followed(server: MariaDBServer) -> None:
    """After FLUSH BINARY LOGS the dump names the new file, its positions are the server's,
    and the new file's rows are read (its table maps decoded afresh)."""
    file, position, new_file, end = _rotated(
        server, "rotated", "id INT PRIMARY KEY, name VARCHAR(20)", "(1, 'before')", "(2, 'after')"
    )
    dump = Dump(lambda **settings: _connect(server, **settings), file, position, 0x5FA50004, 0.2)
    tables = TableMaps()
    names: list[Any] = []
    commits: list[tuple[str, int]] = []
    dump.open()
    try:
        while (dump.file, commits[-1][1] if commits else 0) != (new_file, end):
            event = dump.next()
            if event.kind == binlog.TABLE_MAP:
                tables.learn(dump, event)
            elif event.kind in binlog.ROWS:
                rows = tables.rows(dump, event)
                assert rows is not None
                names.extend(image["name"] for image, _ in rows.images)
            elif event.kind == binlog.ROTATE and event.timestamp:
                tables.clear()
            elif event.kind == binlog.XID:
                commits.append((dump.file, event.position))
    finally:
        dump.close()
    assert names == ["before", "after"]
    assert commits[0][0] == file
    assert commits[-1] == (new_file, end)


def test_a_dump_reads_past_the_kinds_not_wanted(server: MariaDBServer) -> None:
    """A dump asked for some kinds of event returns those alone, at the positions a dump of
    every kind gives them, and still follows a rotate it was not asked for."""
    file, position, new_file, end = _rotated(server, "skipped", "id INT PRIMARY KEY", "(1)", "(2)")

    def commits(wanted: frozenset[int] | None) -> tuple[list[tuple[str, int]], set[int]]:
        dump = Dump(
            lambda **settings: _connect(server, **settings), file, position, 0x5FA50006, 0.2
        )
        dump.wanted = wanted
        found: list[tuple[str, int]] = []
        kinds: set[int] = set()
        dump.open()
        try:
            while not found or found[-1] != (new_file, end):
                event = dump.next()
                kinds.add(event.kind)
                if event.kind == binlog.XID:
                    found.append((dump.file, event.position))
        finally:
            dump.close()
        return found, kinds

    every, every_kind = commits(None)
    xids, kinds = commits(frozenset({binlog.XID}))
    assert xids == every
    assert [name for name, _ in xids] == [file, new_file]
    assert kinds == {binlog.XID} < every_kind


def test_the_table_maps_of_known_tables_are_read_past(server: MariaDBServer) -> None:
    """Each transaction logs its tables' maps again: a dump given the ids its table maps know
    returns a table's map once (until they are cleared), and every rows event is still
    read."""
    connection = _connect(server, database="capture")
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS mapped")
        cursor.execute("CREATE TABLE mapped (id INT PRIMARY KEY, name VARCHAR(20))")
        cursor.execute("SHOW MASTER STATUS")
        file, position = cursor.fetchone()[:2]
        for n in range(3):
            cursor.execute("INSERT INTO mapped VALUES (%s, %s)", (n, f"n{n}"))
        cursor.execute("SHOW MASTER STATUS")
        end = cursor.fetchone()[1]
    connection.close()
    dump = Dump(lambda **settings: _connect(server, **settings), file, position, 0x5FA50007, 0.2)
    tables = TableMaps()
    dump.known_maps = tables.known
    maps = 0
    names: list[Any] = []
    dump.open()
    try:
        while True:
            event = dump.next()
            if event.kind == binlog.TABLE_MAP:
                maps += 1
                tables.learn(dump, event)
            elif event.kind in binlog.ROWS:
                rows = tables.rows(dump, event)
                assert rows is not None
                names.extend(image["name"] for image, _ in rows.images)
            if event.kind == binlog.XID and event.position >= end:
                break
    finally:
        dump.close()
    assert (maps, names) == (1, ["n0", "n1", "n2"])
    tables.clear()
    assert not dump.known_maps


def test_a_refused_dump_raises_the_servers_error(server: MariaDBServer) -> None:
    """A dump the server refuses (a binlog file it does not have) raises its error as
    pymysql's exception."""
    dump = Dump(
        lambda **settings: _connect(server, **settings), "absent.000001", 4, 0x5FA50005, 0.2
    )
    dump.open()
    try:
        with pytest.raises(pymysql.err.MySQLError, match=r"log"):
            dump.next()  # the artificial rotate event comes first on success only
    finally:
        dump.close()


def test_compressed_events_stop_capture(server: MariaDBServer) -> None:
    """A binlog compressed by the server (log_bin_compress) is refused at start, and a
    compressed event met while reading stops capture, instead of its rows going unseen."""
    from fastrdb.capture.mariadb import MariaDBSource, ServerAddress
    from fastrdb.capture.source import CaptureSetupError

    source = MariaDBSource(
        ServerAddress("127.0.0.1", server.port, "root", "", "capture"), "c", None
    )
    connection = _connect(server, database="capture")
    try:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS squeezed")
            cursor.execute("CREATE TABLE squeezed (id INT PRIMARY KEY, name TEXT)")
            cursor.execute("SHOW MASTER STATUS")
            position = cursor.fetchone()[:2]
            cursor.execute("SET GLOBAL log_bin_compress_min_len = 10")
            cursor.execute("SET GLOBAL log_bin_compress = ON")
            with pytest.raises(CaptureSetupError, match="log_bin_compress"):
                source._check()
            cursor.execute("INSERT INTO squeezed VALUES (1, REPEAT('x', 1000))")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET GLOBAL log_bin_compress = OFF")
        connection.close()
    with pytest.raises(CaptureSetupError, match="log_bin_compress"):
        source._stream((str(position[0]), int(position[1])))
