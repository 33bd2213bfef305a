"""Filter values converted to their column's Python type, exactly or not at all."""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    CHAR,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    Numeric,
    String,
    Uuid,
)

from fastrdb import FastRDBError
from fastrdb.values import compares_as_text, converter_for


class Shade(enum.Enum):
    RED = "red"


REF = uuid.UUID("6f1c5b0e-1f0a-4c1e-9a43-5d2d2f2a9c11")


@pytest.mark.parametrize(
    ("column_type", "given", "converted"),
    [
        (Integer(), "1", 1),
        (Integer(), " -12 ", -12),
        (Integer(), 3.0, 3),
        (Integer(), None, None),
        (Boolean(), "true", True),
        (Boolean(), 0, False),
        (String(10), 7, "7"),
        (String(10), Shade.RED, "red"),
        (Numeric(10, 2), "9.50", Decimal("9.50")),
        (Numeric(10, 2), 2, Decimal(2)),
        (Float(), "1.5", 1.5),
        (Uuid(), str(REF).upper(), REF),
        (Uuid(), REF.hex, REF),
        (Uuid(as_uuid=False), REF.hex, str(REF)),
        (Date(), "2026-03-04", date(2026, 3, 4)),
        (DateTime(), "2026-03-04T05:06:07", datetime(2026, 3, 4, 5, 6, 7)),
        (Enum(Shade), "RED", Shade.RED),
        (Enum(Shade), "red", Shade.RED),
    ],
)
def test_exact_conversions(column_type: Any, given: Any, converted: Any) -> None:
    """Query-string text and near types become the column's Python type when exact."""
    value = converter_for(Column("c", column_type))("c", given)
    assert value == converted
    assert type(value) is type(converted)


@pytest.mark.parametrize(
    ("column_type", "given"),
    [
        (Integer(), "1.5"),
        (Integer(), 1.5),
        (Integer(), True),
        (Integer(), "one"),
        (Boolean(), "yes"),
        (Boolean(), 2),
        (String(10), 1.5),
        (String(10), True),
        (Numeric(10, 2), "NaN"),
        (Numeric(10, 2), True),
        (Uuid(), "6f1c"),
        (Date(), datetime(2026, 3, 4)),
        (DateTime(), "tomorrow"),
        (Enum(Shade), "GREEN"),
    ],
)
def test_inexact_conversions_are_refused(column_type: Any, given: Any) -> None:
    """Anything else is a FastRDBError naming the field."""
    with pytest.raises(FastRDBError) as caught:
        converter_for(Column("c", column_type))("price", given)
    assert caught.value.field == "price"


@pytest.mark.parametrize(
    ("column_type", "dialect", "narrowable"),
    [
        (Integer(), "mariadb", True),
        (Boolean(), "mysql", True),
        (Uuid(), "mariadb", True),
        (String(10), "postgresql", True),
        (String(10), "sqlite", True),
        (String(10), "mysql", False),
        (String(10, collation="NOCASE"), "sqlite", False),
        (String(10, collation="C"), "postgresql", True),
        (CHAR(3), "postgresql", False),
        (Enum(Shade), "postgresql", False),
        (Numeric(10, 2), "postgresql", False),
        (DateTime(), "postgresql", False),
    ],
)
def test_which_columns_compare_as_their_text(
    column_type: Any, dialect: str, narrowable: bool
) -> None:
    """Narrowing is allowed only where equal key text means equal in the database's WHERE."""
    assert compares_as_text(Column("c", column_type), dialect) is narrowable
