"""The same routes as examples/fastapi_app.py without a cache, the way users write them with
SQLAlchemy alone: the plain peer of bench/http and the twin app of bench/soak. The cached
peers (bench/http/peers.py) are built with :func:`make_app` too.

Reads DATABASE_URL (and REDIS_URL for an app that caches), with the same session dependency,
pool and response model as the example, so the difference is the caching.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from examples.models import User, UserResponse, UserUpdate

Loader = Callable[[str, AsyncSession], Awaitable[UserResponse]]


class Backend(Protocol):
    """What an app's cache needs at start and stop (a cashews ``Cache``)."""

    def setup(self, settings_url: str) -> object: ...

    async def close(self) -> None: ...


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


Db = Annotated[AsyncSession, Depends(get_db)]


async def read_row(email: str, db: AsyncSession) -> UserResponse:
    user = (await db.execute(select(User).where(User.email == email))).scalar_one()
    return UserResponse.model_validate(user)


async def write_row(email: str, patch: UserUpdate, db: AsyncSession) -> UserResponse:
    user = (await db.execute(select(User).where(User.email == email))).scalar_one()
    for name, value in patch.model_dump(exclude_unset=True).items():
        setattr(user, name, value)
    await db.commit()
    await db.refresh(user)  # updated_at is set by the database
    return UserResponse.model_validate(user)


def make_app(
    title: str,
    load: Loader,
    after_write: Callable[[str], Awaitable[object]] | None = None,
    cache: Backend | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(os.environ["DATABASE_URL"])
        app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
        if cache is not None:
            cache.setup(os.environ["REDIS_URL"])
        yield
        if cache is not None:
            await cache.close()
        await engine.dispose()

    app = FastAPI(title=title, lifespan=lifespan)

    @app.exception_handler(NoResultFound)
    async def not_found(request: Request, exc: NoResultFound) -> JSONResponse:
        return JSONResponse({"detail": "not found"}, status_code=404)

    @app.get("/users/{email}", response_model=UserResponse)
    async def read_user(email: str, db: Db) -> UserResponse:
        return await load(email, db)

    @app.patch("/users/{email}", response_model=UserResponse)
    async def update_user(email: str, patch: UserUpdate, db: Db) -> UserResponse:
        written = await write_row(email, patch, db)
        if after_write is not None:
            await after_write(email)
        return written

    return app


plain = make_app("plain SQLAlchemy", read_row)
