"""Reading test_decoding lines and turning logged rows into Changes (pure, no servers)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio
import redis.asyncio.cluster
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrdb.capture import CaptureSetupError, decoding
from fastrdb.capture.decoding import parse_change, parse_change_general
from fastrdb.capture.mariadb import ServerAddress
from fastrdb.capture.rows import RowChange, TableNames, Transaction, to_changes
from fastrdb.capture.urls import parse_database_url, redis_from_url
from fastrdb.cli import build_parser
from fastrdb.keys import Namespace
from fastrdb.schemes import Scheme


def test_values_arrive_in_the_types_a_select_gives() -> None:
    """Integers, numeric, booleans, uuid, timestamps and quoted text become Python values."""
    change = parse_change(
        "table public.t: INSERT: id[integer]:7 n[numeric(10,2)]:1.50 ok[boolean]:true"
        " u[uuid]:'6e3c0a4e-8d6e-4b8e-9c39-1a4a1b7a0c11'"
        " at[timestamp with time zone]:'2026-11-29 10:00:00.5+00' s[text]:'it''s'"
        " v[character varying(20)]:null a[integer[]]:'{1,2}'"
    )
    assert change is not None and change.after is not None
    assert change.after == {
        "id": 7,
        "n": Decimal("1.50"),
        "ok": True,
        "u": uuid.UUID("6e3c0a4e-8d6e-4b8e-9c39-1a4a1b7a0c11"),
        "at": datetime(2026, 11, 29, 10, 0, 0, 500000, tzinfo=UTC),
        "s": "it's",
        "v": None,
        "a": "{1,2}",
    }


def test_quoted_names_and_text_that_looks_like_syntax() -> None:
    """Quoted identifiers and values holding ' new-tuple: ' are read whole."""
    change = parse_change(
        'table "My Schema"."odd""name": UPDATE: old-key: "Full Name"[text]:\'a new-tuple: b\''
        " new-tuple: \"Full Name\"[text]:'c'"
    )
    assert change == RowChange(
        "My Schema", 'odd"name', "update", {"Full Name": "a new-tuple: b"}, {"Full Name": "c"}
    )


def test_an_update_without_old_values_is_incomplete() -> None:
    """With REPLICA IDENTITY DEFAULT an UPDATE that keeps the key logs no old values."""
    change = parse_change("table public.t: UPDATE: id[integer]:1 email[text]:'b'")
    assert change == RowChange("public", "t", "update", None, {"id": 1, "email": "b"}, False)


def test_unchanged_large_values_come_from_the_old_row() -> None:
    """An unchanged TOASTed value is taken from the pre-image, or left out."""
    change = parse_change(
        "table public.t: UPDATE: old-key: id[integer]:1 big[text]:'x' new-tuple:"
        " id[integer]:2 big[text]:unchanged-toast-datum"
    )
    assert change is not None and change.after == {"id": 2, "big": "x"}
    change = parse_change("table public.t: UPDATE: id[integer]:2 big[text]:unchanged-toast-datum")
    assert change is not None and change.after == {"id": 2}


def test_a_transaction_becomes_the_changes_the_session_hooks_produce() -> None:
    """Old and new values both name keys; default-schema tables count under both names."""
    transaction = Transaction(
        [RowChange("public", "users", "update", {"id": 1, "email": "a"}, {"id": 1, "email": "b"})]
    )
    changes = to_changes([transaction], TableNames("public"))
    plan = changes.plan({"users": [Scheme("row", "user:{email}")]}, Namespace("fastrdb"))
    assert plan.row_keys == ["user:a", "user:b"]
    assert set(changes.rows) == {"users", "public.users"}


def test_an_incomplete_pre_image_touches_the_table() -> None:
    """A pre-image without every column still names what it can, and the table is touched."""
    transaction = Transaction([RowChange("s", "t", "delete", {"id": 1}, None, False)])
    changes = to_changes([transaction], TableNames("public"))
    plan = changes.plan(
        {"s.t": [Scheme("row", "t:{id}"), Scheme("row", "t:{email}")]}, Namespace("fastrdb")
    )
    assert plan.row_keys == ["t:1"]
    assert "fastrdb:lists:s.t" in plan.registries


def test_tables_outside_the_chosen_ones_are_skipped() -> None:
    """--tables keeps only the named tables."""
    names = TableNames("public", ["users"])
    assert names("public", "users") == ("users", "public.users")
    assert names("public", "other") == ()


def test_the_capture_subcommand_parses_its_options() -> None:
    """fastrdb capture takes --database, --redis, --slot and --tables."""
    args = build_parser().parse_args(
        ["capture", "--database", "postgresql://h/db", "--redis", "redis://h", "--slot", "s"]
    )
    assert (args.database, args.redis, args.slot, args.tables) == (
        "postgresql://h/db",
        "redis://h",
        "s",
        None,
    )


def test_plain_and_sqlalchemy_urls_are_accepted() -> None:
    """postgresql://, postgresql+asyncpg://, mysql://, mariadb+asyncmy:// all name a source;
    SQLite is refused by name."""
    assert parse_database_url("postgresql+asyncpg://u:p%40ss@h:5433/db") == (
        "postgresql",
        "postgresql://u:p%40ss@h:5433/db",
    )
    for url in ("mysql://u:pw@h/db", "mariadb+asyncmy://u:pw@h:3306/db"):
        assert parse_database_url(url) == ("mariadb", ServerAddress("h", 3306, "u", "pw", "db"))
    with pytest.raises(CaptureSetupError, match="SQLite"):
        parse_database_url("sqlite:///x.db")


async def test_a_cluster_url_makes_a_cluster_client() -> None:
    """redis+cluster:// gives a Redis Cluster client, redis:// a plain one."""
    cluster = redis_from_url("redis+cluster://127.0.0.1:7000")
    plain = redis_from_url("redis://127.0.0.1:6379/5")
    assert isinstance(cluster, redis.asyncio.cluster.RedisCluster)
    assert isinstance(plain, redis.asyncio.Redis)
    await plain.aclose()
    await cluster.aclose()


