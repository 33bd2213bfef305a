"""Configuration mistakes raise ConfigurationError, early, naming the argument and the field."""

from __future__ import annotations

import pytest
import redis.asyncio
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from fastrdb import ConfigurationError, FastRDB, FastRDBError, Settings
from tests.models import User, UserCreate, UserResponse, UserUpdate, Verse, VerseSchema, VerseUpdate

Redis = redis.asyncio.Redis

verses = FastRDB[Verse, VerseSchema, VerseUpdate, VerseSchema](
    Verse, VerseSchema, pattern="verse:{chapter_id}:{verse_id}"
)


class UserCreateWithPassword(BaseModel):
    email: str
    name: str
    password: str


class UserRename(BaseModel):
    full_name: str | None = None


class UserCreateWithConfirmation(BaseModel):
    email: str
    name: str
    confirm: bool = Field(default=True, exclude=True)


def test_configuration_errors_are_not_request_errors() -> None:
    """ConfigurationError is neither a FastRDBError nor a ValueError: no 422 handler catches it."""
    error = ConfigurationError("pattern", "bad", field="isbm")
    assert not isinstance(error, FastRDBError | ValueError)
    assert (error.argument, error.field, str(error)) == ("pattern", "isbm", "pattern: bad")


@pytest.mark.parametrize(
    ("argument", "patterns"),
    [
        ("pattern", {"pattern": "user:{mail}"}),
        ("list_pattern", {"pattern": "user:{email}", "list_pattern": "users:{mail}:{page}"}),
        (
            "invalidate_pattern_prefix",
            {"pattern": "user:{email}", "invalidate_pattern_prefix": "user:{mail}:*"},
        ),
    ],
)
def test_placeholders_that_are_not_columns_fail_at_construction(
    argument: str, patterns: dict[str, str]
) -> None:
    """A misspelt placeholder in any of the three patterns is refused by the constructor."""
    with pytest.raises(ConfigurationError) as caught:
        FastRDB(User, UserResponse, **patterns)  # type: ignore[arg-type]
    assert (caught.value.argument, caught.value.field) == (argument, "mail")
    assert "{mail}" in str(caught.value) and "User" in str(caught.value)


def test_constructor_arguments_are_checked() -> None:
    """Model, response schema, exp, a pattern with a format spec or unbalanced braces."""
    cases: list[tuple[str, dict[str, object]]] = [
        ("model", {"model": object}),
        ("response_schema", {"response_schema": dict}),
        ("exp", {"exp": 0}),
        ("pattern", {"pattern": "user:{email!r}"}),
        ("list_pattern", {"list_pattern": "users:{page"}),
    ]
    for argument, override in cases:
        arguments: dict[str, object] = {
            "model": User,
            "response_schema": UserResponse,
            "pattern": "user:{email}",
            **override,
        }
        with pytest.raises(ConfigurationError) as caught:
            FastRDB(**arguments)  # type: ignore[arg-type]
        assert caught.value.argument == argument


def test_bad_settings_are_configuration_errors() -> None:
    """Settings refuse impossible values with a ConfigurationError naming the setting."""
    for name, value in [("redis_timeout", 0), ("max_limit", 0), ("negative_exp", -1)]:
        with pytest.raises(ConfigurationError) as caught:
            Settings(**{name: value})  # type: ignore[arg-type]
        assert caught.value.argument == name


async def test_declared_schema_fields_that_are_not_columns_fail_at_first_use(
    db: AsyncSession, redis_client: Redis
) -> None:
    """FastRDB[..., Update, ...] whose Update has a field with no column fails on the first
    call of any method, before any I/O, naming the schema argument and the field."""
    crud = FastRDB[User, UserCreate, UserRename, UserResponse](
        User, UserResponse, pattern="user:{email}"
    )
    with pytest.raises(ConfigurationError) as caught:
        await crud.get(db=db, redis=redis_client, email="a@x.io")
    assert (caught.value.argument, caught.value.field) == ("update_schema", "full_name")
    assert await redis_client.keys("*") == []


async def test_schema_fields_that_are_not_columns_write_nothing(
    db: AsyncSession, redis_client: Redis
) -> None:
    """A create or update schema with a field that has no column: ConfigurationError naming
    the field, and nothing is written."""
    crud = FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:{email}"
    )
    with pytest.raises(ConfigurationError) as caught:
        await crud.create(
            db=db,
            redis=redis_client,
            obj_in=UserCreateWithPassword(email="a@x.io", name="A", password="p"),  # type: ignore[arg-type]
        )
    assert (caught.value.argument, caught.value.field) == ("obj_in", "password")
    with pytest.raises(ConfigurationError) as caught:
        await crud.update(
            db=db,
            redis=redis_client,
            obj_in=UserRename(full_name="B"),
            email="a@x.io",  # type: ignore[arg-type]
        )
    assert caught.value.field == "full_name"
    assert await crud.count(db=db) == 0


async def test_excluded_schema_fields_are_not_columns_and_need_not_be(
    db: AsyncSession, redis_client: Redis
) -> None:
    """A schema field marked exclude=True never reaches the model, so it is allowed."""
    crud = FastRDB[User, UserCreateWithConfirmation, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:{email}"
    )
    made = await crud.create(
        db=db, redis=redis_client, obj_in=UserCreateWithConfirmation(email="a@x.io", name="A")
    )
    assert made.email == "a@x.io"


async def test_create_keywords_must_agree_with_obj_in(
    db: AsyncSession, redis_client: Redis
) -> None:
    """create(obj_in=..., email=...) with a keyword that differs from obj_in, or that obj_in
    has no field for, raises FastRDBError naming it; nothing is written."""
    crud = FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:{email}"
    )
    new = UserCreate(email="a@x.io", name="A")
    with pytest.raises(FastRDBError) as caught:
        await crud.create(db=db, redis=redis_client, obj_in=new, email="b@x.io")
    assert caught.value.field == "email"
    with pytest.raises(FastRDBError) as caught:
        await crud.create(db=db, redis=redis_client, obj_in=new, email="a@x.io", id=7)
    assert caught.value.field == "id"
    assert await crud.count(db=db) == 0
    numbered = VerseSchema(chapter_id=1, verse_id=2, text="t")
    made_verse = await verses.create(
        db=db, redis=redis_client, obj_in=numbered, chapter_id="1", verse_id=2
    )  # "1" from a query string is the integer 1
    assert made_verse.chapter_id == 1
    made = await crud.create(db=db, redis=redis_client, obj_in=new, email="a@x.io")
    assert made.email == "a@x.io"
