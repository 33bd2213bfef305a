"""Key patterns, value encoding and digests."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from fastrdb import FastRDBError
from fastrdb.keys import (
    KeyPattern,
    Namespace,
    decode_value,
    deps_key,
    encode_value,
    glob_covers,
    glob_escape,
    lease_key,
    tables_index,
    with_digest,
)


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


DECODED = [
    ("a:b *", str), ("é%", str), ("", str), ("7", str), (7, int), (-3, int), (None, int),
    (True, bool), (False, bool), (Shade.RED, Shade), (Decimal("9.5"), Decimal), (1.25, float),
    (uuid.UUID("6f1c5b0e-1f0a-4c1e-9a43-5d2d2f2a9c11"), uuid.UUID), (date(2026, 1, 2), date),
    (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime), (datetime(2026, 1, 2), datetime),
    (time(3, 4, 5), time), (timedelta(seconds=90), timedelta), (b"\x00ab", bytes),
]  # fmt: skip


@pytest.mark.parametrize(("value", "python_type"), DECODED)
def test_decode_value_inverts_encode_value(value: object, python_type: type) -> None:
    """What encode_value wrote, decode_value reads back as the same value of the column's type."""
    decoded = decode_value(encode_value(value), python_type)
    assert decoded == value
    assert type(decoded) is type(value)


@pytest.mark.parametrize(
    ("text", "python_type"),
    [
        ("%2a", str),  # lower-case hex: not the canonical text
        ("%41", str),  # an encoded safe character
        ("%C3", str),  # not UTF-8
        ("abc", int),
        ("%true", int),
        ("7", bool),
        ("%enum_BLUE", Shade),
        ("%dec_x", Decimal),
        ("%dec_9.50", Decimal),  # not canonical
        ("%uuid_6F1C5B0E-1F0A-4C1E-9A43-5D2D2F2A9C11", uuid.UUID),
        ("%wat_1", str),
    ],
)
def test_decode_value_refuses_text_it_cannot_have_written(text: str, python_type: type) -> None:
    """Text encode_value never writes for the column's type is a FastRDBError naming the key."""
    with pytest.raises(FastRDBError) as raised:
        decode_value(text, python_type)
    assert raised.value.field == "key"


def test_a_key_gives_back_its_placeholders_texts() -> None:
    """KeyPattern.match inverts format (a repeated placeholder must repeat) and notices a
    digest suffix; keys of other patterns and leases do not match."""
    pattern = KeyPattern("verse:{chapter_id}:{verse_id}")
    key = pattern.format({"chapter_id": 3, "verse_id": "a:b"})
    assert pattern.match(key) == ({"chapter_id": "3", "verse_id": "a%3Ab"}, False)
    assert pattern.match(with_digest(key, {"text": "x"})) == (
        {"chapter_id": "3", "verse_id": "a%3Ab"},
        True,
    )
    assert pattern.match("verse:3") is None
    assert pattern.match(lease_key(key)) is None
    assert KeyPattern("k:{a}:{a}").match("k:1:2") is None
    assert pattern.literal_prefix == "verse:"


def test_a_pattern_whose_keys_split_two_ways_is_not_decodable() -> None:
    """Placeholders apart by nothing or by value characters only ({first}.{last}) cannot be
    told apart in a key: such a pattern matches nothing rather than guess."""
    for text in ("{first}.{last}", "{a}{b}", "x:{a}-{b}"):
        assert not KeyPattern(text).decodable
        assert KeyPattern(text).match("a.b.c") is None
    assert KeyPattern("{a}:{b}").decodable


def test_glob_escape_backslashes_redis_glob_characters() -> None:
    """``* ? [ ] \\`` get a backslash (Redis' MATCH escape); other text is unchanged."""
    assert glob_escape("a*b?[c]\\d:{e}") == "a\\*b\\?\\[c\\]\\\\d:{e}"


def test_pattern_regex_matches_its_keys_and_their_variants_only() -> None:
    """Every formatted key (any value, with or without a digest suffix) and nothing else."""
    pattern = KeyPattern("user:{{x}}:email:{email}")
    key = pattern.format({"email": "a b:*@x.io"})
    assert pattern.regex.fullmatch(key)
    assert pattern.regex.fullmatch(with_digest(key, {"name": "n"}))
    assert not pattern.regex.fullmatch(key + ":more")
    assert not pattern.regex.fullmatch("user:{x}:name:a")


def test_tables_index_is_named_from_the_schemes_key() -> None:
    """The index and the member come from the schemes key alone, whatever the namespace."""
    namespace = Namespace("odd:schemes:ns")
    assert tables_index(namespace.schemes("we:ird")) == (namespace.tables(), "we%3Aird")


def test_a_pattern_of_one_placeholder_formats_as_format_map_does() -> None:
    """One placeholder is formatted by concatenation: escaped braces, the text after it and
    a repeated placeholder give what ``str.format_map`` gives."""
    from fastrdb.keys import KeyPattern, encode_value

    for text, values in [
        ("bc:{id}", {"id": 5}),
        ("a{{b}}:{id}:x}}", {"id": "é x"}),
        ("{id}", {"id": None}),
        ("u:{a}:{a}", {"a": 1}),
        ("u:{a}:{b}", {"a": 1, "b": "2"}),
    ]:
        pattern = KeyPattern(text)
        encoded = {field: encode_value(values[field]) for field in pattern.fields}
        assert pattern.format(values) == text.format_map(encoded)