def test_published_fields_round_trip_and_old_members_stay_readable() -> None:
    """A scheme with fields is published beside its plain form; readers keep the described
    one, and a plain member from an earlier version is read as before."""
    from fastrdb.schemes import Field, parse_members

    described = Scheme(
        "row",
        "user:{email_address}:{color}",
        (
            ("email_address", Field("email", "str")),
            ("color", Field("color", "enum", (("r", "RED"),))),
        ),
    )
    plain, full = described.members()
    assert plain == '["row","user:{email_address}:{color}"]'
    assert Scheme.from_member(full) == described
    assert parse_members([plain, full]) == [described]
    assert parse_members([plain]) == [Scheme("row", "user:{email_address}:{color}")]
    assert Scheme.from_member('["row","u:{a}",{"b":["b","str"]}]') is None  # wrong fields
    assert Scheme.from_member('["row","u:{a}",{"a":["a","nope"]}]') is None  # unknown kind


def test_logged_values_become_the_types_the_app_formats() -> None:
    """Capture turns logged values into the app's types before formatting a key: MariaDB's
    0/1, TIME as timedelta, a Uuid's 32 hex digits, an Enum's stored label."""
    from datetime import time, timedelta

    from fastrdb.capture.typed import scheme_values
    from fastrdb.keys import parse_pattern
    from fastrdb.schemes import Field

    scheme = Scheme(
        "row",
        "g:{ok}:{at}:{token}:{color}:{mail}",
        (
            ("ok", Field("ok", "bool")),
            ("at", Field("at", "time")),
            ("token", Field("token", "uuid")),
            ("color", Field("color", "enum", (("g", "GREEN"), ("r", "RED")))),
            ("mail", Field("email", "str")),
        ),
    )
    row = {
        "ok": 1,
        "at": timedelta(hours=10, minutes=30),
        "token": "6e3c0a4e8d6e4b8e9c391a4a1b7a0c11",
        "color": "r",
        "email": "a@x.io",
    }
    values = scheme_values(scheme, row)
    assert values is not None
    assert values["at"] == time(10, 30)
    assert parse_pattern(scheme.text).format(values) == (
        "g:%true:%time_10%3A30%3A00:%uuid_6e3c0a4e-8d6e-4b8e-9c39-1a4a1b7a0c11:%enum_RED:a@x.io"
    )
    assert scheme_values(scheme, {"ok": 1}) is None  # a column the row lacks


