"""The CRUD methods, their keys and values, on every test database with a real Redis."""

from __future__ import annotations

import json

import pytest
import redis.asyncio
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fastrdb import FastRDB, FastRDBError, PaginatedResponse, Settings
from tests.models import (
    Item,
    ItemSchema,
    ItemUpdate,
    User,
    UserCreate,
    UserResponse,
    UserUpdate,
    Verse,
    VerseSchema,
    VerseUpdate,
)

Redis = redis.asyncio.Redis


def make_users() -> FastRDB[User, UserCreate, UserUpdate, UserResponse]:
    return FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User,
        UserResponse,
        pattern="user:email:{email}",
        list_pattern="user:page:{page}:limit:{limit}",
        invalidate_pattern_prefix="user:*",
        exp=6000,
    )


users = make_users()
items = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](
    Item, ItemSchema, pattern="item:{sku}", list_pattern="items:{page}:{limit}"
)
verses = FastRDB[Verse, VerseSchema, VerseUpdate, VerseSchema](
    Verse,
    VerseSchema,
    pattern="verse:chapter_id:{chapter_id}:verse_id:{verse_id}",
    list_pattern="verse:chapter_id:{chapter_id}:page:{page}:limit:{limit}",
    invalidate_pattern_prefix="verse:chapter_id:{chapter_id}:*",
    exp=6000,
)


async def add_user(db: AsyncSession, redis: Redis, email: str, name: str = "N") -> UserResponse:
    return await users.create(
        db=db, redis=redis, obj_in=UserCreate(email=email, name=name), email=email
    )


async def test_create_caches_the_response_json_under_the_pattern_key(
    db: AsyncSession, redis_client: Redis
) -> None:
    """create() returns the response and writes its model_dump_json() under pattern.format()."""
    created = await add_user(db, redis_client, "a@x.io", "Ann")
    assert created.email == "a@x.io" and created.name == "Ann" and created.is_active
    raw = await redis_client.get("user:email:a@x.io")
    assert raw is not None
    assert UserResponse.model_validate_json(raw) == created
    assert await redis_client.ttl("user:email:a@x.io") > 5000


async def test_get_misses_then_hits(db: AsyncSession, redis_client: Redis) -> None:
    """A get on a cold key reads the database and fills; the next one is served from Redis."""
    crud = make_users()
    await add_user(db, redis_client, "a@x.io")
    await redis_client.delete("user:email:a@x.io")
    first = await crud.get(db=db, redis=redis_client, email="a@x.io")
    assert await redis_client.get("user:email:a@x.io") is not None
    second = await crud.get(db=db, redis=redis_client, email="a@x.io")
    assert first == second
    stats = crud.stats()
    assert (stats["misses"], stats["fills"], stats["hits"]) == (1, 1, 1)


async def test_get_of_a_missing_row_raises_no_result_found(
    db: AsyncSession, redis_client: Redis
) -> None:
    """A row that does not exist is SQLAlchemy's NoResultFound; at most a negative entry
    (JSON null) is cached under its key (tests/test_negatives.py)."""
    with pytest.raises(NoResultFound):
        await users.get(db=db, redis=redis_client, email="nobody@x.io")
    assert await redis_client.get("user:email:nobody@x.io") in (None, b"null")


async def test_update_returns_and_caches_the_new_row(db: AsyncSession, redis_client: Redis) -> None:
    """update() sets only the given fields and the key then holds the new row."""
    created = await add_user(db, redis_client, "a@x.io", "Ann")
    updated = await users.update(
        db=db, redis=redis_client, obj_in=UserUpdate(bio="hello"), email="a@x.io"
    )
    assert updated.bio == "hello" and updated.name == "Ann" and updated.id == created.id
    got = await users.get(db=db, redis=redis_client, email="a@x.io")
    assert got.bio == "hello"
    raw = await redis_client.get("user:email:a@x.io")
    assert raw is not None and UserResponse.model_validate_json(raw).bio == "hello"


