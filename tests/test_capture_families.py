"""Rows of joined-table inheritance hierarchies in a logged batch (pure, no servers)."""

from __future__ import annotations

from typing import Any

from fastrdb.capture.families import MAX_COMBINATIONS, Rows
from fastrdb.capture.rows import RowChange, TableNames, Transaction, to_changes
from fastrdb.keys import Namespace
from fastrdb.schemes import Family, Field, Scheme

FAMILY = Family((("employee", ("id",)), ("manager", ("manager_id",))))
BOTH = Scheme(
    "row",
    "manager:{email}:{level}",
    (("email", Field("email", "str")), ("level", Field("level", "int"))),
)
NAMESPACE = Namespace("fastrdb")


def _rows(*changes: RowChange) -> tuple[Rows, list[Transaction]]:
    rows = Rows(TableNames("public"))
    assert rows.learn([FAMILY.member(), FAMILY.member(), '["family",[["x",["id"]]]]']) == {FAMILY}
    transactions = [Transaction(list(changes))]
    rows.collect(transactions)
    return rows, transactions


def _keys(rows: Rows, transactions: list[Transaction]) -> tuple[list[str], dict[str, Any]]:
    changes = to_changes(transactions, TableNames("public"))
    rows.apply(changes)
    plan = changes.plan({"manager": [BOTH], "employee": []}, NAMESPACE)
    return sorted(plan.row_keys), plan.sweeps


def test_a_table_the_batch_logs_nothing_of_is_read_and_every_combination_named() -> None:
    """A subclass-only update names the keys of the base values read with both its old and
    new values; the base table is what is left to read."""
    rows, transactions = _rows(
        RowChange(
            "public",
            "manager",
            "update",
            {"manager_id": 1, "level": 1},
            {"manager_id": 1, "level": 2},
        )
    )
    assert rows.unread() == {("employee", ("id",)): [(1,)]}
    rows.read("employee", ("id",), [(1,)], [{"id": 1, "email": "a"}])
    assert rows.unread() == {}
    assert _keys(rows, transactions) == (["manager:a:1", "manager:a:2"], {})


def test_images_of_every_table_in_the_batch_combine() -> None:
    """Old and new images of both tables (the base changed by a later transaction of the
    batch): all four combinations, so the state before both changes is named."""
    rows, transactions = _rows(
        RowChange(
            "public",
            "manager",
            "update",
            {"manager_id": 1, "level": 1},
            {"manager_id": 1, "level": 2},
        ),
        RowChange("public", "employee", "update", {"id": 1, "email": "a"}, {"id": 1, "email": "b"}),
    )
    assert rows.unread() == {}
    keys, _ = _keys(rows, transactions)
    assert keys == ["manager:a:1", "manager:a:2", "manager:b:1", "manager:b:2"]


def test_a_row_absent_from_a_table_combines_as_empty() -> None:
    """An employee that is no manager: read, not found; its base values still name the
    keys of patterns made of base columns alone."""
    rows, transactions = _rows(
        RowChange("public", "employee", "update", {"id": 2, "email": "a"}, {"id": 2, "email": "b"})
    )
    rows.read("manager", ("manager_id",), [(2,)], [])
    changes = to_changes(transactions, TableNames("public"))
    rows.apply(changes)
    email = Scheme("row", "manager:email:{email}", (("email", Field("email", "str")),))
    plan = changes.plan({"manager": [email, BOTH], "employee": []}, NAMESPACE)
    assert sorted(plan.row_keys) == ["manager:email:a", "manager:email:b"]
    assert plan.sweeps == {}


def test_too_many_combinations_or_an_unread_row_sweep_the_hierarchy() -> None:
    """Past the bound of combinations, and for a row left unread, the hierarchy's patterns
    lacking values are swept instead of named."""
    many = [
        RowChange(
            "public",
            "employee",
            "update",
            {"id": 1, "email": f"e{n}"},
            {"id": 1, "email": f"e{n + 1}"},
        )
        for n in range(MAX_COMBINATIONS)
    ]
    rows, transactions = _rows(
        RowChange(
            "public",
            "manager",
            "update",
            {"manager_id": 1, "level": 1},
            {"manager_id": 1, "level": 2},
        ),
        *many,
    )
    _, sweeps = _keys(rows, transactions)
    assert set(sweeps) == {"manager"} and list(sweeps["manager"].patterns) == [BOTH.text]

    rows, transactions = _rows(
        RowChange("public", "manager", "delete", {"manager_id": 3, "level": 1})
    )
    rows.give_up()
    _, sweeps = _keys(rows, transactions)
    assert list(sweeps["manager"].patterns) == [BOTH.text]


def test_a_partial_image_is_swept_not_trusted() -> None:
    """A subclass row logged without its old values (default replica identity) combines as
    partial: the patterns it lacks are swept."""
    rows, transactions = _rows(
        RowChange(
            "public", "manager", "update", {"manager_id": 1}, {"manager_id": 1, "level": 2}, False
        )
    )
    rows.read("employee", ("id",), [(1,)], [{"id": 1, "email": "a"}])
    keys, sweeps = _keys(rows, transactions)
    assert keys == ["manager:a:2"] and list(sweeps["manager"].patterns) == [BOTH.text]


def test_a_family_member_is_read_back_and_malformed_ones_are_skipped() -> None:
    """What an app publishes is what capture reads; anything else is ignored."""
    assert Family.from_member(FAMILY.member()) == FAMILY
    for raw in (
        "[]",
        "not json",
        '["row","x:{id}"]',
        '["family",[["employee",["id"]]]]',
        '["family",[["a",["id"]],["b",["x","y"]]]]',
        '["family",[["a",[]],["b",[]]]]',
        '["family",[["a",["id"]],["b",[1]]]]',
    ):
        assert Family.from_member(raw) is None, raw


def test_a_column_name_two_tables_share_names_both_values() -> None:
    """A subclass column named like a base column (``name`` in both): the pattern's column
    name cannot say which table it reads, so the keys of both values are named."""
    rows, transactions = _rows(
        RowChange(
            "public",
            "manager",
            "update",
            {"manager_id": 1, "name": "sub", "level": 1},
            {"manager_id": 1, "name": "sub", "level": 1},
        )
    )
    rows.read("employee", ("id",), [(1,)], [{"id": 1, "email": "a", "name": "base"}])
    changes = to_changes(transactions, TableNames("public"))
    rows.apply(changes)
    named = Scheme("row", "manager:name:{name}", (("name", Field("name", "str")),))
    plan = changes.plan({"manager": [named], "employee": []}, NAMESPACE)
    assert sorted(plan.row_keys) == ["manager:name:base", "manager:name:sub"]