# Lines as test_decoding writes them (PostgreSQL 15-17, DateStyle ISO, TimeZone UTC): every
# type capture converts, types kept as text, NULLs, quoting, unchanged TOAST, quoted names.
DECODING_CORPUS = [
    "table public.t: INSERT: id[integer]:7 n[numeric(10,2)]:1.50 ok[boolean]:true"
    " u[uuid]:'6e3c0a4e-8d6e-4b8e-9c39-1a4a1b7a0c11'"
    " at[timestamp with time zone]:'2026-11-29 10:00:00.5+00' s[text]:'it''s'"
    " v[character varying(20)]:null a[integer[]]:'{1,2}'",
    "table public.t: INSERT: id[integer]:8 n[numeric(10,2)]:2.50 ok[boolean]:false"
    " u[uuid]:'6e3c0a4e-8d6e-4b8e-9c39-1a4a1b7a0c12'"
    " at[timestamp with time zone]:'2026-11-29 10:00:01+00' s[text]:'plain'"
    " v[character varying(20)]:'x' a[integer[]]:'{}'",
    "table public.nums: INSERT: a[smallint]:-3 b[bigint]:9223372036854775807 c[oid]:12"
    " d[real]:1.5 e[double precision]:-Infinity f[double precision]:NaN g[numeric]:NaN"
    " h[numeric]:-0.000001 i[double precision]:1e+300",
    "table public.times: INSERT: d[date]:'2026-02-28' t[time without time zone]:'10:30:00.25'"
    " ts[timestamp without time zone]:'2026-02-28 10:30:00' tz[timestamp with time zone]:"
    "'infinity' bc[date]:'0044-03-15 BC' ttz[time with time zone]:'10:30:00+02'"
    " iv[interval]:'1 day 02:00:00'",
    "table public.blobs: INSERT: b[bytea]:'\\x00ff10' e[bytea]:'\\x' bits[bit(4)]:B'0101'"
    " vb[bit varying(8)]:B'' j[jsonb]:'{\"a\": [1, \"b c\"]}' x[xml]:'<a b=\"c\"/>'",
    "table public.t: UPDATE: old-key: id[integer]:1 big[text]:'x' new-tuple: id[integer]:2"
    " big[text]:unchanged-toast-datum",
    "table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:1"
    " big[text]:unchanged-toast-datum",
    "table public.t: UPDATE: id[integer]:2 big[text]:unchanged-toast-datum",
    "table public.t: UPDATE: id[integer]:3 email[text]:'b'",
    "table public.t: UPDATE: old-key: id[integer]:3 email[text]:'a new-tuple: b'"
    " new-tuple: id[integer]:3 email[text]:'c'",
    "table public.t: UPDATE: old-key: id[integer]:3 new-tuple: id[integer]:3 email[text]:null",
    "table public.t: UPDATE: old-key: new-tuple: id[integer]:3 email[text]:null",
    "table public.t: UPDATE: old-key: id[integer]:4 email[text]:'' new-tuple: id[integer]:4"
    " email[text]:''''",
    "table public.t: DELETE: id[integer]:3",
    "table public.t: DELETE: id[integer]:3 email[text]:'multi\nline\ttext'",
    "table public.t: DELETE: (no-tuple-data)",
    "table public.t: UPDATE: (no-tuple-data)",
    "table public.t: INSERT: (no-tuple-data)",
    "table public.t: TRUNCATE: (no-flags)",
    "table public.t: TRUNCATE: restart_seqs cascade",
    'table "My Schema"."odd""name": UPDATE: old-key: "Full Name"[text]:\'a\''
    " new-tuple: \"Full Name\"[text]:'c'",
    'table public."a: UPDATE: b": INSERT: "x y"[integer]:1 "z""w"[text]:\'q\'',
    "table public.t: INSERT: id[integer]:1 bad[uuid]:'not-a-uuid' d[date]:'2026-13-45'"
    " n[numeric]:1.0",
    "table public.t: INSERT: id[integer]:1 grid[integer[][]]:'{{1,2},{3,4}}'"
    " tags[text[]]:'{\"a b\",c}' p[point]:'(1,2)' r[int4range]:'[1,5)'",
]


def _same(line: str) -> None:
    expected = parse_change_general(line)
    for _ in range(2):  # the first read may learn the line's shape, the second uses it
        assert repr(parse_change(line)) == repr(expected), line


def test_reading_by_shape_gives_what_reading_by_column_gives() -> None:
    """Every line of a corpus of every supported type, read by a learned shape and column by
    column, gives equal values of equal types (compared by repr: 1.50 is not 1.5)."""
    decoding.forget_shapes()
    for line in DECODING_CORPUS:
        _same(line)
    assert decoding._SHAPES  # shapes were learned