async def test_update_of_the_pattern_field_drops_the_old_key(
    db: AsyncSession, redis_client: Redis
) -> None:
    """Changing the email moves the entry: the old key is gone, the new key answers."""
    await add_user(db, redis_client, "old@x.io")
    await users.get(db=db, redis=redis_client, email="old@x.io")
    await users.update(
        db=db, redis=redis_client, obj_in=UserUpdate(email="new@x.io"), email="old@x.io"
    )
    assert await redis_client.get("user:email:old@x.io") is None
    with pytest.raises(NoResultFound):
        await users.get(db=db, redis=redis_client, email="old@x.io")
    assert (await users.get(db=db, redis=redis_client, email="new@x.io")).email == "new@x.io"


async def test_update_and_delete_of_missing_rows_raise(
    db: AsyncSession, redis_client: Redis
) -> None:
    """update() and delete() of a row that does not exist raise NoResultFound."""
    with pytest.raises(NoResultFound):
        await users.update(db=db, redis=redis_client, obj_in=UserUpdate(name="x"), email="n@x.io")
    with pytest.raises(NoResultFound):
        await users.delete(db=db, redis=redis_client, email="n@x.io")


async def test_delete_removes_the_row_and_its_key(db: AsyncSession, redis_client: Redis) -> None:
    """delete() returns None; the row and its cached entry are gone."""
    await add_user(db, redis_client, "a@x.io")
    assert await users.delete(db=db, redis=redis_client, email="a@x.io") is None
    assert await redis_client.get("user:email:a@x.io") is None
    with pytest.raises(NoResultFound):
        await users.get(db=db, redis=redis_client, email="a@x.io")


async def test_get_multi_caches_a_json_array_under_the_list_key(
    db: AsyncSession, redis_client: Redis
) -> None:
    """The plain documented call writes a JSON array of responses under list_pattern.format()."""
    for i in range(12):
        await add_user(db, redis_client, f"u{i:02}@x.io")
    page = await users.get_multi(db=db, redis=redis_client, limit=5, page=2)
    assert [u.email for u in page] == [f"u{i:02}@x.io" for i in range(5, 10)]
    raw = await redis_client.get("user:page:2:limit:5")
    assert raw is not None
    assert [entry["email"] for entry in json.loads(raw)] == [u.email for u in page]
    assert await users.get_multi(db=db, redis=redis_client, limit=5, page=2) == page


async def test_get_multi_orders_and_filters(db: AsyncSession, redis_client: Redis) -> None:
    """order_by / ascending order the page; keyword filters restrict it."""
    for i, name in enumerate(["c", "a", "b"]):
        await add_user(db, redis_client, f"u{i}@x.io", name)
    ordered = await users.get_multi(db=db, redis=redis_client, order_by="name")
    assert [u.name for u in ordered] == ["a", "b", "c"]
    reverse = await users.get_multi(db=db, redis=redis_client, order_by="name", ascending=False)
    assert [u.name for u in reverse] == ["c", "b", "a"]
    only_b = await users.get_multi(db=db, redis=redis_client, name="b")
    assert [u.name for u in only_b] == ["b"]


async def test_queries_differing_outside_the_pattern_get_distinct_entries(
    db: AsyncSession, redis_client: Redis
) -> None:
    """order_by, ascending and extra filters make distinct keys; only the plain call has the
    plain key."""
    for i, name in enumerate(["c", "a", "b"]):
        await add_user(db, redis_client, f"u{i}@x.io", name)
    plain = await users.get_multi(db=db, redis=redis_client)
    by_name = await users.get_multi(db=db, redis=redis_client, order_by="name")
    by_name_desc = await users.get_multi(
        db=db, redis=redis_client, order_by="name", ascending=False
    )
    filtered = await users.get_multi(db=db, redis=redis_client, name="a")
    assert [u.name for u in plain] == ["c", "a", "b"]
    assert [u.name for u in by_name] == ["a", "b", "c"]
    assert [u.name for u in by_name_desc] == ["c", "b", "a"]
    assert [u.name for u in filtered] == ["a"]
    keys = {k.decode() for k in await redis_client.keys("user:page:1:limit:10*")}
    assert "user:page:1:limit:10" in keys
    assert len(keys) == 4
    # Served from the cache, each still answers its own query.
    assert [u.name for u in await users.get_multi(db=db, redis=redis_client, order_by="name")] == [
        "a",
        "b",
        "c",
    ]
    assert [u.name for u in await users.get_multi(db=db, redis=redis_client)] == ["c", "a", "b"]


