"""A users API on FastRDB, wired the FastAPI way.

    uvicorn examples.fastapi_app:app

Uses DATABASE_URL and REDIS_URL when set; otherwise SQLite in a temporary folder and an
embedded Redis (``pip install 'fastrdb[demo,fastapi]'``). Run ``examples/worker.py`` beside it
with the same two URLs and the cached reads follow the worker's writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import redis.asyncio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from examples.embedded import database_url, embedded_redis
from examples.models import Base, User, UserCreate, UserResponse, UserUpdate
from fastrdb import FastRDB, FastRDBError, PaginatedResponse
from fastrdb.events import listen

users = FastRDB[User, UserCreate, UserUpdate, UserResponse](
    User,
    UserResponse,
    pattern="user:email:{email}",
    list_pattern="user:page:{page}:limit:{limit}",
    exp=3600,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(database_url("app.db"))
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with embedded_redis() as (redis_url, client):
        handle = listen(sessions, client)  # any ORM write through these sessions invalidates
        app.state.sessions = sessions
        app.state.redis = client
        app.state.redis_url = redis_url
        yield
        handle.remove()
    await engine.dispose()


app = FastAPI(title="FastRDB users", lifespan=lifespan)


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    session: AsyncSession = request.app.state.sessions()
    try:
        yield session
    finally:
        # A cache hit never begins a transaction, so there is nothing to close (and closing
        # costs a greenlet switch); anything that did use the database is closed as usual.
        if session.in_transaction():
            await session.close()


async def get_redis(request: Request) -> redis.asyncio.Redis:
    client: redis.asyncio.Redis = request.app.state.redis
    return client


Db = Annotated[AsyncSession, Depends(get_db)]
Cache = Annotated[redis.asyncio.Redis, Depends(get_redis)]


@app.exception_handler(NoResultFound)
async def not_found(request: Request, exc: NoResultFound) -> JSONResponse:
    return JSONResponse({"detail": "not found"}, status_code=404)


@app.exception_handler(FastRDBError)
async def bad_query(request: Request, exc: FastRDBError) -> JSONResponse:
    return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=422)


@app.exception_handler(IntegrityError)
async def conflict(request: Request, exc: IntegrityError) -> JSONResponse:
    return JSONResponse({"detail": "conflicts with an existing row"}, status_code=409)


@app.post("/users", response_model=UserResponse, status_code=201)
async def create_user(user: UserCreate, db: Db, cache: Cache) -> UserResponse:
    return await users.create(db=db, redis=cache, obj_in=user, email=user.email)


@app.get("/users/{email}", response_model=UserResponse)
async def read_user(email: str, db: Db, cache: Cache) -> UserResponse:
    return await users.get(db=db, redis=cache, email=email)


@app.get("/users", response_model=PaginatedResponse[UserResponse])
async def list_users(
    db: Db,
    cache: Cache,
    limit: int = 10,
    page: int = 1,
    order_by: str | None = None,
    ascending: bool = True,
) -> PaginatedResponse[UserResponse]:
    return await users.get_page(
        db=db, redis=cache, limit=limit, page=page, order_by=order_by, ascending=ascending
    )


@app.patch("/users/{email}", response_model=UserResponse)
async def update_user(email: str, patch: UserUpdate, db: Db, cache: Cache) -> UserResponse:
    return await users.update(db=db, redis=cache, obj_in=patch, email=email)


@app.delete("/users/{email}", status_code=204)
async def delete_user(email: str, db: Db, cache: Cache) -> None:
    await users.delete(db=db, redis=cache, email=email)


@app.get("/stats")
async def stats() -> dict[str, int]:
    return users.stats()
