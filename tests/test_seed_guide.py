"""The seed guide's snippets, as a user pastes them (only the imports they leave out added)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from pathlib import Path
from typing import Optional

import httpx
import redis.asyncio
from fastapi import Depends, FastAPI
from pydantic import BaseModel, EmailStr
from sqlalchemy import Boolean, DateTime, String, func
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

from fastrdb import FastRDB
from tests.conftest import REDIS_URL


class Base(MappedAsDataclass, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(255), nullable=False, unique=True, index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    bio: Mapped[str] = mapped_column(String(500), nullable=True)

    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), onupdate=func.now(), server_default=func.now(), nullable=False
    )

    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)


class UserCreate(BaseModel):
    email: EmailStr
    name: str
    bio: Optional[str] = None  # noqa: UP045 - the guide's own spelling
    is_active: bool = True


class UserUpdate(BaseModel):
    email: Optional[EmailStr] = None  # noqa: UP045
    name: Optional[str] = None  # noqa: UP045
    bio: Optional[str] = None  # noqa: UP045
    is_active: Optional[bool] = None  # noqa: UP045


class UserResponse(BaseModel):
    id: int
    email: str
    name: str
    bio: Optional[str] = None  # noqa: UP045
    is_active: bool
    created_at: datetime
    updated_at: datetime

    class Config:
        from_attributes = True


user_crud = FastRDB[User, UserCreate, UserUpdate, UserResponse](
    User,
    UserResponse,
    pattern="user:email:{email}",
    list_pattern="user:page:{page}:limit:{limit}",
    invalidate_pattern_prefix="todo:*",
    exp=6000,
)


async def test_the_guides_fastapi_route(tmp_path: Path) -> None:
    """The guide's model, schemas, FastRDB call and FastAPI route work over HTTP."""
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'example.db'}")
    async with async_engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    local_session = async_sessionmaker(
        async_engine, expire_on_commit=False, class_=AsyncSession, autoflush=False
    )
    redis_client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    await redis_client.flushdb()

    async def async_get_db() -> AsyncGenerator[AsyncSession, None]:
        async with local_session() as session:
            try:
                await session.commit()
                yield session
            finally:
                await session.close()

    async def get_redis() -> AsyncGenerator[redis.asyncio.Redis, None]:
        yield redis_client

    app = FastAPI()

    @app.post("/users/", response_model=UserResponse)
    async def create_user(
        user: UserCreate,
        redis: redis.asyncio.Redis = Depends(get_redis),  # noqa: B008 - FastAPI's idiom
        db: AsyncSession = Depends(async_get_db),  # noqa: B008
    ) -> UserResponse:
        return await user_crud.create(db=db, redis=redis, obj_in=user, email=user.email)

    @app.get("/users/{email}", response_model=UserResponse)
    async def read_user(
        email: str,
        redis: redis.asyncio.Redis = Depends(get_redis),  # noqa: B008
        db: AsyncSession = Depends(async_get_db),  # noqa: B008
    ) -> UserResponse:
        return await user_crud.get(db=db, redis=redis, email=email)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        created = await client.post(
            "/users/", json={"email": "john@example.com", "name": "John Doe", "bio": "Hello World"}
        )
        assert created.status_code == 200, created.text
        assert created.json()["name"] == "John Doe"
        assert await redis_client.get("user:email:john@example.com") is not None
        fetched = await client.get("/users/john@example.com")
        assert fetched.json() == created.json()
        invalid = await client.post("/users/", json={"email": "not-an-email", "name": "x"})
        assert invalid.status_code == 422

    async with local_session() as db:
        await user_crud.update(
            db=db, redis=redis_client, obj_in=UserUpdate(name="J."), email="john@example.com"
        )
        assert (
            await user_crud.get(db=db, redis=redis_client, email="john@example.com")
        ).name == "J."
        page = await user_crud.get_multi(db=db, redis=redis_client, limit=10, page=1, order_by="id")
        assert user_crud.paginate(data=page, limit=10, page=1).total == 1
    await redis_client.aclose()
    await async_engine.dispose()