def test_a_line_of_a_learned_shape_is_read_without_the_general_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a layout was seen, its lines (with other values) are read by one match."""
    decoding.forget_shapes()
    parse_change(
        "table public.bench: UPDATE: old-key: id[integer]:1 name[character varying(100)]:'a'"
        " new-tuple: id[integer]:1 name[character varying(100)]:'b'"
    )

    def refuse(line: str) -> RowChange | None:
        raise AssertionError("read column by column")

    monkeypatch.setattr(decoding, "parse_change_general", refuse)
    change = parse_change(
        "table public.bench: UPDATE: old-key: id[integer]:22 name[character varying(100)]:"
        "'x y new-tuple: z' new-tuple: id[integer]:22 name[character varying(100)]:''"
    )
    assert change == RowChange(
        "public", "bench", "update", {"id": 22, "name": "x y new-tuple: z"}, {"id": 22, "name": ""}
    )


_IDENTIFIER = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_QUOTED_NAME = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8
).map(lambda name: '"' + name.replace('"', '""') + '"')


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_VALUES: list[tuple[str, st.SearchStrategy[str]]] = [
    ("integer", st.integers(-(2**31), 2**31 - 1).map(str)),
    ("bigint", st.integers(-(2**63), 2**63 - 1).map(str)),
    ("numeric(10,2)", st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str)),
    ("numeric", st.sampled_from(["NaN", "Infinity", "-Infinity", "-0.5", "100000"])),
    ("double precision", st.sampled_from(["1.5", "-0", "NaN", "Infinity", "1e-300", "3"])),
    ("boolean", st.sampled_from(["true", "false"])),
    ("text", _TEXT.map(_quoted)),
    ("character varying(20)", _TEXT.map(_quoted)),
    ("uuid", st.uuids().map(lambda u: _quoted(str(u)))),
    ("date", st.dates().map(lambda d: _quoted(d.isoformat()))),
    (
        "timestamp with time zone",
        st.datetimes().map(lambda d: _quoted(d.isoformat(sep=" ") + "+00")),
    ),
    ("time without time zone", st.times().map(lambda t: _quoted(t.isoformat()))),
    ("bytea", st.binary(max_size=6).map(lambda b: _quoted("\\x" + b.hex()))),
    ("integer[]", st.lists(st.integers(0, 9), max_size=3).map(lambda v: _quoted(str(set(v))))),
    ("jsonb", _TEXT.map(lambda t: _quoted('{"k": "' + t + '"}'))),
    ("bit(3)", st.from_regex(r"[01]{3}", fullmatch=True).map(lambda b: f"B'{b}'")),
]


@st.composite
def _column(draw: st.DrawFn, toast: bool) -> tuple[str, str, st.SearchStrategy[str]]:
    name = draw(st.one_of(_IDENTIFIER, _QUOTED_NAME))
    type_name, values = draw(st.sampled_from(_VALUES))
    specials = ["null"] + (["unchanged-toast-datum"] if toast else [])
    value = st.one_of(values, st.sampled_from(specials))
    return name, type_name, value


@st.composite
def _lines(draw: st.DrawFn) -> tuple[str, str]:
    """Two lines of the same table and operation (maybe of one layout, maybe not)."""
    table = draw(st.one_of(_IDENTIFIER, _QUOTED_NAME))
    action = draw(st.sampled_from(["INSERT", "UPDATE", "UPDATE-OLD", "DELETE"]))
    old = draw(st.lists(_column(False), min_size=1, max_size=4))
    new = draw(st.lists(_column(action != "INSERT"), min_size=1, max_size=4))

    def section(columns: list[tuple[str, str, st.SearchStrategy[str]]]) -> str:
        return " ".join(f"{name}[{kind}]:{draw(value)}" for name, kind, value in columns)

    def line() -> str:
        head = f"table public.{table}: {action.split('-')[0]}: "
        if action == "UPDATE-OLD":
            return head + "old-key: " + section(old) + " new-tuple: " + section(new)
        return head + section(old if action == "DELETE" else new)

    return line(), line()


@settings(max_examples=300, deadline=None)
@given(_lines())
def test_any_line_reads_the_same_by_shape_and_by_column(lines: tuple[str, str]) -> None:
    """Generated lines of every type, NULL and unchanged values, quoted names and values: the
    shape learned from one line reads it, and a second line, as the general parser does."""
    decoding.forget_shapes()
    for line in lines:
        try:
            parse_change_general(line)
        except ValueError as exc:
            with pytest.raises(ValueError, match=re.escape(str(exc))):
                parse_change(line)
            continue
        _same(line)


async def test_capture_clients_pack_commands_as_redis_py_does() -> None:
    """The clients the command line makes pack with hiredis: the same bytes as redis-py's
    asyncio packing, multi-word commands split, the same error for a value it refuses."""
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    client = redis_from_url("redis://127.0.0.1:6379/5")
    packed = client.connection_pool.make_connection()
    plain = Connection()
    assert type(packed).__name__ == "HiredisPackedConnection"
    for args in [
        ("EVALSHA", "ab" * 20, 2, "k:1", b"k:\xff", "", 0, -7, 1.5, "é", memoryview(b"m")),
        ("SCRIPT LOAD", "return 1"),
        (b"CLIENT SETNAME", bytearray(b"x")),
    ]:
        assert b"".join(packed.pack_command(*args)) == b"".join(
            bytes(chunk) for chunk in plain.pack_command(*args)
        )
    for refused in (True, None):
        with pytest.raises(DataError):
            packed.pack_command("SET", "k", refused)
    await client.aclose()


def test_shapes_learned_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound no shape is learned: lines of new layouts are read column by column,
    alike."""
    decoding.forget_shapes()
    monkeypatch.setattr(decoding, "SHAPES", 2)
    lines = [f"table public.t{n}: INSERT: id[integer]:{n}" for n in range(4)]
    for line in lines:
        _same(line)
    assert sum(len(shapes) for shapes in decoding._SHAPES.values()) == 2
