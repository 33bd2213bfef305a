"""Reading test_decoding lines and turning logged rows into Changes (pure, no servers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio
import redis.asyncio.cluster

from fastrdb.capture import CaptureSetupError
from fastrdb.capture.decoding import parse_change
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
