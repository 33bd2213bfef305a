"""Calls written the way a user writes them; ``mypy --strict`` checks that the generic
parameters flow through to the results."""

from __future__ import annotations

from typing import Any, assert_type

import redis
import redis.asyncio
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from fastrdb import FastRDB, PaginatedResponse, RedisHealth, Settings, health
from fastrdb.events import ListenHandle, listen


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "typing_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)


class AccountIn(BaseModel):
    email: str


class AccountPatch(BaseModel):
    email: str | None = None


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str


accounts = FastRDB[Account, AccountIn, AccountPatch, AccountOut](
    Account,
    AccountOut,
    pattern="account:email:{email}",
    list_pattern="account:page:{page}:limit:{limit}",
    exp=60,
    settings=Settings(redis_timeout=0.1),
)


async def use(db: AsyncSession, cache: redis.asyncio.Redis) -> None:
    created = await accounts.create(db=db, redis=cache, obj_in=AccountIn(email="a@x.io"))
    assert_type(created, AccountOut)
    one = await accounts.get(db=db, redis=cache, email="a@x.io")
    assert_type(one, AccountOut)
    page = await accounts.get_multi(db=db, redis=cache, limit=10, page=1, order_by="id")
    assert_type(page, list[AccountOut])
    assert_type(accounts.paginate(data=page, limit=10, page=1), PaginatedResponse[AccountOut])
    updated = await accounts.update(
        db=db, redis=cache, obj_in=AccountPatch(email="b@x.io"), email="a@x.io"
    )
    assert_type(updated, AccountOut)
    assert_type(await accounts.count(db=db), int)
    assert_type(await accounts.delete(db=db, redis=cache, email="b@x.io"), None)
    assert_type(await accounts.invalidate(redis=cache, email="b@x.io"), None)
    assert_type(await accounts.invalidate(redis=cache, db=db, id=1), None)
    assert_type(await accounts.invalidate_all(redis=cache), None)
    assert_type(accounts.stats(), dict[str, int])
    assert_type(health(cache), RedisHealth)
    assert_type(health(), list[RedisHealth])
    assert_type(health(cache).as_dict(), dict[str, Any])


def wire(
    app_sessions: async_sessionmaker[AsyncSession],
    worker_sessions: sessionmaker[Any],
) -> list[ListenHandle]:
    return [
        listen(app_sessions, redis.asyncio.Redis()),
        listen(worker_sessions, redis.Redis()),
    ]