async def test_get_with_an_extra_filter_has_its_own_entry(
    db: AsyncSession, redis_client: Redis
) -> None:
    """get() with a filter beyond the pattern caches under a digest key, dropped with the row
    (a negative entry for a filter the row did not match, too)."""
    await add_user(db, redis_client, "a@x.io", "Ann")
    with pytest.raises(NoResultFound):
        await users.get(db=db, redis=redis_client, email="a@x.io", name="Bob")
    got = await users.get(db=db, redis=redis_client, email="a@x.io", name="Ann")
    assert got.name == "Ann"
    variants = [k for k in await redis_client.keys("user:email:a@x.io:~*")]
    assert len(variants) in (1, 2)  # 2 where a negative entry is kept for name="Bob"
    await users.update(db=db, redis=redis_client, obj_in=UserUpdate(name="Bob"), email="a@x.io")
    assert await redis_client.exists(*variants) == 0
    with pytest.raises(NoResultFound):
        await users.get(db=db, redis=redis_client, email="a@x.io", name="Ann")
    assert (await users.get(db=db, redis=redis_client, email="a@x.io", name="Bob")).name == "Bob"


async def test_create_multi_and_count(db: AsyncSession, redis_client: Redis) -> None:
    """create_multi() inserts all rows in one go; count() counts with and without filters."""
    created = await users.create_multi(
        db=db,
        redis=redis_client,
        instances=[
            UserCreate(email=f"m{i}@x.io", name="same" if i < 3 else "other") for i in range(5)
        ],
    )
    assert [u.email for u in created] == [f"m{i}@x.io" for i in range(5)]
    assert all(u.id and u.created_at for u in created)
    assert await users.count(db=db) == 5
    assert await users.count(db=db, redis=redis_client, name="same") == 3


async def test_create_multi_drops_cached_pages(db: AsyncSession, redis_client: Redis) -> None:
    """Inserting rows makes cached list pages stale; the next get_multi sees them."""
    await add_user(db, redis_client, "a@x.io")
    assert len(await users.get_multi(db=db, redis=redis_client)) == 1
    await users.create_multi(
        db=db, redis=redis_client, instances=[UserCreate(email="b@x.io", name="B")]
    )
    assert len(await users.get_multi(db=db, redis=redis_client)) == 2


def test_paginate_wraps_a_page() -> None:
    """paginate() wraps the page it is given with its paging parameters."""
    page = users.paginate(data=[1, 2, 3], limit=10, page=1)
    assert isinstance(page, PaginatedResponse)
    assert (page.data, page.total, page.limit, page.page) == ([1, 2, 3], 3, 10, 1)


async def test_any_primary_key_name(db: AsyncSession, redis_client: Redis) -> None:
    """A string primary key that is not called id works for every method."""
    await items.create(db=db, redis=redis_client, obj_in=ItemSchema(sku="A-1", name="a", price=3))
    assert (await items.get(db=db, redis=redis_client, sku="A-1")).price == 3
    await items.update(db=db, redis=redis_client, obj_in=ItemUpdate(price=4), sku="A-1")
    assert (await items.get(db=db, redis=redis_client, sku="A-1")).price == 4
    assert [i.sku for i in await items.get_multi(db=db, redis=redis_client)] == ["A-1"]
    await items.delete(db=db, redis=redis_client, sku="A-1")
    assert await items.count(db=db) == 0


