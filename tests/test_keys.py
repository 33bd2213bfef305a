"""Key patterns, value encoding and digests."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from fastrdb import FastRDBError
from fastrdb.keys import KeyPattern, deps_key, encode_value, glob_covers, lease_key, with_digest


class Shade(enum.Enum):
    RED = "red"


def test_safe_values_are_written_unchanged() -> None:
    """Letters, digits and @ . _ - + stay as they are: the documented key is pattern.format()."""
    assert encode_value("john.doe+x@example-mail.io") == "john.doe+x@example-mail.io"
    assert KeyPattern("user:email:{email}").format({"email": "a@x.io"}) == "user:email:a@x.io"
    assert (
        KeyPattern("verse:{chapter_id}:{verse_id}").format({"chapter_id": 3, "verse_id": 12})
        == "verse:3:12"
    )


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("*", "%2A"),
        ("a:b", "a%3Ab"),
        ("[ab]*", "%5Bab%5D%2A"),
        ("x y", "x%20y"),
        ("100%", "100%25"),
        ("{x}", "%7Bx%7D"),
        ("é", "%C3%A9"),
        ("a\\b?", "a%5Cb%3F"),
    ],
)
def test_unsafe_characters_are_percent_encoded(value: str, encoded: str) -> None:
    """Glob characters, separators, whitespace and % are percent-encoded (UTF-8)."""
    assert encode_value(value) == encoded


def test_distinct_values_never_collide() -> None:
    """Values that differ give keys that differ, including values that look encoded."""
    values = ["*", "%2A", "a:b", "a%3Ab", "[ab]*", "a", "b", "ab", "", " ", "a:b:c"]
    pattern = KeyPattern("k:{v}")
    keys = {pattern.format({"v": value}) for value in values}
    assert len(keys) == len(values)


def test_no_value_acts_as_a_glob() -> None:
    """An encoded value matches only its own key when used in a Redis glob."""
    pattern = KeyPattern("user:email:{email}")
    others = [pattern.format({"email": v}) for v in ("a", "ab", "b", "a:b")]
    for value in ("*", "[ab]*", "a?", "a*"):
        glob = pattern.format({"email": value})
        assert not any(glob_covers(glob, other) for other in others)


def test_digest_suffix_is_stable_and_distinct() -> None:
    """Extra parameters add a short digest that depends on their names and values only."""
    assert with_digest("k", {}) == "k"
    one = with_digest("k", {"order_by": "id", "ascending": False})
    assert one == with_digest("k", {"ascending": False, "order_by": "id"})
    assert one.startswith("k:~")
    assert one != with_digest("k", {"order_by": "id"})
    assert with_digest("k", {"a": "1"}) != with_digest("k", {"a": 1.0})


def test_lease_and_deps_share_the_key_slot() -> None:
    """The lease and derived-key set hash on the key itself (Redis Cluster hash tag)."""
    assert lease_key("user:email:a@x.io") == "{user:email:a@x.io}:lease"
    assert deps_key("user:email:a@x.io") == "{user:email:a@x.io}:deps"


@pytest.mark.parametrize("text", ["user:{email!r}", "user:{email:>10}", "user:{0}", "user:{a.b}"])
def test_pattern_placeholders_must_be_plain_names(text: str) -> None:
    """A placeholder with a spec, conversion, index or attribute is refused, naming the pattern."""
    with pytest.raises(FastRDBError) as caught:
        KeyPattern(text)
    assert caught.value.field == "pattern"


def test_unbalanced_braces_are_refused() -> None:
    """A malformed pattern is a clear error."""
    with pytest.raises(FastRDBError, match="pattern"):
        KeyPattern("user:{email")


def test_typed_values_never_share_text_across_types() -> None:
    """None, "None", True, "True", Decimal, UUID, dates and Enum members all encode apart
    (int and str share text on purpose: filters are converted to the column type first)."""
    ref = uuid.UUID("6f1c5b0e-1f0a-4c1e-9a43-5d2d2f2a9c11")
    values: list[object] = [
        None, "None", "%none", True, "True", False, 0, Decimal("1"), 1.0, ref, str(ref),
        date(2026, 1, 2), "2026-01-02", datetime(2026, 1, 2), Shade.RED, "RED", b"RED", "",
    ]  # fmt: skip
    texts = [encode_value(value) for value in values]
    assert len(set(texts)) == len(values), texts


def test_int_and_str_keep_their_documented_text() -> None:
    """str and int values are written as pattern.format() writes them."""
    assert encode_value(42) == "42"
    assert encode_value(-7) == "-7"
    assert encode_value("42") == "42"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (Decimal("9.50"), Decimal("9.5")),
        (Decimal("100"), Decimal("1E+2")),
        (Decimal("0.00"), Decimal("-0")),
        (
            datetime(2026, 1, 2, 3, 0, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 1, 2, 1, 0, tzinfo=UTC),
        ),
    ],
)
def test_equal_values_share_one_canonical_text(one: object, other: object) -> None:
    """Values the database holds as equal (9.50 and 9.5; one instant in two offsets) share text."""
    assert encode_value(one) == encode_value(other)


def test_typed_text_is_glob_safe() -> None:
    """Typed values go through the same percent-encoding: no glob character survives."""
    text = encode_value(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert text == "%datetime_2026-01-02T03%3A04%3A05+00%3A00"
    assert not set(text) & set("*?[]{}\\: ")
    assert encode_value(Shade.RED) == "%enum_RED"
