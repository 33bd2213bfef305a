"""Key patterns, value encoding and digests."""

from __future__ import annotations

import pytest

from fastrdb import FastRDBError
from fastrdb.keys import KeyPattern, deps_key, encode_value, glob_covers, lease_key, with_digest


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