async def test_composite_primary_key_and_narrowed_lists(
    db: AsyncSession, redis_client: Redis
) -> None:
    """Composite keys; a change in chapter 3 drops chapter 3's pages and keeps chapter 4's."""
    for chapter in (3, 4):
        for verse in (1, 2):
            await verses.create(
                db=db,
                redis=redis_client,
                obj_in=VerseSchema(chapter_id=chapter, verse_id=verse, text=f"{chapter}.{verse}"),
            )
    three = await verses.get_multi(db=db, redis=redis_client, chapter_id=3, order_by="verse_id")
    four = await verses.get_multi(db=db, redis=redis_client, chapter_id=4)
    assert [v.text for v in three] == ["3.1", "3.2"] and len(four) == 2
    four_key = "verse:chapter_id:4:page:1:limit:10"
    assert await redis_client.exists(four_key)
    await verses.update(
        db=db, redis=redis_client, obj_in=VerseUpdate(text="new"), chapter_id=3, verse_id=1
    )
    assert await redis_client.exists(four_key), "chapter 4's page is not affected"
    three = await verses.get_multi(db=db, redis=redis_client, chapter_id=3, order_by="verse_id")
    assert [v.text for v in three] == ["new", "3.2"]


async def test_moving_a_row_between_narrowed_lists(db: AsyncSession, redis_client: Redis) -> None:
    """A row whose prefix field changes drops the pages of its old and its new value."""
    await verses.create(
        db=db, redis=redis_client, obj_in=VerseSchema(chapter_id=3, verse_id=1, text="x")
    )
    assert len(await verses.get_multi(db=db, redis=redis_client, chapter_id=3)) == 1
    assert len(await verses.get_multi(db=db, redis=redis_client, chapter_id=5)) == 0
    await verses.update(
        db=db, redis=redis_client, obj_in=VerseUpdate(chapter_id=5), chapter_id=3, verse_id=1
    )
    assert len(await verses.get_multi(db=db, redis=redis_client, chapter_id=3)) == 0
    assert len(await verses.get_multi(db=db, redis=redis_client, chapter_id=5)) == 1


async def test_values_with_glob_characters_neither_collide_nor_match(
    db: AsyncSession, redis_client: Redis
) -> None:
    """Emails such as '*', 'a:b' and '[ab]*' get their own keys; none reads another's entry."""
    values = ["*", "a:b", "[ab]*", "a", "b"]
    for value in values:
        await add_user(db, redis_client, value, name=f"name-{value}")
    for value in values:
        assert (await users.get(db=db, redis=redis_client, email=value)).name == f"name-{value}"
    keys = {k.decode() for k in await redis_client.keys("user:email:*")}
    assert keys == {
        "user:email:%2A",
        "user:email:a%3Ab",
        "user:email:%5Bab%5D%2A",
        "user:email:a",
        "user:email:b",
    }
    await users.delete(db=db, redis=redis_client, email="*")
    for value in values[1:]:
        assert (await users.get(db=db, redis=redis_client, email=value)).name == f"name-{value}"


async def test_a_corrupt_entry_is_a_miss_and_is_replaced(
    db: AsyncSession, redis_client: Redis
) -> None:
    """Invalid JSON, or JSON of another shape, is treated as a miss and overwritten."""
    await add_user(db, redis_client, "a@x.io", "Ann")
    for junk in (b"{not json", json.dumps({"id": "x"}).encode()):
        await redis_client.set("user:email:a@x.io", junk)
        assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Ann"
        raw = await redis_client.get("user:email:a@x.io")
        assert raw is not None and UserResponse.model_validate_json(raw).name == "Ann"
    await redis_client.set("user:page:1:limit:10", b"[1,2")
    assert [u.name for u in await users.get_multi(db=db, redis=redis_client)] == ["Ann"]


async def test_duplicate_create_raises_integrity_error_and_rolls_back(
    db: AsyncSession, redis_client: Redis
) -> None:
    """A duplicate unique value propagates IntegrityError; the session stays usable."""
    await add_user(db, redis_client, "a@x.io", "Ann")
    with pytest.raises(IntegrityError):
        await add_user(db, redis_client, "a@x.io", "Other")
    assert not db.in_transaction() or not db.new
    assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Ann"
    assert await users.count(db=db) == 1


async def test_non_unique_pattern_raises_multiple_results(
    db: AsyncSession, redis_client: Redis
) -> None:
    """A pattern that matches two rows is SQLAlchemy's MultipleResultsFound, never cached."""
    by_name = FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:name:{name}"
    )
    await add_user(db, redis_client, "a@x.io", "same")
    assert (await by_name.get(db=db, redis=redis_client, name="same")).email == "a@x.io"
    await add_user(db, redis_client, "b@x.io", "same")
    with pytest.raises(MultipleResultsFound):
        await by_name.get(db=db, redis=redis_client, name="same")


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["nope", "__class__", "__table__", "metadata", "_sa_instance_state"]
)
async def test_unknown_filters_are_refused(
    db: AsyncSession, redis_client: Redis, name: str
) -> None:
    """Only mapped columns may filter; anything else names the field."""
    with pytest.raises(FastRDBError) as caught:
        await users.get_multi(db=db, redis=redis_client, **{name: 1})
    assert caught.value.field == name
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("order_by", ["nope", "__class__", "__init__", "metadata", "registry"])
async def test_unknown_order_by_is_refused(
    db: AsyncSession, redis_client: Redis, order_by: str
) -> None:
    """order_by must name a mapped column."""
    with pytest.raises(FastRDBError) as caught:
        await users.get_multi(db=db, redis=redis_client, order_by=order_by)
    assert caught.value.field == "order_by"


async def test_missing_placeholder_is_refused(db: AsyncSession, redis_client: Redis) -> None:
    """Every placeholder of the pattern must be given; the error names it."""
    with pytest.raises(FastRDBError) as caught:
        await users.get(db=db, redis=redis_client, name="Ann")
    assert caught.value.field == "email"
    with pytest.raises(FastRDBError) as caught:
        await verses.get_multi(db=db, redis=redis_client)
    assert caught.value.field == "chapter_id"
    with pytest.raises(FastRDBError) as caught:
        await users.delete(db=db, redis=redis_client)
    assert caught.value.field == "email"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"page": 0}, "page"),
        ({"limit": 1001}, "limit"),
        ({"limit": "5"}, "limit"),
        ({"page": True}, "page"),
    ],
)
async def test_bad_paging_is_refused(
    db: AsyncSession, redis_client: Redis, arguments: dict[str, object], field: str
) -> None:
    """limit and page must be integers of at least 1; limit at most the configured maximum."""
    with pytest.raises(FastRDBError) as caught:
        await users.get_multi(db=db, redis=redis_client, **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field


async def test_max_limit_is_configurable(db: AsyncSession, redis_client: Redis) -> None:
    """Settings(max_limit=...) moves the upper bound of limit."""
    small = FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="u:{email}", settings=Settings(max_limit=5)
    )
    await small.get_multi(db=db, redis=redis_client, limit=5)
    with pytest.raises(FastRDBError, match="at most 5"):
        await small.get_multi(db=db, redis=redis_client, limit=6)


async def test_reads_see_the_sessions_own_flushed_writes(
    maker: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """Inside a transaction with flushed writes to the table, get() reads the database."""
    async with maker() as db:
        await add_user(db, redis_client, "a@x.io", "Ann")
        await users.get(db=db, redis=redis_client, email="a@x.io")
        user = (await db.execute(select(User))).scalar_one()
        user.name = "Changed"
        await db.flush()
        assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Changed"
        await db.rollback()
    async with maker() as db:
        assert (await users.get(db=db, redis=redis_client, email="a@x.io")).name == "Ann"
